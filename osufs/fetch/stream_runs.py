"""Which stretches of a streaming member are in its file, and which run brings the rest.

A *run* fills one stretch of the file in order, from `start` up to `stop`. `Runs` keeps a
member's runs ordered by start and decides, for a read, which run will serve it: the one already
heading there, or a new run started at the read's place (in a stored member, when the read is
far ahead). No I/O here; trio thread only.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import trio

# A read this far (or less) past the point a run has filled waits for that run; further
# ahead, in a stored member, it starts a run of its own. About what a fast link brings in the
# time a new request takes to answer.
SEEK_GAP = 2 << 20
# Runs started at a read's place begin at a multiple of this, so the kernel's next
# read-ahead requests land in the same run.
SEEK_ALIGN = 64 << 10


@dataclass(slots=True)
class Run:
    """Member bytes [start, filled) are in the file; the run goes on until `stop`."""

    start: int
    filled: int
    stop: int
    scope: trio.CancelScope
    consumed: int = 0  # compressed bytes fed to the run's inflater (a deflated member)

    @property
    def done(self) -> bool:
        return self.filled >= self.stop


class Runs:
    """A member's runs, ordered by start; `launch` sets each new one going. A member that
    cannot seek (deflated) gets one run from its start, and reads ahead of it wait for it."""

    def __init__(self, size: int, *, seekable: bool, launch: Callable[[Run], None]) -> None:
        self.size = size
        self._seekable = seekable
        self._launch = launch
        self._runs: list[Run] = []
        self._starts: list[int] = []  # the runs' starts, for bisect

    def __iter__(self) -> Iterator[Run]:
        return iter(list(self._runs))

    def first_missing(self, offset: int) -> int:
        """The first member byte at or after offset that is not in the file."""
        i = bisect.bisect_right(self._starts, offset) - 1
        while 0 <= i < len(self._runs) and self._runs[i].start <= offset < self._runs[i].filled:
            offset = self._runs[i].filled
            if not self._runs[i].done:
                break
            i += 1
        return offset

    def covered(self, offset: int, end: int) -> bool:
        return self.first_missing(offset) >= end

    def start(self, start: int, stop: int) -> Run:
        run = Run(start, start, stop, trio.CancelScope())
        at = bisect.bisect_left(self._starts, start)
        self._runs.insert(at, run)
        self._starts.insert(at, start)
        self._launch(run)
        return run

    def serving(self, offset: int) -> Run:
        """The run that will bring the first missing byte at or after offset; started here
        when none will soon."""
        missing = self.first_missing(offset)
        i = bisect.bisect_right(self._starts, missing) - 1
        if i >= 0 and missing < self._runs[i].stop:
            run = self._runs[i]
            if not self._seekable or missing - run.filled <= SEEK_GAP:
                return run
            # Far ahead of this run: a run of its own from there, and this one stops there.
            start = max(run.filled, missing - missing % SEEK_ALIGN)
            stop = run.stop
            self._cut(run, start)
            return self.start(start, stop)
        # In a gap no run will fill: from the read's place (aligned), never from the gap's start:
        # a preview read 1 MB into the audio must not wait for the first MB (the bytes before
        # it come when a read or wait_complete asks for them).
        gap_start = self._runs[i].stop if i >= 0 else 0
        gap_end = self._starts[i + 1] if i + 1 < len(self._starts) else self.size
        start = gap_start
        if self._seekable:
            start = max(gap_start, missing - missing % SEEK_ALIGN)
        return self.start(start, gap_end)

    def fill_gaps(self) -> None:
        """Start runs for every stretch no run will fill."""
        position = 0
        for run in list(self._runs):
            if run.start > position:
                self.start(position, run.start)
            position = max(position, run.stop)
        if position < self.size:
            self.start(position, self.size)

    def pause(self) -> None:
        """Stop every run where it has filled (nobody reads on): the bytes in stay, and a later
        read starts a run from there. A run that brought nothing is forgotten."""
        for i in reversed(range(len(self._runs))):
            run = self._runs[i]
            if run.done:
                continue
            self._cut(run, run.filled)
            if run.filled == run.start:
                del self._runs[i], self._starts[i]

    def cancel(self) -> None:
        for run in self._runs:
            run.scope.cancel()

    @staticmethod
    def _cut(run: Run, stop: int) -> None:
        run.stop = stop
        if run.done:
            run.scope.cancel()


__all__ = ["SEEK_ALIGN", "SEEK_GAP", "Run", "Runs"]
