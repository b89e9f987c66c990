#!/usr/bin/env python3
"""Benchmark (issue 9): osu!'s Songs scan through osufs, cold and warm, read-only and writable.

Builds (or reuses) a library of --sets sample sets, serves it with `osufs serve` behind a
per-request latency, a per-response bandwidth and a link all answers share, and for each mode
(the read-only mount, then `--writable` with each --engines overlay) mounts over an empty cache
and runs `scripts/songs_scan.py`'s scan: once cold, then --runs times warm. Prints, side by side,
sets, files, bytes read, bytes the server sent and seconds, and each mode's warm scan against the
read-only mount's.

    .venv/bin/python scripts/bench_songs.py [--sets 300] [--engines kernel,fuse-overlayfs]
        [--latency 0.02] [--bandwidth 5000000] [--link 12500000] [--runs 3] [--workdir DIR]

Every mount is taken down with `osufs umount` (the overlay, then the library) in `finally`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

from songs_scan import ScanReport, scan  # noqa: E402

from osufs.samples import build_sample_library  # noqa: E402
from tests.helpers import CORPUS, Mount, Server, osufs_command  # noqa: E402


def build_library(archives: Path, sets: int) -> None:
    """Build the library unless the same parameters built it in this folder before."""
    params = {"sets": sets, "seed": 0}
    stamp = archives / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return
    shutil.rmtree(archives, ignore_errors=True)
    build_sample_library(archives, sets, seed=0, audio_size=2_500_000, osu_corpus=CORPUS / "osu")
    stamp.write_text(json.dumps(params))


@contextlib.contextmanager
def songs_mount(work: Path, server: Server, mode: str) -> Iterator[Mount]:
    """A mount over an empty cache: read-only, or writable with the overlay engine `mode`."""
    base = work / mode
    shutil.rmtree(base, ignore_errors=True)
    runtime = base / "run"
    runtime.mkdir(parents=True, mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    extra = [] if mode == "read-only" else ["--writable", str(base / "layer"), "--overlay", mode]
    mountpoint = base / "Songs"
    mount = Mount(
        mountpoint,
        base / "cache",
        base / "mount.log",
        "--source",
        f"hexide={server.url}",
        *extra,
        env=env,
    )
    try:
        yield mount
    finally:
        subprocess.run(
            osufs_command("umount", str(mountpoint)),
            env={**os.environ, **env},
            capture_output=True,
        )
        mount.unmount()


def line(mode: str, what: str, report: ScanReport) -> str:
    sent = "-" if report.bytes_sent is None else f"{report.bytes_sent / 1e6:,.1f} MB"
    errors = f", {len(report.errors)} errors" if report.errors else ""
    return (
        f"{mode:<15} {what:<5} {report.seconds:>8.2f} s {report.sets:>6} sets "
        f"{report.files:>7} files {report.bytes_read / 1e6:>9,.1f} MB read {sent:>11} sent{errors}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=300)
    parser.add_argument("--engines", default="kernel,fuse-overlayfs", help="overlays to compare")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds a request [0.02]")
    parser.add_argument("--bandwidth", type=int, default=5_000_000, help="bytes/s an answer")
    parser.add_argument("--link", type=int, default=12_500_000, help="bytes/s all answers share")
    parser.add_argument("--runs", type=int, default=3, help="warm scans (median reported)")
    parser.add_argument("--workdir", type=Path, help="where to work [a new temp directory]")
    args = parser.parse_args()

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="osufs-songs-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    build_library(work / "archives", args.sets)
    shaping = ["--latency", str(args.latency), "--bandwidth", str(args.bandwidth)]
    server = Server(work / "archives", work / "server.log", *shaping, "--link", str(args.link))
    rows: list[str] = []
    warm: dict[str, float] = {}
    try:
        for mode in ["read-only", *args.engines.split(",")]:
            with songs_mount(work, server, mode) as mount:
                cold = scan(mount.mountpoint, server.url)
                rows.append(line(mode, "cold", cold))
                runs = [scan(mount.mountpoint, server.url) for _ in range(args.runs)]
                median = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
                rows.append(line(mode, "warm", median))
                warm[mode] = statistics.median(r.seconds for r in runs)
            print(rows[-2], rows[-1], sep="\n", flush=True)
    finally:
        server.stop()
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print()
    print(
        f"songs scan, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores, Linux {platform.release()}; load average at the end {load}"
    )
    print(
        f"library: {args.sets} sets; server: {args.latency * 1000:g} ms a request, "
        f"{args.bandwidth / 1e6:g} MB/s an answer, {args.link / 1e6:g} MB/s shared"
    )
    print(*rows, sep="\n")
    for mode, seconds in warm.items():
        if mode != "read-only":
            print(f"warm scan {mode} / read-only: {seconds / warm['read-only']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
