#!/usr/bin/env python3
"""How fast the kernel serves a warm FUSE file, whatever the daemon (issue 7).

    .venv/bin/python scripts/fuse_read_floor.py [--mib 100] [--runs 7] [--workdir DIR]

Mounts a minimal pyfuse3 file system (one file backed by a native file, opened with keep_cache
and day-long timeouts as osufs does) and reads the file sequentially in 1 MiB chunks, natively
and through the mount, back to back. Prints the speeds, the requests that reached the daemon,
and (as root) how each copy sits in the page cache: how many pages belong to large folios
(/proc/self/pagemap and /proc/kpageflags). The mount is always unmounted in `finally`.
"""

from __future__ import annotations

import argparse
import collections
import errno
import mmap
import os
import shutil
import stat
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHUNK = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL = 15, 16


def serve(mountpoint: str, source: str) -> None:
    """The daemon: one file, `file`, read with pread; prints its request counts at exit."""
    import pyfuse3
    import trio

    counts: collections.Counter[str] = collections.Counter()
    size = os.stat(source).st_size

    class Operations(pyfuse3.Operations):
        def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
            attrs = pyfuse3.EntryAttributes()
            attrs.st_ino = inode
            if inode == pyfuse3.ROOT_INODE:
                attrs.st_mode, attrs.st_nlink = stat.S_IFDIR | 0o555, 2
            else:
                attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFREG | 0o444, 1, size
            attrs.st_blksize = 4096
            attrs.entry_timeout = attrs.attr_timeout = 86400.0
            return attrs

        async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
            counts["getattr"] += 1
            return self._attributes(inode)

        async def lookup(
            self, parent: int, name: bytes, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.EntryAttributes:
            counts["lookup"] += 1
            if parent == pyfuse3.ROOT_INODE and name == b"file":
                return self._attributes(2)
            raise pyfuse3.FUSEError(errno.ENOENT)

        async def open(
            self, inode: int, flags: int, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.FileInfo:
            counts["open"] += 1
            return pyfuse3.FileInfo(fh=os.open(source, os.O_RDONLY), keep_cache=True)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            counts["read"] += 1
            counts["largest read"] = max(counts["largest read"], size)
            return os.pread(fh, size, off)

        async def release(self, fh: int) -> None:
            os.close(fh)

    options = set(pyfuse3.default_options) | {"fsname=readfloor", "subtype=readfloor", "ro"}
    pyfuse3.init(Operations(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        print(dict(counts), flush=True)


def read_through(path: Path) -> int:
    buffer = bytearray(CHUNK)
    total = 0
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            total += count
    return total


def timed_runs(path: Path, runs: int) -> list[float]:
    read_through(path)  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        read_through(path)
        times.append(time.perf_counter() - started)
    return times


def folios(path: Path) -> str:
    """How the file's cached pages sit: in large folios or alone (needs root for kpageflags)."""
    try:
        pagemap = open("/proc/self/pagemap", "rb")  # noqa: SIM115 - closed below
        kpageflags = open("/proc/kpageflags", "rb")  # noqa: SIM115 - closed below
    except OSError as error:
        return f"unknown ({error.strerror})"
    size = path.stat().st_size
    with pagemap, kpageflags, open(path, "rb") as file:
        mapped = mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ)
        try:
            for offset in range(0, size, PAGE):
                mapped[offset]  # fault in: maps the folios already cached
            base = mapping_address(path)
            large = alone = 0
            for page in range(size // PAGE):
                pagemap.seek((base // PAGE + page) * 8)
                (entry,) = struct.unpack("Q", pagemap.read(8))
                if not entry >> 63:
                    continue  # not present
                kpageflags.seek((entry & ((1 << 55) - 1)) * 8)
                (flags,) = struct.unpack("Q", kpageflags.read(8))
                if flags >> KPF_COMPOUND_HEAD & 1 or flags >> KPF_COMPOUND_TAIL & 1:
                    large += 1
                else:
                    alone += 1
        finally:
            mapped.close()
    return f"{large} pages in large folios, {alone} in 4 KiB folios"


def mapping_address(path: Path) -> int:
    target = str(path.resolve())
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip() == target:
                return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{path} is not mapped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100, help="size of the file")
    parser.add_argument("--runs", type=int, default=7, help="timed runs after a warming one")
    parser.add_argument("--workdir", type=Path, help="where to build (a temporary dir inside)")
    parser.add_argument("--serve", nargs=2, metavar=("MOUNTPOINT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0

    work = Path(tempfile.mkdtemp(prefix="osufs-readfloor-", dir=args.workdir))
    native, mountpoint = work / "file", work / "mnt"
    mountpoint.mkdir()
    with open(native, "wb") as file:
        for _ in range(args.mib):
            file.write(os.urandom(CHUNK))
    daemon = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(mountpoint), str(native)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the minimal file system did not mount")
            time.sleep(0.02)
        through = mountpoint / "file"
        results = {}
        for label, path in (("native", native), ("FUSE", through)) * 2:
            results.setdefault(label, []).extend(timed_runs(path, args.runs))
        cached = {label: folios(path) for label, path in (("native", native), ("FUSE", through))}
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        try:
            counts, _ = daemon.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
            daemon.kill()
            counts, _ = daemon.communicate()
        if not os.path.ismount(mountpoint):
            shutil.rmtree(work, ignore_errors=True)

    size = args.mib * CHUNK
    speed = {label: size / statistics.median(times) / 1e6 for label, times in results.items()}
    print(f"Linux {os.uname().release}; {args.mib} MiB, 1 MiB reads, median of {2 * args.runs}")
    for label, times in results.items():
        print(
            f"{label:6}  {speed[label]:6,.0f} MB/s  runs "
            + ", ".join(f"{t * 1000:.1f}" for t in times)
            + f" ms; page cache: {cached[label]}"
        )
    print(f"FUSE / native: {speed['FUSE'] / speed['native']:.2f}")
    print(f"requests the daemon saw (every run after the first is served by the kernel): {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
