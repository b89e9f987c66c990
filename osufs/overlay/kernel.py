"""The kernel's overlayfs as the writable layer's engine, where this process may mount (root,
or CAP_SYS_ADMIN): one mount(2) over the lower mount and no process of its own.

It loads nothing at start, however large the root, and an open is one FUSE round trip (to
osufs), as in the read-only mount. The lower layer being FUSE is allowed: overlayfs treats it as
a remote filesystem and revalidates its entries. Options, each for a reason:
- `redirect_dir=off`: a library folder cannot be renamed (EXDEV; `mv` copies it instead), as
  with fuse-overlayfs, which has no redirects and would show a redirected folder empty.
- `metacopy=off`: a chmod copies the whole file up. A metadata-only copy keeps the bytes in the
  lower layer behind an xattr that fuse-overlayfs does not read: it would show an empty file.
- `index=off`: no index of copied-up files. It is for hard links and NFS export, which osu! does
  not need, and it would tie the upper directory to one lower filesystem's file handles.
- `xino=on`: the layers are two filesystems, and without it the kernel gives directories
  inode numbers that change at every mount, and files an st_dev of their own. With it every
  number is stable and on the overlay's st_dev: the kernel tags the lower layer's numbers with
  its layer in the top bit (osufs's number | 1 << 63; osufs's ids leave the top bits free),
  and a copied-up file keeps its number. The cost: listing a folder both layers hold (the root)
  looks up each entry once, from the index.
All four are given explicitly because a distribution's kernel may default them otherwise.
`nosuid` and `nodev`, as a FUSE mount has: nothing here is a program or a device.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import trio

from osufs.overlay.layout import Layout, OverlayError
from osufs.overlay.table import (
    KERNEL_OVERLAY_TYPE,
    KERNEL_SOURCE,
    MountEntry,
    is_overlay,
    libc,
    mounted_at,
    umount,
    wait_unmounted,
)

log = logging.getLogger(__name__)

NAME = "kernel"
OPTIONS = ("redirect_dir=off", "metacopy=off", "index=off", "xino=on")
_MS_NOSUID, _MS_NODEV = 2, 4
_CAP_SYS_ADMIN = 21
_HINTS = {
    errno.EPERM: "it needs CAP_SYS_ADMIN in the host's namespaces, which containers withhold",
    errno.EINVAL: "dmesg says why; a writable folder on NFS or FUSE cannot hold the upper layer",
    errno.ENODEV: "this kernel has no overlay filesystem",
}
# What fuse-overlayfs writes and the kernel does not read (kernel whiteouts are char 0/0
# devices, which fuse-overlayfs also writes when it may, and reads).
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
FUSE_OPAQUE_XATTRS = ("user.fuseoverlayfs.opaque", "user.overlay.opaque")


class KernelRefused(OverlayError):
    """The kernel's overlayfs could not be mounted; fuse-overlayfs may still be."""


def may_mount() -> bool:
    """Whether this process holds CAP_SYS_ADMIN, which mounting the kernel's overlayfs takes
    (root has it; a container's root often has not)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def mount_options(layout: Layout) -> str:
    layers = [f"lowerdir={layout.lower}", f"upperdir={layout.upper}", f"workdir={layout.work}"]
    return ",".join([*layers, *OPTIONS])


def mount_overlay(layout: Layout) -> None:
    """mount(2) itself, not the mount command: its errno tells a refusal apart without parsing
    util-linux's translated messages, and nothing beyond libc needs to be installed."""
    flags = _MS_NOSUID | _MS_NODEV
    data = mount_options(layout).encode()
    target = os.fsencode(layout.mountpoint)
    if libc.mount(KERNEL_SOURCE.encode(), target, KERNEL_OVERLAY_TYPE.encode(), flags, data):
        code = ctypes.get_errno()
        hint = f" ({_HINTS[code]})" if code in _HINTS else ""
        raise KernelRefused(
            f"the kernel's overlayfs refused to mount {layout.mountpoint}: "
            f"{os.strerror(code)}{hint}"
        )


def _set_opaque(folder: Path) -> None:
    os.setxattr(folder, OPAQUE_XATTR, b"y", follow_symlinks=False)


def _is_opaque(folder: Path) -> bool:
    try:
        return os.getxattr(folder, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _is_whiteout(path: Path) -> bool:
    info = path.lstat()
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0)


def adopt_upper(upper: Path) -> int:
    """Rewrite what fuse-overlayfs leaves in an upper directory into what the kernel reads;
    returns how many entries it changed.

    `.wh.NAME` files become whiteout devices; `.wh..wh..opq` files and user.* opaque xattrs
    become trusted.overlay.opaque; and whiteouts inside opaque folders go, since they hide
    nothing there, and the kernel lists them in a folder that has no lower counterpart."""
    changed = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        folder = Path(dirpath)
        for name in dirnames:
            xattrs = os.listxattr(folder / name, follow_symlinks=False)
            if any(key in xattrs for key in FUSE_OPAQUE_XATTRS):
                _set_opaque(folder / name)
                changed += 1
        for name in filenames:
            marker = folder / name
            if not name.startswith(WHITEOUT_PREFIX) or not stat.S_ISREG(marker.lstat().st_mode):
                continue  # a device so named is a whiteout already, of that very name
            if name == OPAQUE_MARKER:
                _set_opaque(folder)
            else:
                hidden = folder / name.removeprefix(WHITEOUT_PREFIX)
                if not os.path.lexists(hidden):
                    os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0))
                elif stat.S_ISDIR(hidden.lstat().st_mode):
                    _set_opaque(hidden)  # fuse-overlayfs reads no lower layer below the marker
            marker.unlink()
            changed += 1
        if _is_opaque(folder):
            for path in list(folder.iterdir()):
                if _is_whiteout(path):
                    path.unlink()
                    changed += 1
    return changed


class KernelOverlay:
    """The kernel's overlay at the mountpoint: mounted, watched, unmounted."""

    name = NAME

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._watch = trio.CancelScope()

    async def run(self, on_mounted: Callable[[], None] = lambda: None) -> None:
        """Mount, call on_mounted, and return once the overlay is unmounted, by terminate() or
        by anyone. Raises KernelRefused, with nothing mounted, if the kernel would not."""
        if self._watch.cancel_called:
            return
        try:
            # mount(2) resolves the lower directory and asks its filesystem for statfs, which
            # osufs answers on this thread: the call must not block it.
            entry = await trio.to_thread.run_sync(self._mount)
            log.info(
                "writable layer %s mounted at %s by the kernel's overlayfs",
                self.layout.upper,
                self.layout.mountpoint,
            )
            on_mounted()
            with self._watch:
                await wait_unmounted(entry)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._unmount)
        log.info("%s unmounted", self.layout.mountpoint)

    def terminate(self) -> None:
        self._watch.cancel()

    def _mount(self) -> MountEntry:
        upper = self.layout.upper
        if self.layout.last_engine() != NAME:
            try:
                changed = adopt_upper(upper)
            except OSError as error:
                message = f"cannot prepare {upper} for the kernel's overlayfs: {error}"
                raise KernelRefused(message) from None
            if changed:
                log.info("adapted %d entries fuse-overlayfs left in %s", changed, upper)
        self.layout.note_engine(NAME)
        mount_overlay(self.layout)
        return MountEntry(str(self.layout.mountpoint), KERNEL_OVERLAY_TYPE, KERNEL_SOURCE)

    def _unmount(self) -> None:
        """Lazily, as fuse-overlayfs does on SIGTERM: the mountpoint is free at once, whatever
        still has files open in it."""
        entry = mounted_at(self.layout.mountpoint, resolved=True)
        if is_overlay(entry) and entry.kernel:
            try:
                umount(entry.mountpoint, lazy=True)
            except OSError as error:
                log.warning("could not unmount %s: %s", entry.mountpoint, error.strerror)
