"""`python -m osufs.doctor_fuse FOLDER`: osufs doctor's FUSE check, in a process of its own (a
hung mount must not hang the doctor): mount an empty read-only file system at FOLDER, stat it
from another thread, unmount. Exit code 0 when it answered; the reason on stderr otherwise."""

from __future__ import annotations

import os
import stat
import sys

import pyfuse3
import trio


class _Empty(pyfuse3.Operations):
    """One empty directory."""

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None):
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(2)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.st_mode = stat.S_IFDIR | 0o555
        attr.st_nlink = 2
        attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
        return attr


async def _check(folder: str) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pyfuse3.main)
        found = await trio.to_thread.run_sync(os.stat, folder)
        pyfuse3.terminate()
    if not stat.S_ISDIR(found.st_mode) or found.st_ino != pyfuse3.ROOT_INODE:
        raise RuntimeError("the test mount answered with something else")


def main(folder: str) -> int:
    try:
        pyfuse3.init(_Empty(), folder, {"fsname=osufs-doctor", "subtype=osufs", "ro"})
    except Exception as error:  # libfuse says why on stderr first
        print(f"cannot mount: {error}", file=sys.stderr)
        return 1
    try:
        trio.run(_check, folder)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
