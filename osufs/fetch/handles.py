"""Open files: a read-only descriptor of a member's content file, or a handle on a member
still streaming in, its set counted as open (so eviction spares it) until it is closed.
Called from the trio thread only."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

import trio

from osufs.errors import OsufsError
from osufs.fetch.members import Members
from osufs.store import Store

OnOpen = Callable[[int, int], None]
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
