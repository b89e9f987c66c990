"""The mount table, and taking a writable mount down: the overlay first, then the library's
private lower mount; also what a killed mount left behind."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from osufs.overlay.layout import Layout, OverlayError, lower_fsname

log = logging.getLogger(__name__)

# fuse-overlayfs 1.10 ignores fsname= and subtype=, so its mounts always show as this type; the
# lower mount's fsname tells osufs's own apart.
FUSE_OVERLAY_TYPE = "fuse.fuse-overlayfs"
KERNEL_OVERLAY_TYPE = "overlay"
# A kernel overlay's source is free text: `mount` and `df` show this, and it marks ours.
KERNEL_SOURCE = "osufs"
STOP_LIMIT = 15.0
_MNT_DETACH = 2

libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str

    @property
    def kernel(self) -> bool:
        return self.fstype == KERNEL_OVERLAY_TYPE


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts() -> list[MountEntry]:
    """The mounts this process sees, from /proc/self/mountinfo (no stat of any of them)."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as file:
        for line in file:
            fields = line.split()
            if "-" not in fields:
                continue
            dash = fields.index("-")
            entries.append(
                MountEntry(_unescape(fields[4]), fields[dash + 1], _unescape(fields[dash + 2]))
            )
    return entries


def mounted_at(path: Path, *, resolved: bool = False) -> MountEntry | None:
    """The mount at path. The serving process passes resolved paths: resolving stats the path,
    and a stat of the overlay from the process that serves its lower layer can deadlock (the
    overlay may be waiting on that very process)."""
    target = str(path) if resolved else os.path.realpath(path)
    found = [entry for entry in mounts() if entry.mountpoint == target]
    return found[-1] if found else None


def is_overlay(entry: MountEntry | None) -> bool:
    """A writable mount's overlay, by either engine."""
    return entry is not None and (
        entry.fstype == FUSE_OVERLAY_TYPE or (entry.kernel and entry.source == KERNEL_SOURCE)
    )


def lower_mounts(mountpoint: Path) -> list[MountEntry]:
    fsname = lower_fsname(mountpoint)
    return [entry for entry in mounts() if entry.source == fsname]


def fusermount(path: str | Path, *, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OverlayError("fusermount3 not found; install the fuse3 package")
    command = [tool, "-u", *(["-z"] if lazy else []), str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def umount(path: str | Path, *, lazy: bool = False) -> None:
    """umount2(2) for the kernel's overlay, which fusermount does not take; raises OSError."""
    if libc.umount2(os.fsencode(path), _MNT_DETACH if lazy else 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))


def detach(entry: MountEntry) -> None:
    """Unmount lazily, whatever still uses it; a failure is logged, not raised."""
    if entry.kernel:
        try:
            umount(entry.mountpoint, lazy=True)
        except OSError as error:
            log.warning("could not unmount %s: %s", entry.mountpoint, error.strerror)
        return
    result = fusermount(entry.mountpoint, lazy=True)
    if result.returncode != 0:
        log.warning("could not unmount %s: %s", entry.mountpoint, result.stderr.strip())


def served(entry: MountEntry) -> bool:
    """Whether a FUSE mount's process still answers. statfs always reaches the process (stat
    may be answered from the kernel's cache), and fails with ENOTCONN once it is gone."""
    try:
        os.statvfs(entry.mountpoint)
    except OSError as error:
        return error.errno != errno.ENOTCONN
    return True


def clear_stale(layout: Layout) -> None:
    """Refuse a mountpoint in use; lazily unmount what a killed mount left behind: its lower
    layer, and a kernel overlay over it (which, unlike fuse-overlayfs, has no process to die)."""
    entry = mounted_at(layout.mountpoint)
    lowers = lower_mounts(layout.mountpoint)
    if entry is not None:
        if not (is_overlay(entry) and lowers and not any(served(lower) for lower in lowers)):
            raise OverlayError(f"{layout.mountpoint} is mounted already; osufs umount it first")
        log.warning("unmounting the overlay a killed mount left at %s", entry.mountpoint)
        detach(entry)
    for lower in lowers:
        log.warning("unmounting the lower layer a previous mount left at %s", lower.mountpoint)
        detach(lower)


def wait_for_lower(mountpoint: Path, limit: float = STOP_LIMIT) -> bool:
    """After the overlay is unmounted its osufs process unmounts the lower layer; wait for
    that, and unmount it ourselves if that process is gone. True if something was left."""
    deadline = time.monotonic() + limit
    while lowers := lower_mounts(mountpoint):
        if time.monotonic() > deadline or not any(served(lower) for lower in lowers):
            for lower in lowers:
                detach(lower)
            return True
        time.sleep(0.05)
    return False


def unmount(mountpoint: Path) -> None:
    """`osufs umount` for either form and either engine: the overlay, then (by its own process,
    or here if that process is gone) the lower layer."""
    entry = mounted_at(mountpoint)
    if entry is None and lower_mounts(mountpoint):
        wait_for_lower(mountpoint, limit=0)  # only a killed mount's lower layer is left
        return
    failure = _unmount_now(entry) if entry is not None and entry.kernel else _fusermount(mountpoint)
    # A killed mount's fuse-overlayfs may have gone in the meantime: nothing to report then.
    if failure is not None and mounted_at(mountpoint) == entry:
        if "busy" in failure.lower():
            failure += " (a program still has files open in it)"
        raise OverlayError(failure)
    if is_overlay(entry) and wait_for_lower(mountpoint):
        log.warning("the lower layer of %s was left mounted; unmounted it", mountpoint)


def _unmount_now(entry: MountEntry) -> str | None:
    try:
        umount(entry.mountpoint)
    except OSError as error:
        return f"{entry.mountpoint}: {error.strerror}"
    return None


def _fusermount(mountpoint: Path) -> str | None:
    result = fusermount(mountpoint)
    return None if result.returncode == 0 else result.stderr.strip() or "unmount failed"


async def wait_unmounted(entry: MountEntry) -> None:
    """Return once entry is no longer mounted. The kernel flags /proc/self/mountinfo with
    POLLPRI at every change of the mount table (and always with POLLIN), so an epoll set that
    asks for POLLPRI alone turns readable then: no polling while nothing changes."""
    path = Path(entry.mountpoint)
    with open("/proc/self/mountinfo", "rb") as table, select.epoll() as changes:
        changes.register(table.fileno(), select.EPOLLPRI)
        try:
            while mounted_at(path, resolved=True) == entry:
                await trio.lowlevel.wait_readable(changes.fileno())
                changes.poll(0)  # takes the change, so the set is quiet until the next one
        finally:
            trio.lowlevel.notify_closing(changes.fileno())
