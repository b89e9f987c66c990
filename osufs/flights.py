"""One fetch per key: the first caller starts it in the library's nursery, later callers wait
for its outcome. A caller that gives up never cancels a fetch others are waiting for, and
every fetch ends within its deadline with a result or an OsufsError. A fetch runs at its
first caller's priority (fetch/context.py) and becomes a reader's when a reader joins it."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio

from osufs.errors import OsufsError
from osufs.fetch.context import Priority, current_priority, with_priority

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    priority: Priority
    started_background: bool = False
    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: OsufsError | None = None


class Flights:
    """One running fetch per key; later callers wait for its outcome."""

    def __init__(self, nursery: trio.Nursery, timeout: float) -> None:
        self._nursery = nursery
        self._timeout = timeout
        self._running: dict[Hashable, _Flight[Any]] = {}

    async def run(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        """The fetch's result; a reader whose wait ended in a failure of background work
        (reading ahead gave up on a busy source) runs the fetch again as its own."""
        caller = current_priority()
        flight = await self._join(key, fetch, caller)
        if flight.error is not None and flight.started_background and not caller.background:
            flight = await self._join(key, fetch, caller)
        if flight.error is not None:
            # The fetch's own error, type and all (SourceMissing, SourceLimited), to every
            # waiter; without the traceback of another waiter's raise.
            raise flight.error.with_traceback(None)
        return flight.result

    async def _join(
        self, key: Hashable, fetch: Callable[[], Awaitable[T]], caller: Priority
    ) -> _Flight[T]:
        flight = self._running.get(key)
        if flight is None:
            # The fetch runs at its first caller's priority, until a reader joins it.
            priority = Priority(caller.background, parent=caller, patient=caller.patient)
            flight = _Flight(priority, started_background=caller.background)
            self._running[key] = flight
            with with_priority(flight.priority):
                self._nursery.start_soon(self._fly, key, flight, fetch)
        elif not caller.background:
            flight.priority.for_reader()
        await flight.done.wait()
        return flight

    async def _fly(self, key: Hashable, flight: _Flight[T], fetch: Callable[[], Awaitable[T]]):
        try:
            with trio.fail_after(self._timeout):
                flight.result = await fetch()
        except OsufsError as error:
            flight.error = error
        except trio.TooSlowError:
            flight.error = OsufsError.io(f"{key}: no answer within {self._timeout:g} s")
        except Exception as error:
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                flight.error = OsufsError(errno.ENOSPC, f"{key}: the cache's disk is full")
            else:
                log.exception("fetching %s failed", key)
                flight.error = OsufsError.io(f"{key}: {error}")
        except BaseException:
            flight.error = OsufsError.io(f"{key}: interrupted")
            raise
        finally:
            del self._running[key]
            flight.done.set()
        if flight.error is None:
            return
        if flight.started_background:
            # Nobody waited for it, or a reader did and runs it again as its own.
            log.debug("background %s", flight.error)
        else:
            warn_once(str(flight.error))


_warned: dict[str, float] = {}
WARN_INTERVAL = 60.0


def warn_once(message: str) -> None:
    """Log a failure once a minute, however many readers and nested fetches it reaches."""
    now = time.monotonic()
    if now - _warned.get(message, -WARN_INTERVAL) >= WARN_INTERVAL:
        _warned[message] = now
        log.warning("%s", message)
        if len(_warned) > 4096:
            _warned.clear()
