"""Reads by inode, for the kernel's no-open mode: no OPEN or RELEASE ever comes, so the work
they did moves here.

Each member being read is held open in a bounded LRU (a content file's descriptor, or a handle
on its stream). Holding it is a lease: its set counts as open, so this process's eviction
spares it, and every read renews the lease; a lease not renewed within LEASE seconds, or pushed
out of the LRU, ends and the handle closes. A member evicted anyway (by another mount) reads on
from its open descriptor; once closed, the next read opens (and if need be fetches) it again.
Opening is the member's first read, which is when its set's read-ahead starts.

Trio thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from osufs.errors import OsufsError

# Descriptors held at most: a reader's working set (a grep goes file by file; osu! reads a
# few files at once), far below the open-file limit mount.py raises.
CAPACITY = 256
LEASE = 2.0


@dataclass
class _Held:
    handle: int
    expires: float
    readers: int = 0
    released: bool = False


class InodeFiles:
    """Member handles by (set id, entry), opened on first read and held under a lease."""

    def __init__(
        self,
        open_file: Callable[[int, int], Awaitable[int]],
        close_file: Callable[[int], None],
        read: Callable[[int, int, int], Awaitable[bytes]],
        *,
        capacity: int = CAPACITY,
        lease: float = LEASE,
    ) -> None:
        self._open_file = open_file
        self._close_file = close_file
        self._read = read
        self._capacity = capacity
        self._lease = lease
        self._held: OrderedDict[tuple[int, int], _Held] = OrderedDict()  # oldest use first
        self._opening: dict[tuple[int, int], trio.Event] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def read(self, set_id: int, index: int, offset: int, size: int) -> bytes:
        key = (set_id, index)
        held = await self._hold(key)
        held.readers += 1
        try:
            return await self._read(held.handle, offset, size)
        except OsufsError:
            # A failed stream, say: the next read opens the member anew (and hears why).
            if self._held.get(key) is held:
                del self._held[key]
                held.released = True
            raise
        finally:
            held.readers -= 1
            self._close_if_done(held)

    async def _hold(self, key: tuple[int, int]) -> _Held:
        self.expire(trio.current_time())
        while (held := self._held.get(key)) is None and key in self._opening:
            await self._opening[key].wait()  # one opens a member; if that failed, try again
        if held is not None:
            self._held.move_to_end(key)
            held.expires = trio.current_time() + self._lease
            return held
        opened = self._opening[key] = trio.Event()
        try:
            handle = await self._open_file(*key)
        finally:
            del self._opening[key]
            opened.set()
        held = self._held[key] = _Held(handle, trio.current_time() + self._lease)
        while len(self._held) > self._capacity:
            self._release(self._held.popitem(last=False)[1])
        return held

    def expire(self, now: float) -> None:
        """End the leases not renewed in time (the oldest use comes first)."""
        while self._held:
            key, held = next(iter(self._held.items()))
            if held.expires > now:
                return
            del self._held[key]
            self._release(held)

    async def expire_forever(self) -> None:
        while True:
            await trio.sleep(self._lease / 4)
            self.expire(trio.current_time())

    def close_all(self) -> None:
        while self._held:
            self._release(self._held.popitem(last=False)[1])

    def _release(self, held: _Held) -> None:
        held.released = True
        self._close_if_done(held)

    def _close_if_done(self, held: _Held) -> None:
        if held.released and not held.readers:
            held.readers = -1  # closed: never twice
            self._close_file(held.handle)
