"""The root directory's sets, held compactly in memory for readdir (issue 7).

Paging the index for every listing cost a msgpack decode and a fresh attributes object per set,
about 2.5 µs each: most of an `ls` of 100,000 sets. Here the root is an array of ids, an array of
times and a list of encoded names (about 100 bytes a set), rebuilt when the catalogue changes.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import trio

from osufs.library import Library


@dataclass(frozen=True)
class RootEntries:
    """Listed sets in id order: ids[i] is named names[i] and has mtime mtimes[i] (ns)."""

    ids: array[int] = field(default_factory=lambda: array("Q"))
    mtimes: array[int] = field(default_factory=lambda: array("q"))
    names: list[bytes] = field(default_factory=list)
    newest: int = 0  # the newest set's mtime (ns): the root's own time


class RootListing:
    """The root's entries as of the catalogue's latest state, rebuilt on the first readdir after
    it changed (a worker thread reads the index, so other requests go on meanwhile)."""

    def __init__(self, library: Library) -> None:
        self._library = library
        self._stamp: tuple[int, bytes] | None = None
        self._entries = RootEntries()
        self._lock = trio.Lock()

    @property
    def stamp(self) -> tuple[int, bytes] | None:
        """The catalogue's stamp the entries last returned were built from."""
        return self._stamp

    async def entries(self) -> RootEntries:
        async with self._lock:
            stamp = self._library.catalogue_stamp()
            if stamp != self._stamp:
                # Stamped before reading: a change while building is seen by the next call.
                self._entries = await trio.to_thread.run_sync(self._build, stamp)
            self._stamp = stamp
            return self._entries

    async def newest(self) -> int:
        """The root's own mtime: the newest listed set's. Saved in the index by the last build
        for the same list, so a mount's first stat of the root builds nothing."""
        stamp = self._library.catalogue_stamp()
        if stamp == self._stamp:
            return self._entries.newest
        saved = self._library.saved_newest(stamp)
        return saved if saved is not None else (await self.entries()).newest

    def _build(self, stamp: tuple[int, bytes]) -> RootEntries:
        """In a worker thread."""
        ids, mtimes, names = self._library.catalogue_columns()
        entries = RootEntries(ids, mtimes, names, max(mtimes, default=0))
        if self._library.saved_newest(stamp) != entries.newest:
            self._library.save_newest(stamp, entries.newest)
        return entries
