"""What the kernel keeps of the tree in the no-open mode, and telling it when that changes.

In the kernel's no-open mode (docs/pyfuse3.md) every directory's listing stays cached in the
kernel until it is invalidated, and READDIR never reaches osufs again. Member bytes never
change under an inode, so only listings need telling: the root when the catalogue changes, and
a set folder listed while provisional once its archive completes it; and a streamed member's
pages, served before its check, when it fails it. Listings served are noted
here; a change this process makes is pushed before the request that made it is answered, and
a change another process makes (two mounts sharing one cache) as soon as its commit wakes the
index watch. A root listing answered in several requests from two states of the catalogue is
dropped at the request that sees the second, so the kernel never keeps a mixed one.
A request that finds a change already being pushed (by the index watch, woken by this very
commit) waits for that push to finish: until then the kernel may still serve the old listing.

Trio thread only; pyfuse3.invalidate_inode blocks, so it runs in a worker thread. A file's
pages are dropped by a task of their own, never awaited by a request: invalidating them from
inside a READ of that file would deadlock (the kernel holds its pages locked meanwhile).
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Callable

import pyfuse3
import trio

from osufs.library import Library

log = logging.getLogger(__name__)


class KernelListings:
    """The listings the kernel holds: the root's catalogue stamp, and the provisional sets whose
    folder it listed (a provisional listing has one folder, the set's: its difficulties are all
    at its top; a set of ids, as a cold grep lists tens of thousands)."""

    def __init__(self, library: Library, set_inode: Callable[[int, int], int]) -> None:
        self._library = library
        self._set_inode = set_inode
        self._root_stamp: object = None
        self._provisional: set[int] = set()
        self._completed = library.listings_completed()
        self._refused, self._refused_inodes = trio.open_memory_channel[int](math.inf)
        self._pushing = trio.Lock()  # one check-and-invalidate of listings at a time

    def refused(self, set_id: int, index: int) -> None:
        """A streamed member failed its check: drop its pages, in the background."""
        self._refused.send_nowait(self._set_inode(set_id, index))

    async def served_root(self, stamp: object) -> None:
        """Note the catalogue a root READDIR was answered from. If the kernel's copy already
        holds entries of another (it changed between the requests of one listing, or two
        listings ran at once), drop that copy: the next listing is asked for whole again."""
        if self._root_stamp is not None and stamp != self._root_stamp:
            log.debug("root listed across a catalogue change; the kernel's copy dropped")
            await _invalidate(pyfuse3.ROOT_INODE)
        self._root_stamp = stamp

    def served_provisional(self, set_id: int) -> None:
        self._provisional.add(set_id)

    def provisional(self, set_id: int) -> bool:
        return set_id in self._provisional

    async def set_completed(self, set_id: int) -> None:
        """Drop a provisional set's cached folders once its stored listing is complete."""
        async with self._pushing:
            await self._drop_completed(set_id)

    async def _drop_completed(self, set_id: int) -> None:
        if set_id not in self._provisional:
            return
        listing = self._library.stored_listing(set_id)
        if listing is None or listing.provisional:
            return
        self._provisional.discard(set_id)
        log.debug("set %d: listing completed; the kernel's copy dropped", set_id)
        await _invalidate(self._set_inode(set_id, 0))

    async def catalogue_changed(self) -> None:
        """Drop the root's cached listing if the catalogue moved since it was served; return
        only once the kernel's copy is gone, whoever noticed the change first."""
        async with self._pushing:
            if self._root_stamp is None or self._root_stamp == self._library.catalogue_stamp():
                return
            self._root_stamp = None  # the next readdir notes the new one
            await _invalidate(pyfuse3.ROOT_INODE)

    async def watch(self) -> None:
        """Push changes made without a request to this mount: background work, other mounts;
        and drop refused members' pages."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drop_refused)
            await self._watch_listings()

    async def _drop_refused(self) -> None:
        async for inode in self._refused_inodes:
            await _invalidate(inode)

    async def _watch_listings(self) -> None:
        with self._library.watch_index() as index:
            while True:
                await index.changed()
                await self._changed_elsewhere()

    async def _changed_elsewhere(self) -> None:
        await self.catalogue_changed()
        completed = self._library.listings_completed()
        if completed != self._completed:
            self._completed = completed
            for set_id in list(self._provisional):
                await self.set_completed(set_id)


async def _invalidate(inode: int) -> None:
    try:
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, False)
    except OSError as error:
        if error.errno != errno.ENOENT:  # ENOENT: the kernel has forgotten the inode already
            log.warning("could not invalidate inode %d: %s", inode, error)
