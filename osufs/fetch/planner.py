"""Which source serves a request: every fetch module asks here rather than walking the
sources itself."""

from __future__ import annotations

import time

from osufs.sources import Source, SourceLimited


class Planner:
    """The sources, in the order the user gave them, and which of them can serve now."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources

    def available(self) -> list[Source]:
        """The sources not resting after a rate limit, in order."""
        now = time.time()
        return [source for source in self.sources if source.limited_until <= now]

    def archive_sources(self) -> list[Source]:
        return [source for source in self.sources if source.serves_archives]

    def unmetered_available(self) -> bool:
        return any(not s.metered for s in self.available() if s.serves_archives)

    def difficulty_source(self) -> Source | None:
        """The source that lists sets by their difficulties, when no unmetered archive source
        is available; None when an archive's directory should list them (or nothing can)."""
        if self.unmetered_available():
            return None
        return next(
            (s for s in self.sources if s.serves_difficulties and not s.free_difficulties), None
        )

    def free_difficulty_source(self) -> Source | None:
        """A local source of .osu files (online.db and the files stored by md5), asked first."""
        return next((s for s in self.sources if s.free_difficulties), None)

    def other_ways(self, free: Source) -> bool:
        """Whether a set can be listed some other way than by `free`'s .osu files at hand."""
        return any(
            s is not free and (s.serves_archives or s.serves_difficulties) for s in self.sources
        )

    def note_limited(self, source: Source, error: SourceLimited) -> None:
        source.limited_until = error.until

    def soonest_free(self, *, after: float | None = None) -> float:
        """When the first archive source is free again (the first one resting past `after`)."""
        if after is None:
            return min((s.limited_until for s in self.archive_sources()), default=0.0)
        return min(
            (s.limited_until for s in self.archive_sources() if s.limited_until > after),
            default=after,
        )
