"""What every fetch module shares: the store, the planner, one flight per key, the limits on
archives, the members refused lately; and whose wait a task's work is (`Priority`): a
reader's (a FUSE lookup, readdir, open or read: the default) or background work's (read-ahead,
prefetch, the catalogue), which the planner reads so readers go first."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from osufs.archive import Limits, MemberError
from osufs.errors import OsufsError
from osufs.store import Store

if TYPE_CHECKING:  # flights.py reads the priority below: no import at run time
    from osufs.fetch.planner import Planner
    from osufs.fetch.shared import Shared
    from osufs.flights import Flights

log = logging.getLogger(__name__)

# A member refused (bad CRC, cut-off body) is tried again after this many seconds.
BAD_MEMBER_RETRY = 600.0


class Priority:
    """Whose wait some work is. Background work a reader comes to wait for (by joining its
    flight) becomes the reader's, and so does the work it started (`parent`). Patient work
    (a reader's, prefetch's) waits for a source within its deadline; impatient work (reading
    ahead) is dropped rather than wait, so it never holds up a reader."""

    def __init__(
        self, background: bool, parent: Priority | None = None, *, patient: bool = True
    ) -> None:
        self._background = background
        self._patient = patient
        self._parent = parent
        self._scopes: set[trio.CancelScope] = set()  # bounded while background
        self._children: list[Priority] = []
        if parent is not None and parent.background:
            parent._children.append(self)

    @property
    def background(self) -> bool:
        return self._background and (self._parent is None or self._parent.background)

    @property
    def patient(self) -> bool:
        return not self.background or (
            self._patient and (self._parent is None or self._parent.patient)
        )

    def for_reader(self) -> None:
        self._background = False
        self._lift()

    def _lift(self) -> None:
        for scope in self._scopes:
            scope.deadline = math.inf
        for child in self._children:
            child._lift()

    @contextlib.contextmanager
    def bounded(self, seconds: float) -> Iterator[trio.CancelScope]:
        """A cancel scope that ends the block after `seconds` while the work is background,
        and never once a reader waits for it."""
        deadline = trio.current_time() + seconds if self.background else math.inf
        scope = trio.CancelScope(deadline=deadline)
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)


_READER = Priority(False)
_PRIORITY: ContextVar[Priority | None] = ContextVar("osufs_priority", default=None)


def current_priority() -> Priority:
    return _PRIORITY.get() or _READER


def in_background() -> bool:
    """Whether the running task's work is background work (nobody waits for it)."""
    return current_priority().background


def patient() -> bool:
    """Whether the running task's work waits for a busy source (within its deadline)."""
    return current_priority().patient


@contextlib.contextmanager
def with_priority(priority: Priority) -> Iterator[None]:
    """Run the block (and the tasks it starts) at `priority`."""
    token = _PRIORITY.set(priority)
    try:
        yield
    finally:
        _PRIORITY.reset(token)


def background(*, patient: bool = True) -> contextlib.AbstractContextManager[None]:
    """Run the block (and the tasks it starts) as background work."""
    return with_priority(Priority(True, patient=patient))


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
