"""Which source serves a request, and when: every fetch module asks here rather than walking the
sources itself.

`free_at` is the one question asked of a source: when could it take a request of this kind
(its allowance, osufs/allowance.py, shared by every process on the cache directory, and any
rest it was told to take). `serve` sends a request to the candidate free soonest: a reader
waits for it within the read's deadline (`--fetch-timeout`), goes to another source that can
serve sooner, and fails at once, saying when it could succeed, only when none can serve
before the deadline. A source that said to wait (SourceLimited) is asked again only once it
is free; one that failed otherwise is not asked again for that request, so a failure of one
set stays with that set. Background work (fetch/context.py) leaves readers their share, and
reading ahead never waits for a source."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from osufs.allowance import clock
from osufs.errors import OsufsError
from osufs.fetch.context import current_priority, in_background, patient
from osufs.sources import Source, SourceLimited

log = logging.getLogger(__name__)

T = TypeVar("T")

# Request kinds, as sources cost them (Source.costs; an unknown kind costs 1).
DOWNLOAD = "download"  # an archive, its tail or a range of it
OSU = "osu"  # one .osu file by beatmap id
SET = "set"  # a set's metadata
# A source that said to wait without saying until when is left alone at least this long.
MIN_PAUSE = 0.05
# Reading ahead waits at most this long for a request (its turn at the source, then its
# answer) before it gives up, unless a reader comes to wait for it.
IMPATIENT_WAIT = 2.0


def free_at(source: Source, kind: str, *, background: bool, ahead: float = 0.0) -> float:
    """When `source` could take a request of `kind` (unix time; <= now: now), behind `ahead`
    of its allowance already promised to requests on their way."""
    cost = source.cost(kind) + ahead
    return max(source.limited_until, source.allowance.free_at(cost, background=background))


def deadline() -> float:
    """The running task's deadline as a unix time (inf: none)."""
    left = trio.current_effective_deadline() - trio.current_time()
    return math.inf if math.isinf(left) else time.time() + left


class Planner:
    """The sources, in the order the user gave them, and which of them serves each request."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        # What this process chose to send to each source and has not had answered: a crowd
        # of reads choosing at once does not all pick the one source free for a single one.
        self._promised: dict[Source, float] = {}

    def available(self) -> list[Source]:
        """The sources not resting after a rate limit, in order."""
        now = time.time()
        return [source for source in self.sources if source.limited_until <= now]

    def archive_sources(self) -> list[Source]:
        return [source for source in self.sources if source.serves_archives]

    def unmetered_available(self) -> bool:
        return any(not s.metered for s in self.available() if s.serves_archives)

    def difficulty_sources(self) -> list[Source]:
        """The sources that list sets by their difficulties, when no unmetered archive source
        is available; empty when an archive's directory should list them (or nothing can)."""
        if self.unmetered_available():
            return []
        return [s for s in self.sources if s.serves_difficulties and not s.free_difficulties]

    def free_difficulty_source(self) -> Source | None:
        """A local source of .osu files (online.db and the files stored by md5), asked first."""
        return next((s for s in self.sources if s.free_difficulties), None)

    def other_ways(self, free: Source) -> bool:
        """Whether a set can be listed some other way than by `free`'s .osu files at hand."""
        return any(
            s is not free and (s.serves_archives or s.serves_difficulties) for s in self.sources
        )

    def soonest(self, candidates: list[Source], kind: str) -> tuple[float, Source] | None:
        """The candidate that can take a request of `kind` first, and when; of those free now,
        the first in the user's order."""
        background = in_background()
        now = time.time()
        best: tuple[float, Source] | None = None
        for source in candidates:
            ahead = self._promised.get(source, 0.0)
            when = max(free_at(source, kind, background=background, ahead=ahead), now)
            if best is None or when < best[0]:
                best = (when, source)
        return best

    def note_limited(self, source: Source, error: SourceLimited) -> None:
        """A source said to wait: it is not asked again before then."""
        source.limited_until = max(error.until, time.time() + MIN_PAUSE)

    async def serve(
        self,
        candidates: list[Source],
        kind: str,
        request: Callable[[Source], Awaitable[T]],
        *,
        what: str,
        failures: list[OsufsError] | None = None,
    ) -> T:
        """`request` answered by the candidate free soonest, waited for within the deadline.

        Raises SourceLimited at once when none left can serve before the deadline (saying
        when one could), else, when every candidate failed otherwise, the first failure (its
        type kept: SourceMissing, SourceMismatch); `failures` collects what each said.
        Reading ahead gives up after IMPATIENT_WAIT, unless a reader comes to wait for it."""
        failures = [] if failures is None else failures
        if patient():
            return await self._serve(candidates, kind, request, what, failures)
        with current_priority().bounded(IMPATIENT_WAIT) as scope:
            result = await self._serve(candidates, kind, request, what, failures)
        if scope.cancelled_caught:
            raise SourceLimited(f"{what}: the sources are busy; not waited for", time.time())
        return result

    async def _serve(
        self,
        candidates: list[Source],
        kind: str,
        request: Callable[[Source], Awaitable[T]],
        what: str,
        failures: list[OsufsError],
    ) -> T:
        failed: list[Source] = []
        while True:
            left = [source for source in candidates if source not in failed]
            best = self.soonest(left, kind)
            if best is None:
                if not failures:
                    raise OsufsError.io(f"{what}: no source serves it")
                raise next((f for f in failures if not isinstance(f, SourceLimited)), failures[0])
            when, source = best
            now = time.time()
            if when > now:
                if when >= deadline() or (not patient() and when - now > IMPATIENT_WAIT):
                    raise SourceLimited(
                        f"{what}: no source can serve it before the deadline; "
                        f"{source.label} can at {clock(when)}",
                        when,
                    )
                log.debug("%s: waiting %.1f s for %s", what, when - now, source.label)
                await trio.sleep(when - now)
                continue
            cost = source.cost(kind)
            self._promised[source] = self._promised.get(source, 0.0) + cost
            try:
                return await request(source)
            except SourceLimited as error:
                self.note_limited(source, error)
                log.info("%s: %s", what, error)
                failures.append(error)
                continue
            except OsufsError as error:
                failed.append(source)
                failures.append(error)
                continue
            finally:
                self._promised[source] -= cost
