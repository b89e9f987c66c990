"""A real S3 server on loopback: a one-node Ceph cluster (monitor, memstore OSD, radosgw).

Started in a temporary directory from Debian's packages (`scripts/setup.sh` installs them):
no authentication inside the cluster, pool size 1, the beast frontend on 127.0.0.1, and one
S3 user with random keys. Every daemon is a child process run in the foreground, so `stop()`
ends them all and removes the directory, whatever happened.
"""

from __future__ import annotations

import contextlib
import ctypes
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.helpers import free_port

BINARIES = ("monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph")
STARTUP = 120.0
PR_SET_PDEATHSIG = 1

CONFIG = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
osd op num shards = 1
osd op num threads per shard = 2
run dir = {root}/run
admin socket = {root}/run/$name.$pid.asok
log file = {root}/log/$name.log
mon data = {root}/mon/$name
osd data = {root}/osd/$name
crash dir = {root}/crash
[client.rgw]
# tcp_nodelay: without it a small object's body waits for the client's delayed ACK (40 ms a GET)
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw data = {root}/rgw
rgw thread pool size = 16
"""


class Radosgw:
    """One monitor, one memstore OSD and one radosgw, all on loopback, in `root`."""

    def __init__(self, root: Path, memstore_bytes: int = 2 << 30) -> None:
        missing = [name for name in BINARIES if shutil.which(name) is None]
        if missing:
            raise RuntimeError(f"{', '.join(missing)} not installed: run scripts/setup.sh")
        self.root = root
        self.memstore_bytes = memstore_bytes
        self.conf = root / "ceph.conf"
        self.rgw_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.rgw_port}"
        self.access_key = "OSUFSTEST" + secrets.token_hex(6).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self._daemons: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        """Make the cluster and its S3 user; the daemons run until stop()."""
        root = self.root
        for folder in ("run", "log", "mon/mon.a", "osd/osd.0", "rgw", "crash"):
            (root / folder).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        mon_port = free_port()
        self.conf.write_text(
            CONFIG.format(
                fsid=fsid,
                mon_port=mon_port,
                rgw_port=self.rgw_port,
                root=root,
                memstore_bytes=self.memstore_bytes,
            )
        )
        monmap = root / "monmap"
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{mon_port}]",
                  "--fsid", fsid, str(monmap))
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._start("mon.a", "ceph-mon", "-i", "a")
        self._run("ceph", "--connect-timeout", "60", "osd", "create")
        self._run("ceph-osd", "-i", "0", "--mkfs")
        self._start("osd.0", "ceph-osd", "-i", "0")
        self.start_gateway()
        self._run("radosgw-admin", "user", "create", "--uid", "osufs-test",
                  "--display-name", "osufs tests", "--access-key", self.access_key,
                  "--secret", self.secret_key)

    def _run(self, *command: str) -> str:
        done = subprocess.run(
            [command[0], "-c", str(self.conf), *command[1:]],
            capture_output=True,
            timeout=STARTUP,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode()

    def _start(self, name: str, *command: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
        with log:
            self._daemons[name] = subprocess.Popen(
                [command[0], "-f", "-c", str(self.conf), *command[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def start_gateway(self) -> None:
        """Start radosgw and wait until it answers HTTP."""
        self._start("rgw", "radosgw", "-n", "client.rgw")
        deadline = time.monotonic() + STARTUP
        while True:
            if self._daemons["rgw"].poll() is not None:
                raise RuntimeError(f"radosgw exited: see {self.root / 'log'}")
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.endpoint, timeout=2)
                return
            if time.monotonic() > deadline:
                raise RuntimeError("radosgw did not start")
            time.sleep(0.2)

    def stop_gateway(self) -> None:
        """Stop radosgw (the cluster stays): the bucket is down."""
        _stop(self._daemons.pop("rgw"))

    def stop(self) -> None:
        for name in ("rgw", "osd.0", "mon.a"):
            daemon = self._daemons.pop(name, None)
            if daemon is not None:
                _stop(daemon)
        shutil.rmtree(self.root, ignore_errors=True)


def _die_with_parent() -> None:
    """Linux ends the daemon if the test process dies without stopping it (a kill -9)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.terminate()
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@contextlib.contextmanager
def radosgw() -> Iterator[Radosgw]:
    """A running cluster, always stopped and removed afterwards."""
    gateway = Radosgw(Path(tempfile.mkdtemp(prefix="osufs-rgw-")))
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()
