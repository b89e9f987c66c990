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
        self._stamp: object = None
        self._entries = RootEntries()
        self._lock = trio.Lock()

    @property
    def stamp(self) -> object:
        """The catalogue's stamp the entries last returned were built from."""
        return self._stamp

    async def entries(self) -> RootEntries:
        async with self._lock:
            stamp = self._library.catalogue_stamp()
            if stamp != self._stamp:
                # Stamped before reading: a change while building is seen by the next call.
                self._entries = await trio.to_thread.run_sync(self._build)
            self._stamp = stamp
            return self._entries

    def _build(self) -> RootEntries:
        ids, mtimes, names = self._library.catalogue_columns()
        return RootEntries(ids, mtimes, names, max(mtimes, default=0))
