"""Running the real server and the real mount as subprocesses, as a user would."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from osufs.fetch.handles import LEASE
from osufs.fs import NO_OPEN

SHARED = Path(os.environ.get("OSUFS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CORPUS = SHARED / "corpus"
REAL_ARCHIVES = sorted((CORPUS / "real").glob("*.osz"))
STARTUP = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def osufs_command(*args: str, module: str = "osufs", python: str = sys.executable) -> list[str]:
    return [python, "-m", module, *args]


def reads_reach_the_mount(folder: Path) -> None:
    """Make the next reads under folder reach the mount, as every open did before the no-open
    mode (osufs/fs.py): drop their pages from the page cache, and let the mount's leases on
    them end (osufs/fetch/handles.py). A no-op with pyfuse3 as released."""
    if not NO_OPEN:
        return
    drop_pages(folder)
    time.sleep(LEASE * 1.25 + 0.25)


def drop_pages(folder: Path) -> None:
    """Forget every file's pages, so the next reads reach the mount."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class Server:
    """`osufs serve` on loopback, in its own process."""

    def __init__(self, folder: Path, log_path: Path, *extra: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            osufs_command("serve", str(folder), "--port", str(self.port), *extra),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"osufs serve exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.url}/_stats", timeout=1).raise_for_status()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("osufs serve did not start")
            time.sleep(0.05)

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/_stats", timeout=5).json()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class Mount:
    """`osufs mount --foreground` in its own process; always unmounted and killed at the end."""

    def __init__(
        self,
        mountpoint: Path,
        cache_dir: Path,
        log_path: Path,
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "osufs",
        python: str = sys.executable,
    ) -> None:
        self.mountpoint = mountpoint
        self.log_path = log_path
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in unmount()
        self.process = subprocess.Popen(
            osufs_command(
                "mount",
                str(mountpoint),
                "--foreground",
                "--cache-dir",
                str(cache_dir),
                *args,
                module=module,
                python=python,
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + STARTUP
        while not os.path.ismount(mountpoint):
            if self.process.poll() is not None:
                self._log.close()
                raise RuntimeError(f"mount exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.unmount()
                raise RuntimeError(f"mount did not come up:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unmount(self) -> None:
        """Unmount cleanly; if that fails, lazily, then kill the process."""
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            self.process.kill()
            self.process.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        if not self._log.closed:
            self._log.close()


def mounted_from(
    server: Server, tmp_path: Path, *args: str
) -> contextlib.AbstractContextManager[Mount]:
    """The usual test mount: `server` as the one Hexide source, everything under tmp_path."""
    return mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"hexide={server.url}",
        *args,
    )


@contextlib.contextmanager
def mounted(
    mountpoint: Path,
    cache_dir: Path,
    log_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    module: str = "osufs",
    python: str = sys.executable,
) -> Iterator[Mount]:
    mount = Mount(mountpoint, cache_dir, log_path, *args, env=env, module=module, python=python)
    try:
        yield mount
    finally:
        mount.unmount()


class ThreadedApp:
    """An ASGI app served by hypercorn on loopback from a thread with its own trio loop."""

    def __init__(self, app: object) -> None:
        import threading

        import trio

        from osufs.server import serve_app

        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

        async def run() -> None:
            with trio.CancelScope() as scope:
                self._scope = scope
                self._token = trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    self.port = await nursery.start(serve_app, app, "127.0.0.1", 0)
                    self._ready.set()

        self._thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
        self._thread.start()
        if not self._ready.wait(STARTUP):
            raise RuntimeError("test server did not start")
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        import trio

        if self._token is not None and self._scope is not None:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(10)
