"""The cache's free-space bound: by default at least KEEP_FREE of the cache's file system stays
free (mountpoint-s3 keeps 5%), whichever comes first with --cache-size.

A write is measured before it starts: `Room.measure` is what the file system has free above the
bound, less what writes already under way in this process have been promised and not yet
written. The store evicts to make room, or refuses with ENOSPC (store.Store.make_room)."""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

KEEP_FREE = 0.10
# After a measure, writes are granted from what it found for up to this many bytes or seconds
# before the file system is asked again (a statvfs per small .osu would cost an import more than
# its writes); other processes' writes are seen at the next measure.
RECHECK_BYTES = 16 << 20
RECHECK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class SpaceBound:
    """The bound in force on one cache, as measured now."""

    fs_size: int  # bytes of the cache's file system
    fs_free: int  # of those, free to this user
    keep_free: int  # bytes that must stay free
    fraction: float  # keep_free as a share of fs_size
    budget: int | None  # --cache-size (the last mount's), if any
    content_bytes: int  # what the cache holds now

    @property
    def room(self) -> int:
        """Bytes the cache may still add before a bound makes it evict."""
        room = self.fs_free - self.keep_free
        if self.budget is not None:
            room = min(room, self.budget - self.content_bytes)
        return max(room, 0)

    @property
    def limit(self) -> int:
        """The most the cache can hold now: what it holds plus its room."""
        return self.content_bytes + self.room

    @property
    def first(self) -> str:
        """Which bound comes first: "free space" or "--cache-size"."""
        if self.budget is not None and self.budget - self.content_bytes < (
            self.fs_free - self.keep_free
        ):
            return "--cache-size"
        return "free space"


class Room:
    """What the file system under `folder` has free above the bound, for writes about to
    start; the promises made to writes still under way are counted until their file is gone
    (renamed into content/ or removed) or wholly written. Any thread may call it."""

    def __init__(self, folder: Path, fraction: float = KEEP_FREE) -> None:
        self.folder = folder
        self.fraction = fraction
        self._lock = threading.Lock()
        self._promised: dict[Path, int] = {}
        self._slack = 0  # bytes grantable without measuring again, until _measured is old
        self._measured = -math.inf

    def filesystem(self) -> tuple[int, int, int]:
        """(size, free, bytes to keep free) of the file system, in bytes."""
        found = os.statvfs(self.folder)
        size = found.f_blocks * found.f_frsize
        return size, found.f_bavail * found.f_frsize, int(size * self.fraction)

    def take(self, size: int, path: Path | None) -> int:
        """Promise `size` bytes to the write of `path` if they fit above the bound: 0. Else
        nothing is promised and the answer is how many bytes are missing."""
        with self._lock:
            now = time.monotonic()
            if size > self._slack or now - self._measured >= RECHECK_SECONDS:
                _size, free, keep = self.filesystem()
                room = free - keep - self._outstanding()
                if size > room:
                    self._slack, self._measured = 0, -math.inf
                    return size - room
                self._slack, self._measured = min(room, RECHECK_BYTES), now
            self._slack -= size
            if path is not None and size:
                self._promised[path] = size
            return 0

    def _outstanding(self) -> int:
        """Promised bytes not yet on the disk (lock held)."""
        owed = 0
        for path, size in list(self._promised.items()):
            try:
                written = os.stat(path).st_blocks * 512
            except FileNotFoundError:
                del self._promised[path]  # committed or removed: its bytes count as they are
                continue
            if written >= size:
                del self._promised[path]  # all on the disk: statvfs counts it from now on
                continue
            owed += size - written
        return owed
