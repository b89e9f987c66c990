"""The writable layer: an overlay over a private, read-only osufs mount.

`osufs mount MOUNTPOINT --writable DIR` mounts the library read-only at a private lower
directory, then an overlay at MOUNTPOINT with it as the lower layer and `DIR/upper` as the
upper one. What osu! writes, creates, renames or deletes lands in `DIR/upper` (deletions as
whiteouts), never in the cache and never on a source; `DIR/work` is the overlay's scratch space
and must share a filesystem with `DIR/upper`.

Two engines do it (`--overlay`, or `overlay =` in the config file):
- `kernel` (kernel.py): the kernel's overlayfs, where this process may mount (root, or
  CAP_SYS_ADMIN). No process of its own, nothing loaded at start, and an open costs what it
  costs in the read-only mount.
- `fuse-overlayfs` (fuse_overlayfs.py): for everyone else. A process that looks at every root
  entry as it starts and adds a FUSE round trip to every open.
`auto`, the default, takes the kernel's where it may and falls back to fuse-overlayfs, with one
log line, when the kernel refuses (a container's root without CAP_SYS_ADMIN in the host's
namespaces, a writable folder on NFS). Both keep deletions as character devices 0/0 and mark
opaque folders with trusted.overlay.opaque when run as root, so an upper directory moves
between them; fuse-overlayfs's own `.wh.` marker files, which the kernel does not read, are
rewritten the first time the kernel mounts an upper directory that fuse-overlayfs mounted last
(`DIR/engine` names that engine).

The lower directory is `$XDG_RUNTIME_DIR/osufs/<key>` (or `/tmp/osufs-<uid>/<key>` without
one), where the key is a hash of the mountpoint's path (layout.py). It is outside the upper
directory, as both engines require; private to the user (mode 0700, and a FUSE mount is
reachable by its owner alone without allow_other; the kernel's overlay reads it with the
credentials of whoever mounted it); on a tmpfs that backup tools and updatedb skip, so nothing
walks the whole library through it; emptied at boot; and found again from the mountpoint
alone, so `osufs umount MOUNTPOINT` and the next mount can clean up after a killed process
(table.py).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable

import pyfuse3

from osufs.fs import Operations
from osufs.overlay import kernel
from osufs.overlay.fuse_overlayfs import FuseOverlay, find_tool
from osufs.overlay.kernel import KernelOverlay, KernelRefused
from osufs.overlay.layout import Layout, OverlayError, lower_fsname, plan, share_root
from osufs.overlay.table import (
    clear_stale,
    fusermount,
    is_overlay,
    lower_mounts,
    mounted_at,
    mounts,
    unmount,
)

log = logging.getLogger(__name__)

ENGINES = ("auto", kernel.NAME, FuseOverlay.name)


def check_engine(engine: str) -> None:
    """Before anything starts: what the chosen engine needs, said plainly."""
    if engine == kernel.NAME and not kernel.may_mount():
        raise OverlayError(
            "--overlay kernel needs root (CAP_SYS_ADMIN) to mount the kernel's overlayfs; "
            "use --overlay fuse-overlayfs"
        )
    if engine == FuseOverlay.name or (engine == "auto" and not kernel.may_mount()):
        find_tool()


class Writable:
    """The writable layer by the engine chosen: mounted over the lower mount, watched until
    unmounted, then unmounted (the caller unmounts the lower mount after it)."""

    def __init__(
        self,
        layout: Layout,
        *,
        engine: str = "auto",
        allow_other: bool = False,
        owner: tuple[int, int] | None = None,
    ) -> None:
        self.layout = layout
        self.choice = engine
        self.allow_other = allow_other
        self.owner = owner or (os.getuid(), os.getgid())
        self._engine: KernelOverlay | FuseOverlay | None = None
        self._stopping = False

    async def run(self, on_mounted: Callable[[], None] = lambda: None) -> None:
        """Mount, call on_mounted once the overlay is up, return when it is unmounted.

        Raises OverlayError when no engine could mount it."""
        share_root(self.layout, self.allow_other, self.owner)
        if self.choice == kernel.NAME or (self.choice == "auto" and kernel.may_mount()):
            try:
                await self._start(KernelOverlay(self.layout), on_mounted)
                return
            except KernelRefused as refusal:
                if self.choice == kernel.NAME:
                    raise
                log.warning("%s; using fuse-overlayfs instead", refusal)
        await self._start(FuseOverlay(self.layout, allow_other=self.allow_other), on_mounted)

    async def _start(
        self, engine: KernelOverlay | FuseOverlay, on_mounted: Callable[[], None]
    ) -> None:
        self._engine = engine
        if self._stopping:
            engine.terminate()
        await engine.run(on_mounted)

    def terminate(self) -> None:
        """Unmount the overlay (lazily); run() then returns."""
        self._stopping = True
        if self._engine is not None:
            self._engine.terminate()


class LowerOperations(Operations):
    """The library as the overlay's lower layer: the same tree, with the owner's write bit and
    without extended attributes.

    Both engines copy a folder's mode up with it and check permissions against it, so a set
    folder shown as 0555 could never take a new file, nor a 0444 file be overwritten, by its
    owner (root alone ignores modes). Nothing is ever written here: the overlay only reads this
    layer, the mount is read-only, and every write still answers EROFS.

    Extended attributes answer ENOSYS, which the kernel remembers for the whole mount: the
    kernel's overlayfs asks the lower layer for its trusted.overlay.* ones at every lookup (a
    round trip each: listing and stating a 100,000-set root took 4.7 s instead of 0.8 s), and
    would copy osufs's informational user.osufs.* ones into the upper directory, where they go
    stale. fuse-overlayfs asks for its opaque marker as it loads a folder, and reads "not
    supported" as none.
    """

    def _attributes(
        self, inode: int, mode: int, size: int, mtime_ns: int
    ) -> pyfuse3.EntryAttributes:
        if not stat.S_ISLNK(mode):
            mode |= stat.S_IWUSR
        return super()._attributes(inode, mode, size, mtime_ns)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)


__all__ = [
    "ENGINES",
    "LowerOperations",
    "OverlayError",
    "Writable",
    "check_engine",
    "clear_stale",
    "fusermount",
    "is_overlay",
    "lower_fsname",
    "lower_mounts",
    "mounted_at",
    "mounts",
    "plan",
    "unmount",
]
