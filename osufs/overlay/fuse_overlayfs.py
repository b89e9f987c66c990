"""fuse-overlayfs as the writable layer's engine: for users who may not mount the kernel's.

It runs as a child process over the lower mount. Its options, each for a reason measured on a
100,000-set index:
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

Its costs, which the kernel's overlayfs does not have: at start it looks up a `.wh.<name>`
whiteout for every root entry (seconds for 100,000 sets), and every open is a second FUSE round
trip, through this process, on top of osufs's own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

import trio

from osufs.overlay.layout import Layout, OverlayError
from osufs.overlay.table import FUSE_OVERLAY_TYPE, fusermount, libc, mounted_at

log = logging.getLogger(__name__)

NAME = TOOL = "fuse-overlayfs"
# Loading the root of a 100,000-set library takes fuse-overlayfs a few seconds; allow far more.
START_LIMIT = 300.0
STOP_LIMIT = 15.0
POLL = 0.02
_NOISE = ("unknown argument ignored: lazytime",)


def find_tool() -> str:
    tool = shutil.which(TOOL)
    if tool is None:
        raise OverlayError(
            f"--writable needs {TOOL}, which is not installed: install the {TOOL} package "
            f"(sudo apt install {TOOL})"
        )
    return tool


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


class FuseOverlay:
    """One fuse-overlayfs process over the lower mount: started, watched, stopped."""

    name = NAME

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
        if self._stopping:
            return
        self.layout.note_engine(NAME)
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
                    log.info(
                        "writable layer %s mounted at %s by %s",
                        self.layout.upper,
                        self.mountpoint,
                        TOOL,
                    )
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
            while not self._mounted():
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

    def _mounted(self) -> bool:
        entry = mounted_at(self.mountpoint, resolved=True)
        return entry is not None and entry.fstype == FUSE_OVERLAY_TYPE

    def terminate(self) -> None:
        """Ask fuse-overlayfs to unmount and exit (it unmounts lazily, like fusermount -z)."""
        self._stopping = True
        process = self._process
        if process is not None and process.poll() is None:
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
        if self._mounted():
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


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when osufs dies, even by SIGKILL, so fuse-overlayfs
    unmounts itself instead of serving a dead lower layer (the next mount clears that one)."""
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
