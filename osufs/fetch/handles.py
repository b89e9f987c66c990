"""Open files: a read-only descriptor of a member's content file, or a handle on a member
still streaming in, its set counted as open (so eviction spares it) until it is closed; and,
for the kernel's no-open mode, the same held by entry under a lease (EntryHandles).
Called from the trio thread only."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from osufs.errors import OsufsError
from osufs.fetch.members import Members
from osufs.store import Store

OnOpen = Callable[[int, int], None]
# Descriptors held at most: a reader's working set (a grep goes file by file; osu! reads a
# few files at once), far below the open-file limit mount.py raises.
CAPACITY = 256
LEASE = 2.0
BeforeFetch = Callable[[int, int], Awaitable[None]]


class Handles:
    """Descriptors handed to fs.py, each counted against its set until closed."""

    def __init__(
        self, store: Store, members: Members, on_open: OnOpen, before_fetch: BeforeFetch
    ) -> None:
        self._store = store
        self._members = members
        self._streams = members.streams
        self._on_open = on_open
        self._before_fetch = before_fetch  # a cold member: read-ahead's turn first
        self._open_files: dict[int, int] = {}  # descriptor -> set id

    async def open_file(self, set_id: int, index: int) -> int:
        """A descriptor of the member's content file, or of its stream when it is large and
        cold. A file evicted by another mount between the index lookup and the open is
        fetched again."""
        usage = self._store.usage
        usage.opened(set_id)
        try:
            path = self._store.blob_path(set_id, index)
            usage.access(set_id, hit=path is not None)
            if path is None:
                await self._before_fetch(set_id, index)
                path = self._store.blob_path(set_id, index)
            if path is None:
                stream = await self._members.open_stream(set_id, index)
                if stream is not None:
                    return self._opened(self._streams.open(stream), set_id, index)
                path = self._store.blob_path(set_id, index)  # the whole archive may have come
            for _attempt in range(3):
                path = path or await self._members.member_file(set_id, index)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    await trio.to_thread.run_sync(self._store.drop_missing, set_id, index, path)
                    path = None
                    continue
                return self._opened(fd, set_id, index)
            raise OsufsError.io(f"set {set_id}: member {index}: its cached file keeps vanishing")
        except BaseException:
            usage.closed(set_id)
            raise

    def _opened(self, fd: int, set_id: int, index: int) -> int:
        self._open_files[fd] = set_id
        self._on_open(set_id, index)
        return fd

    def close_file(self, fd: int) -> None:
        set_id = self._open_files.pop(fd, None)
        if not self._streams.close(fd):
            os.close(fd)
        if set_id is not None:
            self._store.usage.closed(set_id)

    async def read(self, fd: int, offset: int, size: int) -> bytes:
        """Bytes of an open member: from its content file, or as its stream brings them."""
        stream = self._streams.of(fd)
        if stream is None:
            return os.pread(fd, size, offset)
        return await stream.read(offset, size)

    def streaming(self, fd: int) -> bool:
        """Whether the descriptor reads a member still arriving (and so not yet checked)."""
        return self._streams.of(fd) is not None


@dataclass
class _Held:
    handle: int
    expires: float
    readers: int = 0
    released: bool = False


class EntryHandles:
    """Reads by (set id, entry), for the kernel's no-open mode, where no OPEN or RELEASE ever
    comes: the member is opened on its first read (when its set's read-ahead starts) and held
    in a bounded LRU. Holding it is a lease: its set counts as open, so this process's eviction
    spares it, and every read renews it; a lease not renewed within LEASE seconds, or pushed out
    of the LRU, ends and the handle closes. A member evicted anyway (by another mount) reads on
    from its open descriptor; once closed, the next read opens (and if need be fetches) it."""

    def __init__(self, handles: Handles, *, capacity: int = CAPACITY, lease: float = LEASE) -> None:
        self._open_file = handles.open_file
        self._close_file = handles.close_file
        self._read = handles.read
        self._capacity = capacity
        self._lease = lease
        self._held: OrderedDict[tuple[int, int], _Held] = OrderedDict()  # oldest use first
        self._opening: dict[tuple[int, int], trio.Event] = {}

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

    async def keep_leases(self) -> None:
        """End leases as they lapse, until cancelled; then close every handle held."""
        try:
            while True:
                await trio.sleep(self._lease / 4)
                self.expire(trio.current_time())
        finally:
            while self._held:
                self._release(self._held.popitem(last=False)[1])

    def _release(self, held: _Held) -> None:
        held.released = True
        self._close_if_done(held)

    def _close_if_done(self, held: _Held) -> None:
        if held.released and not held.readers:
            held.readers = -1  # closed: never twice
            self._close_file(held.handle)
