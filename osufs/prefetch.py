"""`osufs prefetch`: fill the cache ahead of use, a bounded pool of sets at a time.

Resumable by construction: a set whose wanted members are all cached is skipped without a
request. Interrupting it leaves only whole, committed members: partial downloads live in the
store's temporary directory, which is removed on exit (or at the next start after a crash).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import trio

from osufs.errors import OsufsError
from osufs.library import Library
from osufs.mount import MountConfig, open_library
from osufs.names import MAX_SET_ID

log = logging.getLogger(__name__)


class SetIds:
    """Set ids from `123`, `1-5000` and comma-separated lists of those, in order, once each.

    Held as ranges and streamed: `1-2000000000` costs a few bytes, not a list of two billion."""

    def __init__(self, specs: Iterable[str]) -> None:
        self._ranges: list[tuple[int, int]] = []  # each less the ranges before it, in order
        for spec in specs:
            for part in filter(None, spec.split(",")):
                self._add(*_parse_range(part))

    def _add(self, low: int, high: int) -> None:
        pieces = [(low, high)]
        for taken_low, taken_high in self._ranges:
            pieces = [
                piece
                for first, last in pieces
                for piece in ((first, min(last, taken_low - 1)), (max(first, taken_high + 1), last))
                if piece[0] <= piece[1]
            ]
        self._ranges += pieces

    def __len__(self) -> int:
        return sum(high - low + 1 for low, high in self._ranges)

    def __iter__(self) -> Iterator[int]:
        for low, high in self._ranges:
            yield from range(low, high + 1)


def _parse_range(part: str) -> tuple[int, int]:
    first, sep, last = part.partition("-")
    if not first.isdigit() or (sep and not last.isdigit()):
        raise ValueError(f"not a set id or range: {part!r}")
    for digits in (first, last):
        # Digits only, so the length bounds the value before int() reads a huge number.
        if len(digits.lstrip("0")) > len(str(MAX_SET_ID)) or int(digits or 0) > MAX_SET_ID:
            raise ValueError(f"set id {digits} is beyond {MAX_SET_ID}, the largest there is")
    low, high = int(first), int(last) if sep else int(first)
    if low < 1 or high < low:
        raise ValueError(f"empty or invalid range: {part!r}")
    return low, high


def parse_ids(specs: Iterable[str]) -> SetIds:
    """The set ids `specs` name (see SetIds); ValueError for anything else."""
    return SetIds(specs)


@dataclass
class PrefetchTally:
    fetched: int = 0
    cached: int = 0
    missing: int = 0
    failed: int = 0
    bytes: int = 0


async def prefetch(
    config: MountConfig,
    ids: Iterable[int],
    *,
    only_osu: bool,
    concurrency: int,
    on_progress: Callable[[PrefetchTally], None],
) -> PrefetchTally:
    tally = PrefetchTally()
    async with open_library(config) as library:
        send, receive = trio.open_memory_channel[int](0)
        async with trio.open_nursery() as workers:
            for _ in range(concurrency):
                workers.start_soon(_worker, library, receive.clone(), only_osu, tally, on_progress)
            receive.close()
            async with send:
                for set_id in ids:
                    await send.send(set_id)
    return tally


async def _worker(
    library: Library,
    receive: trio.MemoryReceiveChannel[int],
    only_osu: bool,
    tally: PrefetchTally,
    on_progress: Callable[[PrefetchTally], None],
) -> None:
    async with receive:
        async for set_id in receive:
            await _prefetch_one(library, set_id, only_osu, tally)
            tally.bytes = sum(source.bytes_received for source in library.sources)
            on_progress(tally)


async def _prefetch_one(library: Library, set_id: int, only_osu: bool, tally: PrefetchTally):
    """One set; while sources are rate limited or paced, wait for them rather than fail."""
    while True:
        try:
            fetched = await library.prefetch(set_id, only_osu=only_osu)
        except OsufsError as error:
            if error.errno == errno.ENOENT:
                tally.missing += 1
                return
            free_at = _soonest_free(library)
            if free_at is None:
                tally.failed += 1  # the library logged why
                return
            log.info("set %d waits until %s for a source's limit", set_id, time.ctime(free_at))
            await trio.sleep_until(trio.current_time() + free_at - time.time())
            continue
        if fetched:
            tally.fetched += 1
        else:
            tally.cached += 1
        return


def _soonest_free(library: Library) -> float | None:
    """When the first rate-limited source is free again; None when none is limited."""
    now = time.time()
    limited = [source.limited_until for source in library.sources if source.limited_until > now]
    return min(limited) if limited else None
