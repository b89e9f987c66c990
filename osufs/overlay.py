"""The writable layer: fuse-overlayfs over a private, read-only osufs mount.

`osufs mount MOUNTPOINT --writable DIR` mounts the library read-only at a private lower
directory, then runs fuse-overlayfs with it as the lower layer and `DIR/upper` as the upper
one, at MOUNTPOINT. What osu! writes, creates, renames or deletes lands in `DIR/upper` (deletions
as whiteout files), never in the cache and never on a source; `DIR/work` is fuse-overlayfs's
scratch space and must share a filesystem with `DIR/upper`.

The lower directory is `$XDG_RUNTIME_DIR/osufs/<key>` (or `/tmp/osufs-<uid>/<key>` without
one), where the key is a hash of the mountpoint's path. It is outside the upper directory, as
fuse-overlayfs requires; private to the user (mode 0700, and a FUSE mount is reachable by its
owner alone without allow_other); on a tmpfs that backup tools and updatedb skip, so nothing
walks the whole library through it; emptied at boot; and found again from the mountpoint
alone, so `osufs umount MOUNTPOINT` and the next mount can clean up after a killed process.

fuse-overlayfs options, each for a reason measured on a 100,000-set index:
- `fast_ino=1`: inode numbers from readdir. Without it, loading a folder opens every entry of
  the lower layer, and opening a file in osufs fetches it: listing a set would download it.
- `static_nlink`: directories report one link. Without it, listing the root loads every set
  folder to count its subfolders: one network fetch per set, and EIO offline.
- `noxattrs=1`: extended attributes answer ENOSYS, which the kernel remembers. Wine asks for
  `user.DOSATTRIB` on every stat; with xattrs on, each ask is a round trip through
  fuse-overlayfs (`ls -l` of the root: 19 s instead of 0.9 s).
- `noacl`: no POSIX ACL checks (nothing here has ACLs), one getxattr less per permission check.
- `threaded=1`: reads run beside each other, so one cold read does not stall every other
  file. (fuse-overlayfs 1.10 still holds one lock across lookups and opens.)
- `writeback=0`: no kernel writeback cache. Warm re-reads of open files measured 25-70 % slower
  than the read-only mount with it and 4-13 % without; osu!'s few writes go through at once
  instead (and a full disk fails the write() itself, not a later flush).
- Inode numbers and times pass through unchanged: fuse-overlayfs reports the lower layer's
  st_ino (osufs's stable, id-derived numbers, which need 64 bits; it has no `ino32`/`xino`
  options to fold them) until a file is copied up. Ownership needs no squash_to_uid: both
  layers are the user's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from osufs.fs import Operations

log = logging.getLogger(__name__)

TOOL = "fuse-overlayfs"
# fuse-overlayfs 1.10 ignores fsname= and subtype=, so its mounts always show as this type; the
# lower mount's fsname tells osufs's own apart.
OVERLAY_TYPE = "fuse.fuse-overlayfs"
# Loading the root of a 100,000-set library takes fuse-overlayfs a few seconds; allow far more.
START_LIMIT = 300.0
STOP_LIMIT = 15.0
POLL = 0.02
# fuse-overlayfs parses its -o list on "," and splits lowerdir on ":".
_UNSAFE = (",", ":")
_NOISE = ("unknown argument ignored: lazytime",)


class OverlayError(Exception):
    """The writable layer cannot start or stop; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    """Where each part of a writable mount lives."""

    mountpoint: Path
    writable: Path
    upper: Path
    work: Path
    lower: Path

    @property
    def lower_fsname(self) -> str:
        return lower_fsname(self.mountpoint)


def mount_key(mountpoint: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:16]


def lower_fsname(mountpoint: Path) -> str:
    """The lower mount's fsname, by which `osufs umount` finds it wherever it is."""
    return f"osufs-lower-{mount_key(mountpoint)}"


def runtime_base() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return Path(runtime) / "osufs"
    return Path(tempfile.gettempdir()) / f"osufs-{os.getuid()}"


def _private_dir(path: Path) -> None:
    """Create path with mode 0700, or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OverlayError(f"{path} is not a directory of yours; remove it and mount again")
    if info.st_mode & 0o077:
        path.chmod(0o700)


def find_tool() -> str:
    tool = shutil.which(TOOL)
    if tool is None:
        raise OverlayError(
            f"--writable needs {TOOL}, which is not installed: install the {TOOL} package "
            f"(sudo apt install {TOOL})"
        )
    return tool


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def plan(mountpoint: Path, writable: Path) -> Layout:
    """Check the paths and create the directories; mounts nothing."""
    mountpoint = Path(os.path.realpath(mountpoint))
    writable = Path(os.path.realpath(writable))
    if _inside(writable, mountpoint) or _inside(mountpoint, writable):
        raise OverlayError(
            f"the writable folder {writable} and the mountpoint {mountpoint} must be apart "
            "(neither inside the other)"
        )
    lower = runtime_base() / mount_key(mountpoint)
    for path in (mountpoint, writable, lower):
        if any(mark in str(path) for mark in _UNSAFE):
            raise OverlayError(f"{path}: fuse-overlayfs cannot take a path with ',' or ':'")
    layout = Layout(mountpoint, writable, writable / "upper", writable / "work", lower)
    for path in (layout.writable, layout.upper, layout.work):
        path.mkdir(parents=True, exist_ok=True)
    _private_dir(lower.parent)
    lower.mkdir(mode=0o700, exist_ok=True)
    return layout


# mounts


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


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
    return entry is not None and entry.fstype == OVERLAY_TYPE


def lower_mounts(mountpoint: Path) -> list[MountEntry]:
    fsname = lower_fsname(mountpoint)
    return [entry for entry in mounts() if entry.source == fsname]


def fusermount(path: str | Path, *, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise OverlayError("fusermount3 not found; install the fuse3 package")
    command = [tool, "-u", *(["-z"] if lazy else []), str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def clear_stale(layout: Layout) -> None:
    """Refuse a mountpoint in use; lazily unmount a lower layer a killed mount left behind."""
    if mounted_at(layout.mountpoint) is not None:
        raise OverlayError(f"{layout.mountpoint} is already mounted; osufs umount it first")
    for entry in lower_mounts(layout.mountpoint):
        log.warning("unmounting the lower layer a previous mount left at %s", entry.mountpoint)
        fusermount(entry.mountpoint, lazy=True)


def wait_for_lower(mountpoint: Path, limit: float = STOP_LIMIT) -> bool:
    """After the overlay is unmounted its osufs process unmounts the lower layer; wait for
    that, and unmount it ourselves if that process is gone. True if something was left."""
    deadline = time.monotonic() + limit
    while lower_mounts(mountpoint):
        if time.monotonic() > deadline:
            for entry in lower_mounts(mountpoint):
                fusermount(entry.mountpoint, lazy=True)
            return True
        time.sleep(0.05)
    return False


# the lower layer's tree


class LowerOperations(Operations):
    """The library as fuse-overlayfs's lower layer: the same tree, with the owner's write bit.

    fuse-overlayfs mounts with default_permissions and copies a folder's mode up with it, so a
    set folder shown as 0555 could never take a new file, nor a 0444 file be overwritten, by
    its owner (root alone ignores modes). Nothing is ever written here: fuse-overlayfs only
    reads this layer, the mount is read-only, and every write still answers EROFS.
    """

    def _attributes(
        self, inode: int, mode: int, size: int, mtime_ns: int
    ) -> pyfuse3.EntryAttributes:
        if not stat.S_ISLNK(mode):
            mode |= stat.S_IWUSR
        return super()._attributes(inode, mode, size, mtime_ns)


# the fuse-overlayfs process


def overlay_options(layout: Layout, allow_other: bool) -> str:
    options = [
        f"lowerdir={layout.lower}",
        f"upperdir={layout.upper}",
        f"workdir={layout.work}",
        "fast_ino=1",
        "static_nlink",
        "noxattrs=1",
        "noacl",
        "threaded=1",
        "writeback=0",
    ]
    if allow_other:
        options.append("allow_other")
    return ",".join(options)


class Overlay:
    """One fuse-overlayfs process over the lower mount: started, watched, stopped."""

    def __init__(self, layout: Layout, *, allow_other: bool = False) -> None:
        self.layout = layout
        self.allow_other = allow_other
        self.tool = find_tool()
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._stopping = False

    def command(self) -> list[str]:
        options = overlay_options(self.layout, self.allow_other)
        return [self.tool, "-f", "-o", options, str(self.layout.mountpoint)]

    async def run(self, on_mounted: Callable[[], None] = lambda: None) -> None:
        """Start fuse-overlayfs, call on_mounted once the overlay is up, and return when the
        process ends (someone unmounted the overlay). Cancelled, it unmounts the overlay."""
        failure: OverlayError | None = None
        async with trio.open_nursery() as nursery:
            process, stderr = self._spawn()
            self._process = process
            try:
                nursery.start_soon(self._forward, stderr)
                try:
                    await self._wait_mounted(process)
                except OverlayError as error:
                    failure = error  # raised outside the nursery, not in an exception group
                else:
                    log.info("writable layer %s mounted at %s", self.layout.upper, self.mountpoint)
                    on_mounted()
                    await _exited(process)
                    if process.returncode and not self._stopping:
                        log.warning("%s exited with %d", TOOL, process.returncode)
                    else:
                        log.info("%s unmounted", self.mountpoint)
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop(process)
        if failure is not None:
            raise failure

    @property
    def mountpoint(self) -> Path:
        return self.layout.mountpoint

    def _spawn(self) -> tuple[subprocess.Popen[bytes], trio.lowlevel.FdStream]:
        """Start fuse-overlayfs from this thread, the one running trio, which lives as long as
        osufs: the death signal set in the child fires when the thread that forked it ends (so
        not trio.lowlevel.open_process, which forks from a worker thread that idles out)."""
        read_end, write_end = os.pipe()
        try:
            process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=write_end,
                preexec_fn=_die_with_parent,
            )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        return process, trio.lowlevel.FdStream(read_end)

    async def _wait_mounted(self, process: subprocess.Popen[bytes]) -> None:
        with trio.move_on_after(START_LIMIT):
            while not is_overlay(mounted_at(self.mountpoint, resolved=True)):
                if process.poll() is not None:
                    await trio.sleep(POLL)  # let the last lines of stderr arrive
                    detail = "; ".join(self._stderr) or "no message"
                    raise OverlayError(f"{TOOL} exited with {process.returncode}: {detail}")
                await trio.sleep(POLL)
            return
        raise OverlayError(f"{TOOL} did not mount {self.mountpoint} in {START_LIMIT:g} s")

    async def _forward(self, stream: trio.lowlevel.FdStream) -> None:
        """fuse-overlayfs's messages into the log, the last few kept for an error."""
        pending = b""
        async with stream:
            async for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._note(raw.decode(errors="replace").strip())
        self._note(pending.decode(errors="replace").strip())

    def _note(self, line: str) -> None:
        if not line:
            return
        if line in _NOISE:
            log.debug("%s: %s", TOOL, line)
            return
        self._stderr.append(line)
        log.warning("%s: %s", TOOL, line)

    def terminate(self) -> None:
        """Ask fuse-overlayfs to unmount and exit (it unmounts lazily, like fusermount -z)."""
        process = self._process
        if process is not None and process.poll() is None:
            self._stopping = True
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)

    async def _stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            self._stopping = True
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_LIMIT):
                await _exited(process)
            if process.poll() is None:
                log.warning("%s did not stop; killing it", TOOL)
                process.kill()
                await _exited(process)
        if is_overlay(mounted_at(self.mountpoint, resolved=True)):
            # It died without unmounting: detach what is left so the mountpoint is usable.
            result = await trio.to_thread.run_sync(lambda: fusermount(self.mountpoint, lazy=True))
            if result.returncode != 0:
                log.warning("could not unmount %s: %s", self.mountpoint, result.stderr.strip())


async def _exited(process: subprocess.Popen[bytes]) -> None:
    """Wait for the process to end without blocking trio: on its pidfd, or by polling."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # before Linux 5.3; or it is already reaped
        while process.poll() is None:
            await trio.sleep(0.1)
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        trio.lowlevel.notify_closing(pidfd)
        os.close(pidfd)
    process.wait()


_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux's libc: the overlay then outlives a killed osufs
    _prctl = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when osufs dies, even by SIGKILL, so fuse-overlayfs
    unmounts itself instead of serving a dead lower layer (the next mount clears that one)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def unmount(mountpoint: Path) -> None:
    """`osufs umount` for either form: the overlay, then (by its own process, or here if that
    process is gone) the lower layer."""
    entry = mounted_at(mountpoint)
    if entry is None and lower_mounts(mountpoint):
        wait_for_lower(mountpoint, limit=0)  # only a killed mount's lower layer is left
        return
    writable = is_overlay(entry)
    result = fusermount(mountpoint)
    if result.returncode != 0:
        message = result.stderr.strip() or "unmount failed"
        if "busy" in message.lower():
            message += " (a program still has files open in it)"
        raise OverlayError(message)
    if writable and wait_for_lower(mountpoint):
        log.warning("the lower layer of %s was left mounted; unmounted it", mountpoint)


__all__ = [
    "LowerOperations",
    "Overlay",
    "OverlayError",
    "clear_stale",
    "plan",
    "unmount",
]
