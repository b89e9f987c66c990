"""One allowance per source, kept in the index and shared by every process on a cache directory.

A source's allowance is "at most `limit` (weighted) requests in any `window` seconds", spent no
faster than a bucket of `burst` that refills at `limit / window` a second (so a scan runs at the
source's full rate, and a reader never waits more than `burst` intervals for a request). Its
state (the bucket, what was spent in the last window, a rest) is one record of a `Ledger`: the
store's `allowances` database, so two mounts and an `osufs prefetch` on one cache directory
spend one allowance, and a restart resumes it. Each `take` is one short write transaction
before the request is sent; nothing awaits inside one.

What the source's answers say is learned (`learn`): `x-ratelimit-remaining` below what the
record thinks is left (another client spent it) is entered as spent until `x-ratelimit-reset`;
nothing left, a spent day (`x-daily-remaining`), a 429 or a 503 with `Retry-After`, osu-web's
bare 429 and a mirror's 418 rest the source (`rest`, the one place a source becomes limited).
Background work (read-ahead, prefetch, the catalogue) leaves `reserve` to readers.

Times are unix times (every process shares them); a clock that jumps back is survived.

Testing and benchmarks only: `OSUFS_WINDOW_SCALE=<factor>` shortens every source's window by
that factor (0.1: Mino's 60 a minute becomes 60 in 6 s), for emulations with short windows.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import msgpack

log = logging.getLogger(__name__)

T = TypeVar("T")

# Spent requests leave the window this much later than `window` (a fraction of it, and at least
# WINDOW_SLACK_MIN seconds): a request sent just inside our window may reach the server just
# inside its next one, and servers round their resets to whole seconds.
WINDOW_SLACK = 0.01
WINDOW_SLACK_MIN = 0.2
# A record keeps at most this many spendings (a generous limit merges its oldest ones), so a
# take stays one small write however high the limit.
SPENT_ENTRIES = 256
# A reader always finds this much of the allowance that background work may not spend.
BACKGROUND_RESERVE = 5.0
# A Retry-After, reset or ban further out than this is read as this (a typo on the server
# should not shelve a source for a year).
LONGEST_REST = 86400.0
# A mirror that answers 418 has banned this address, and does not say for how long; an hour
# leaves it alone long enough not to prolong the ban. A longer Retry-After wins.
BAN_REST = 3600.0
# Without a reset header, a spent daily allowance is rested this long, then asked again.
DAILY_REST = 3600.0
WINDOW_SCALE = max(float(os.environ.get("OSUFS_WINDOW_SCALE") or 1.0), 1e-4)


class Ledger(Protocol):
    """Where allowance records live: the store's index, or memory."""

    def allowance_get(self, key: str) -> bytes | None: ...

    def allowance_update(self, key: str, change: Callable[[bytes | None], tuple[bytes, T]]) -> T:
        """Run `change` on the record in one write transaction and store what it returns."""
        ...


class MemoryLedger:
    """A ledger of one process, for sources used without a cache directory (thread-safe: a
    source takes from worker threads)."""

    def __init__(self) -> None:
        self._records: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def allowance_get(self, key: str) -> bytes | None:
        return self._records.get(key)

    def allowance_update(self, key: str, change: Callable[[bytes | None], tuple[bytes, T]]) -> T:
        with self._lock:
            record, result = change(self._records.get(key))
            self._records[key] = record
            return result


@dataclass(frozen=True, slots=True)
class Shape:
    """What a source allows: at most `limit` in any `window` seconds, `burst` at once."""

    limit: float
    window: float
    burst: float
    reserve: float = BACKGROUND_RESERVE
    refill: float | None = None  # a second; None: limit / window, the source's full rate

    @classmethod
    def per_minute(cls, limit: float, burst: float = 10.0) -> Shape:
        return cls(limit, 60.0, min(burst, limit), min(BACKGROUND_RESERVE, limit / 2))

    @property
    def period(self) -> float:
        """The window in seconds, as this process counts it (see WINDOW_SCALE)."""
        return self.window * WINDOW_SCALE

    @property
    def rate(self) -> float:
        """Refill a second."""
        return (self.refill if self.refill is not None else self.limit / self.window) / WINDOW_SCALE

    @property
    def span(self) -> float:
        """How long a spent request counts."""
        return self.period + max(self.period * WINDOW_SLACK, WINDOW_SLACK_MIN)


@dataclass(slots=True)
class _State:
    tokens: float
    stamp: float
    spent: list[list[float]] = field(default_factory=list)  # [when, cost], oldest first
    rest_until: float = 0.0
    why: str = ""

    def pack(self) -> bytes:
        return msgpack.packb([self.tokens, self.stamp, self.spent, self.rest_until, self.why])

    @classmethod
    def unpack(cls, data: bytes) -> _State:
        tokens, stamp, spent, rest_until, why = msgpack.unpackb(data)
        return cls(tokens, stamp, spent, rest_until, why)


class Allowance:
    """One source's allowance (`shape`; None: unmetered, only rests), under `key` in `ledger`.

    Safe to use from any thread; `ledger` may be swapped for the store's before first use."""

    def __init__(
        self,
        key: str,
        shape: Shape | None,
        *,
        label: str = "",
        ledger: Ledger | None = None,
        default_rest: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.shape = shape
        self.label = label or key
        self.ledger: Ledger = ledger if ledger is not None else MemoryLedger()
        self.default_rest = default_rest
        self._clock = clock

    def __repr__(self) -> str:
        return f"Allowance({self.key!r}, {self.shape!r})"

    # the state, brought up to now

    def _load(self, data: bytes | None, now: float) -> _State:
        shape = self.shape
        burst = shape.burst if shape else 0.0
        state = _State(burst, now) if data is None else _State.unpack(data)
        if shape is not None:
            # A clock that went back leaves no stamp or spending in the future past a window.
            elapsed = max(0.0, now - state.stamp) if state.stamp <= now + shape.period else 0.0
            state.tokens = min(burst, state.tokens + elapsed * shape.rate)
            state.stamp = now
            state.spent = [
                item for item in state.spent if now - shape.span < item[0] <= now + shape.period
            ]
        if state.rest_until > now + LONGEST_REST:
            state.rest_until = now + LONGEST_REST
        return state

    def _free(self, state: _State, cost: float, background: bool, now: float) -> float:
        """When `cost` could be taken (<= now: now)."""
        free = state.rest_until
        shape = self.shape
        if shape is None:
            return free
        keep = min(shape.reserve, shape.burst - 1.0, shape.limit - 1.0) if background else 0.0
        keep = max(keep, 0.0)
        need = min(cost, shape.burst) + keep
        if state.tokens < need:
            free = max(free, now + (need - state.tokens) / shape.rate)
        # The window: enough of what was spent must have aged out.
        room = min(shape.limit - keep, shape.limit) - min(cost, shape.limit)
        used = sum(item[1] for item in state.spent)
        for when, spent_cost in state.spent:
            if used <= room:
                break
            used -= spent_cost
            free = max(free, when + shape.span)
        return free

    def _change(self, change: Callable[[_State, float], T]) -> T:
        def run(data: bytes | None) -> tuple[bytes, T]:
            now = self._clock()
            state = self._load(data, now)
            result = change(state, now)
            return state.pack(), result

        return self.ledger.allowance_update(self.key, run)

    # the interface

    def free_at(self, cost: float = 1.0, *, background: bool = False) -> float:
        """When a request of `cost` could be sent (unix time; <= now means now). Reads only."""
        now = self._clock()
        state = self._load(self.ledger.allowance_get(self.key), now)
        return self._free(state, cost, background, now)

    def take(self, cost: float = 1.0, *, background: bool = False) -> float:
        """Spend `cost` now if it is free (0.0), else spend nothing and say when it will be."""

        def spend(state: _State, now: float) -> float:
            free = self._free(state, cost, background, now)
            if free > now:
                return free
            if self.shape is not None:
                state.tokens -= cost
                state.spent.append([now, cost])
                if len(state.spent) > SPENT_ENTRIES:
                    # The oldest two as one, at the later time: it leaves the window later.
                    first, second = state.spent[:2]
                    state.spent[:2] = [[second[0], first[1] + second[1]]]
            return 0.0

        if self.shape is None:
            # Unmetered: nothing to write unless it rests.
            free = self.free_at(cost, background=background)
            return free if free > self._clock() else 0.0
        return self._change(spend)

    def give_back(self, cost: float = 1.0) -> None:
        """Return a request the server did not count (the last one of that cost)."""
        if self.shape is None:
            return

        def undo(state: _State, now: float) -> None:
            for index in range(len(state.spent) - 1, -1, -1):
                if state.spent[index][1] == cost:
                    del state.spent[index]
                    break
            state.tokens = min(state.tokens + cost, self.shape.burst if self.shape else 0.0)

        self._change(undo)

    def agree(self, used: float) -> bool:
        """The source counts `used` spent in its window: hold at least that as spent, and no
        more than `burst - used` in the bucket (owing at most one burst). Never frees anything.
        True when the record had to give some up."""
        if self.shape is None:
            return False
        shape = self.shape

        def meet(state: _State, now: float) -> bool:
            changed = False
            missing = used - sum(item[1] for item in state.spent)
            if missing > 0:
                state.spent.append([now, missing])
                state.spent.sort()
                changed = True
            target = max(shape.burst - used, -shape.burst)
            if target < state.tokens:
                state.tokens = target
                changed = True
            return changed

        return self._change(meet)

    def _left(self, remaining: float, reset_at: float) -> None:
        """The source says `remaining` is left until `reset_at`: what it counts beyond what
        the record does was spent by someone else, and stays spent until the reset."""
        if self.shape is None:
            return
        shape = self.shape

        def meet(state: _State, now: float) -> bool:
            left = shape.limit - sum(item[1] for item in state.spent)
            if remaining < left:
                state.spent.append([min(now, reset_at - shape.span), left - remaining])
                state.spent.sort()
            changed = remaining < left or state.tokens > remaining
            state.tokens = min(state.tokens, max(remaining, 0.0))
            return changed

        # Most answers agree with the record: tell so from a read, and write only otherwise.
        now = self._clock()
        if meet(self._load(self.ledger.allowance_get(self.key), now), now):
            self._change(meet)

    def rest(self, until: float, why: str, *, warn: bool = False) -> bool:
        """Send nothing to the source until `until`; said in the log once per rest. True when
        this began (or lengthened) a rest."""
        now = self._clock()
        until = min(until, now + LONGEST_REST)

        def begin(state: _State, now: float) -> bool | None:
            if until <= state.rest_until:
                return None
            fresh = state.rest_until <= now
            state.rest_until, state.why = until, why
            if self.shape is not None and until > now:
                state.tokens = min(state.tokens, 0.0)
            return fresh

        fresh = self._change(begin)
        if fresh:
            level = logging.WARNING if warn else logging.INFO
            log.log(level, "%s: %s; not asked again until %s", self.label, why, clock(until))
        return fresh is not None

    @property
    def rested_until(self) -> float:
        """Until when nothing is sent (unix time; past: not resting)."""
        data = self.ledger.allowance_get(self.key)
        return _State.unpack(data).rest_until if data is not None else 0.0

    @property
    def rest_reason(self) -> str:
        data = self.ledger.allowance_get(self.key)
        return _State.unpack(data).why if data is not None else ""

    def learn(self, headers: Mapping[str, str], status: int) -> float:
        """Learn from one answer of the source's own origin; returns the rest it began or
        keeps (unix time), 0.0 when none."""
        now = self._clock()
        remaining = _number(headers.get("x-ratelimit-remaining"))
        if remaining is not None:
            reset = headers.get("x-ratelimit-reset")
            if remaining < 1 and (reset is not None or self.shape is None):
                until = reset_time(reset, self.default_rest, now)
                self.rest(until, "its rate limit is spent (x-ratelimit-remaining: 0)")
            else:
                # Without a reset (osu-web's throttle), what is left counts for a window.
                span = self.shape.span if self.shape is not None else self.default_rest
                self._left(max(remaining, 0.0), reset_time(reset, span, now))
        daily = _number(headers.get("x-daily-remaining"))
        if daily is not None and daily < 1:
            reset = headers.get("x-ratelimit-daily-reset")
            self.rest(reset_time(reset, DAILY_REST, now), "its daily allowance is spent")
        if status == 418:
            ban = retry_after(headers.get("retry-after"), BAN_REST, now)
            self.rest(
                max(ban, now + BAN_REST),
                "answered 418: it has banned this address for now, usually for asking too often",
                warn=True,
            )
        elif status == 429 or (status == 503 and "retry-after" in headers):
            bare = "retry-after" not in headers
            until = retry_after(headers.get("retry-after"), self.default_rest, now)
            why = f"it answered {status}" + (" without a Retry-After" if bare else "")
            self.rest(until, why + " (rate limited)")
        return max(self.rested_until, 0.0) if self.rested_until > now else 0.0


def _number(value: str | None) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        number = float((value or "").strip())
        if math.isfinite(number):
            return number
    return None


def retry_after(value: str | None, default: float, now: float | None = None) -> float:
    """The unix time a Retry-After header (seconds or an HTTP date) names.

    Absent or unreadable: `default` seconds from now. Never before now, never past the cap."""
    now = time.time() if now is None else now
    value = (value or "").strip()
    if value.isdigit():
        until = now + int(value)
    else:
        parsed = email.utils.parsedate_tz(value) if value else None
        until = float(email.utils.mktime_tz(parsed)) if parsed is not None else now + default
    return min(max(until, now), now + LONGEST_REST)


def reset_time(value: str | None, default: float, now: float | None = None) -> float:
    """The unix time an `x-ratelimit-reset` header names: seconds from now, or (when it is
    larger than any wait) a unix time; an HTTP date like Retry-After. Capped like it."""
    now = time.time() if now is None else now
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        return retry_after(text or None, default, now)
    until = number if number > 1e9 else now + number
    return min(max(until, now), now + LONGEST_REST)


def clock(when: float) -> str:
    """A unix time as the local wall clock, with the date when it is not today."""
    local = time.localtime(when)
    if time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M:%S", local)


__all__ = [
    "BACKGROUND_RESERVE",
    "Allowance",
    "Ledger",
    "MemoryLedger",
    "Shape",
    "reset_time",
    "retry_after",
]
