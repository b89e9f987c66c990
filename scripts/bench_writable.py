#!/usr/bin/env python3
"""What the writable layer costs, by each engine: start time over a large index, and warm
reads of untouched files through the writable mount against the read-only mount, in one run.

The forms: `read-only` (no --writable), `kernel` (--writable --overlay kernel, the kernel's
overlayfs; needs root) and `fuse-overlayfs` (--writable --overlay fuse-overlayfs); a form that
cannot mount here is left out and said so.

1. Builds the demo library (36 sets), serves it on loopback, and reads all of it once through
   a read-only mount, so every file is cached.
2. Adds --sets synthetic sets (default 100,000) to the index directly (Store.catalogue_add with
   names.set_folder_name), as a full set list would.
3. Start time: `osufs mount --offline` until the mount appears (fuse-overlayfs loads the whole
   root as it starts; the kernel's overlayfs loads nothing), then the first scan of the root:
   every entry listed and stated, as osu! does at start. --starts times each, alternating.
4. Warm reads: every form mounted side by side over the same cache; after a warm-up pass,
   --passes passes each, alternating, of (a) every file of the 36 sets opened, read whole and
   closed, (b) every file opened and its first 64 KiB read, (c) the files of 100 KB or more
   opened once and read whole 20 times (the read path alone, without opens). Best and median.
   (Pausing between passes was tried: on a VM it slows every form twofold, so passes run back
   to back, each paying for the releases the previous one queued, as a real scan would.)

The machine's load average is printed before and after: other work on a shared machine moves
every figure, and alternating passes spread that over the forms alike.

    scripts/bench_writable.py [--sets 100000] [--starts 3] [--passes 15] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx

from osufs import overlay
from osufs.names import set_folder_name
from osufs.overlay import kernel
from osufs.samples import build_sample_library
from osufs.store import CatalogueRecord, Store

DEMO_SETS = 36
FIRST_DEMO = 100001
FIRST_SYNTHETIC = 10_000_001
HEAD = 64 << 10
BIG = 100_000
REREADS = 20
MOUNT_WAIT = 300.0


def osufs(*args: str) -> list[str]:
    return [sys.executable, "-m", "osufs", *args]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mounted:
    """One `osufs mount --foreground` process; start time measured to the mount appearing."""

    def __init__(self, mountpoint: Path, log: Path, *args: str, env: dict[str, str]) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        started = time.monotonic()
        self.process = subprocess.Popen(
            osufs("mount", str(mountpoint), "--foreground", *args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        while overlay.mounted_at(mountpoint) is None:
            if self.process.poll() is not None or time.monotonic() - started > MOUNT_WAIT:
                self.stop()
                raise RuntimeError(f"the mount did not start; see {log}")
            time.sleep(0.01)
        self.start_seconds = time.monotonic() - started

    def stop(self) -> None:
        if overlay.mounted_at(self.mountpoint) is not None:
            overlay.fusermount(self.mountpoint)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for entry in [overlay.mounted_at(self.mountpoint), *overlay.lower_mounts(self.mountpoint)]:
            if entry is not None:
                overlay.fusermount(entry.mountpoint, lazy=True)
        self._log.close()


@contextlib.contextmanager
def mounted(mountpoint: Path, log: Path, *args: str, env: dict[str, str]) -> Iterator[Mounted]:
    mount = Mounted(mountpoint, log, *args, env=env)
    try:
        yield mount
    finally:
        mount.stop()


def demo_files(root: Path) -> list[Path]:
    files = []
    for name in sorted(os.listdir(root)):
        if FIRST_DEMO <= int(name.split(" ", 1)[0]) < FIRST_DEMO + DEMO_SETS:
            for dirpath, _dirs, names in os.walk(root / name):
                files += [Path(dirpath) / n for n in sorted(names)]
    return files


def read_whole(files: list[Path]) -> int:
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as file:
            while chunk := file.read(1 << 20):
                total += len(chunk)
    return total


def read_heads(files: list[Path]) -> int:
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as file:
            total += len(file.read(HEAD))
    return total


def reread_big(files: list[Path]) -> int:
    total = 0
    for path in files:
        if path.stat().st_size < BIG:
            continue
        with open(path, "rb", buffering=0) as file:
            for _ in range(REREADS):
                file.seek(0)
                while chunk := file.read(1 << 20):
                    total += len(chunk)
    return total


def scan_root(root: Path) -> int:
    count = 0
    with os.scandir(root) as entries:
        for entry in entries:
            entry.stat(follow_symlinks=False)
            count += 1
    return count


def timed(work: Callable[[], int]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def fill_cache(work: Path, cache: Path, env: dict[str, str]) -> None:
    archives = work / "archives"
    build_sample_library(archives, count=DEMO_SETS)
    port = free_port()
    with open(work / "serve.log", "ab") as log:
        server = subprocess.Popen(
            osufs("serve", str(archives), "--port", str(port)), stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=1).raise_for_status()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("osufs serve did not start")
            time.sleep(0.05)
        source = ("--source", f"hexide=http://127.0.0.1:{port}", "--cache-dir", str(cache))
        with mounted(work / "fill", work / "fill.log", *source, env=env) as mount:
            read_whole(demo_files(mount.mountpoint))
    finally:
        server.terminate()
        server.wait(10)


def add_synthetic_sets(cache: Path, count: int) -> None:
    store = Store(cache)
    try:
        records = []
        for n in range(count):
            set_id = FIRST_SYNTHETIC + n
            folder = set_folder_name(set_id, f"Artist {n % 977}", f"Synthetic title {n}")
            records.append((set_id, CatalogueRecord(folder, 1_600_000_000_000_000_000, "bench")))
        store.catalogue_add(records)
    finally:
        store.close()


def summary(values: list[float]) -> dict[str, float]:
    return {"best": min(values), "median": statistics.median(values)}


def usable_forms() -> dict[str, tuple[str, ...] | None]:
    """Each form's extra mount options; None for a form that cannot mount here."""
    fuse = shutil.which("fuse-overlayfs") is not None
    return {
        "read-only": (),
        "kernel": ("--overlay", "kernel") if kernel.may_mount() else None,
        "fuse-overlayfs": ("--overlay", "fuse-overlayfs") if fuse else None,
    }


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=100_000)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="osufs-bench-writable-"))
    runtime = work / "run"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    cache = work / "cache"
    offline = ("--offline", "--cache-dir", str(cache), "--read-ahead", "0")
    usable = usable_forms()
    forms = {
        form: extra if form == "read-only" else ("--writable", str(work / f"layer-{form}"), *extra)
        for form, extra in usable.items()
        if extra is not None
    }
    results: dict[str, object] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load(),
        "sets": args.sets + DEMO_SETS,
        "left_out": [form for form, extra in usable.items() if extra is None],
    }
    try:
        fill_cache(work, cache, env)
        add_synthetic_sets(cache, args.sets)

        starts: dict[str, list[float]] = {form: [] for form in forms}
        scans: dict[str, list[float]] = {form: [] for form in forms}
        for i in range(args.starts):
            for form, extra in forms.items():
                log = work / f"start-{form}-{i}.log"
                with mounted(work / "mnt", log, *offline, *extra, env=env) as m:
                    starts[form].append(m.start_seconds)
                    scans[form].append(timed(partial(scan_root, m.mountpoint)))
        results["start_seconds"] = {form: summary(v) for form, v in starts.items()}
        results["first_root_scan_seconds"] = {form: summary(v) for form, v in scans.items()}

        with contextlib.ExitStack() as stack:
            files = {}
            for form, extra in forms.items():
                log = work / f"{form}.log"
                m = stack.enter_context(mounted(work / form, log, *offline, *extra, env=env))
                files[form] = demo_files(m.mountpoint)
            size = read_whole(files["read-only"])
            for form in forms:
                assert len(files[form]) == len(files["read-only"]), form
                assert read_whole(files[form]) == size, form  # the warm-up pass of each
            workloads = (("whole", read_whole), ("heads", read_heads), ("reread", reread_big))
            reads: dict[str, dict[str, list[float]]] = {kind: {} for kind, _ in workloads}
            for _ in range(args.passes):
                for form in forms:
                    for kind, work_on in workloads:
                        seconds = timed(partial(work_on, files[form]))
                        reads[kind].setdefault(form, []).append(seconds)
        results["files"] = len(files["read-only"])
        results["bytes"] = size
        results["warm_read_seconds"] = {
            kind: {form: summary(v) for form, v in by_form.items()}
            for kind, by_form in reads.items()
        }
        results["over_read_only"] = {
            kind: {
                form: {
                    which: round(by_form[form][which] / by_form["read-only"][which], 3)
                    for which in ("best", "median")
                }
                for form in by_form
                if form != "read-only"
            }
            for kind, by_form in results["warm_read_seconds"].items()
        }
        results["load_after"] = load()
    finally:
        left = [e.mountpoint for e in overlay.mounts() if e.mountpoint.startswith(str(work))]
        if left:
            print(f"still mounted, {work} kept: {left}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{results['when']}; load average before {results['load_before']}")
    print(f"{results['sets']:,} sets; {results['files']} files, {results['bytes']:,} bytes")
    for form in results["left_out"]:
        print(f"{form}: left out (cannot mount here)")
    for label, key in (("start", "start_seconds"), ("root scan", "first_root_scan_seconds")):
        for form, s in results[key].items():
            print(f"{label:9s} {form:14s} best {s['best']:.2f} s, median {s['median']:.2f} s")
    for kind, by_form in results["warm_read_seconds"].items():
        for form, s in by_form.items():
            best, median = s["best"] * 1000, s["median"] * 1000
            print(f"warm {kind:6s} {form:14s} best {best:.1f} ms, median {median:.1f} ms")
        for form, ratio in results["over_read_only"][kind].items():
            print(
                f"warm {kind:6s} {form:14s} / read-only: best {ratio['best']:.3f}, "
                f"median {ratio['median']:.3f}"
            )
    print(f"load average after {results['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
