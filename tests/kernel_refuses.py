"""`python -m osufs` with the kernel refusing every overlay mount with EPERM, as it does to a
container's root: the mount(2) call alone is replaced; the rest mounts for real."""

from __future__ import annotations

import ctypes
import errno

from osufs.cli import main
from osufs.overlay import kernel


class RefusingLibc:
    def mount(self, *args: object) -> int:
        ctypes.set_errno(errno.EPERM)
        return -1


if __name__ == "__main__":
    kernel.libc = RefusingLibc()
    main()
