"""The one domain error type: every failure that reaches a FUSE caller carries its errno."""

from __future__ import annotations

import errno as errno_codes


class OsufsError(Exception):
    """A failure with the errno the filesystem should answer with."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno

    @classmethod
    def io(cls, message: str) -> OsufsError:
        return cls(errno_codes.EIO, message)

    @classmethod
    def not_found(cls, message: str) -> OsufsError:
        return cls(errno_codes.ENOENT, message)
