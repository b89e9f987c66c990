"""What every fetch module shares: the store, the planner, one flight per key, the limits on
archives, and the members refused lately."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from osufs.archive import Limits, MemberError
from osufs.errors import OsufsError
from osufs.fetch.planner import Planner
from osufs.flights import Flights
from osufs.store import Store

if TYPE_CHECKING:
    from osufs.fetch.shared import Shared

log = logging.getLogger(__name__)

# A member refused (bad CRC, cut-off body) is tried again after this many seconds.
BAD_MEMBER_RETRY = 600.0


class RefusedMembers:
    """Members refused recently; after a while they are tried again (a read may have been
    garbled on the way). Safe from worker threads (one dict operation at a time)."""

    def __init__(self) -> None:
        self._refused: dict[tuple[int, int], tuple[OsufsError, float]] = {}

    def note(self, set_id: int, index: int, error: MemberError) -> OsufsError:
        log.warning("set %d: member %d refused: %s", set_id, index, error)
        refusal = OsufsError(error.errno, str(error))
        self._refused[(set_id, index)] = (refusal, time.monotonic() + BAD_MEMBER_RETRY)
        return refusal

    def get(self, set_id: int, index: int) -> OsufsError | None:
        found = self._refused.get((set_id, index))
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._refused[(set_id, index)]
            return None
        return found[0]


@dataclass
class Context:
    """Shared by the fetch modules of one library; built once by the facade."""

    store: Store
    planner: Planner
    flights: Flights
    limits: Limits
    nursery: trio.Nursery
    offline: bool = False
    fetch_timeout: float = 120.0  # how long a reader waits for a fetch (--fetch-timeout)
    refused: RefusedMembers = field(default_factory=RefusedMembers)
    # The shared tier (fetch/shared.py), set by the facade once the context is built.
    shared: Shared = field(init=False)
