"""A streaming member's partial file in the store: written at any offset as runs bring bytes,
read by whoever waits, checked whole (size, CRC32, SHA-256) once every byte is in."""

from __future__ import annotations

import errno
import hashlib
import os
import zlib
from pathlib import Path

from osufs.archive import MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.store import Store

VERIFY_CHUNK = 1 << 20


class PartialFile:
    """One member's temporary file. `write` and `read` from the trio thread; `check` blocks
    (run it in a worker)."""

    def __init__(self, store: Store, member: ZipMember, label: str) -> None:
        self.member = member
        self.size = member.size
        self._label = label
        self.path, created = store.new_temp(member.size)  # room made first, or ENOSPC
        created.close()
        self._file = open(self.path, "r+b")  # noqa: SIM115 - closed by close()
        self.fd = self._file.fileno()
        self._closed = False

    def write(self, offset: int, data: bytes, stop: int) -> int:
        """Member bytes at offset, those before stop written; how many. Bytes past the member's
        declared size are the archive's lie."""
        if offset + len(data) > self.size:
            raise MemberError(
                f"{self.member.raw_name!r} inflates past its declared size", errno.EFBIG
            )
        data = data[: stop - offset]
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as error:
            code = errno.ENOSPC if error.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
            raise OsufsError(code, f"{self._label}: the cache cannot take it: {error}") from error
        return len(data)

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def check(self) -> bytes:
        """SHA-256 of the whole file, once its size and CRC32 are the directory's (blocking)."""
        sha = hashlib.sha256()
        crc = 0
        position = 0
        while position < self.size:
            block = os.pread(self.fd, min(VERIFY_CHUNK, self.size - position), position)
            if not block:
                break
            sha.update(block)
            crc = zlib.crc32(block, crc)
            position += len(block)
        if position != self.size:
            raise MemberError(f"{self.member.raw_name!r}: {position} bytes, {self.size} declared")
        if crc != self.member.crc32:
            raise MemberError(f"{self.member.raw_name!r}: CRC32 mismatch")
        os.fsync(self.fd)
        return sha.digest()

    def discard(self) -> None:
        Path(self.path).unlink(missing_ok=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.close()


__all__ = ["PartialFile"]
