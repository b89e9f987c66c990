#!/usr/bin/env python3
"""Benchmark (issues 9, 16): osu!'s Songs scan through osufs, cold and warm, read-only and
writable, with and without opening the audio and backgrounds.

Builds (or reuses) a library of --sets sample sets, serves it with `osufs serve` behind a
per-request latency, a per-response bandwidth and a link all answers share, and for each scan
shape (`osu`: stat every file and read every .osu; `media`: also 64 KiB at each audio's
PreviewTime and every background whole) and each mode (the read-only mount, then `--writable`
with each --engines overlay) runs `scripts/songs_scan.py`'s scan --cold-runs times, each over a
fresh mount and empty cache, then --runs times warm on the last mount. Prints medians: seconds
with their split between listing (readdir, stat), .osu reads and the rest (audio, images),
files, bytes read and bytes the server sent; and each mode's warm scan against the read-only
mount's.

    .venv/bin/python scripts/bench_songs.py [--sets 300] [--engines kernel,fuse-overlayfs]
        [--shapes osu,media] [--cold-runs 1] [--latency 0.02] [--bandwidth 5000000]
        [--link 12500000] [--runs 3] [--workdir DIR]

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


def line(mode: str, what: str, reports: list[ScanReport]) -> str:
    """The median scan of `reports` (by time), its split, and every run's time."""
    report = sorted(reports, key=lambda r: r.seconds)[len(reports) // 2]
    sent = "-" if report.bytes_sent is None else f"{report.bytes_sent / 1e6:,.1f} MB"
    errors = sum(len(r.errors) for r in reports)
    rest = report.seconds - report.listing_seconds - report.osu_seconds
    runs = f" (runs {', '.join(f'{r.seconds:.2f}' for r in reports)})" if len(reports) > 1 else ""
    return (
        f"{mode:<15} {what:<11} {report.seconds:>7.2f} s = listing {report.listing_seconds:5.2f}"
        f" + .osu {report.osu_seconds:5.2f} + rest {rest:5.2f}; {report.sets} sets "
        f"{report.files} files {report.bytes_read / 1e6:,.1f} MB read {sent} sent"
        f"{f', {errors} errors' if errors else ''}{runs}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=300)
    parser.add_argument("--engines", default="kernel,fuse-overlayfs", help="overlays to compare")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds a request [0.02]")
    parser.add_argument("--bandwidth", type=int, default=5_000_000, help="bytes/s an answer")
    parser.add_argument("--link", type=int, default=12_500_000, help="bytes/s all answers share")
    parser.add_argument("--runs", type=int, default=3, help="warm scans (median reported)")
    parser.add_argument("--cold-runs", type=int, default=1, help="cold scans, each a fresh mount")
    parser.add_argument("--shapes", default="osu,media", help="scan shapes: osu, media")
    parser.add_argument("--workdir", type=Path, help="where to work [a new temp directory]")
    args = parser.parse_args()

    work = (args.workdir or Path(tempfile.mkdtemp(prefix="osufs-songs-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    build_library(work / "archives", args.sets)
    shaping = ["--latency", str(args.latency), "--bandwidth", str(args.bandwidth)]
    server = Server(work / "archives", work / "server.log", *shaping, "--link", str(args.link))
    rows: list[str] = []
    warm: dict[str, float] = {}
    modes = ["read-only", *filter(None, args.engines.split(","))]
    try:
        for shape in args.shapes.split(","):
            media = {"osu": False, "media": True}[shape]
            for mode in modes:
                colds: list[ScanReport] = []
                warms: list[ScanReport] = []
                for run in range(args.cold_runs):
                    with songs_mount(work, server, mode) as mount:
                        colds.append(scan(mount.mountpoint, server.url, media=media))
                        if run < args.cold_runs - 1:
                            continue
                        warms = [
                            scan(mount.mountpoint, server.url, media=media)
                            for _ in range(args.runs)
                        ]
                rows.append(line(mode, f"{shape} cold", colds))
                print(rows[-1], flush=True)
                if warms:
                    rows.append(line(mode, f"{shape} warm", warms))
                    print(rows[-1], flush=True)
                    warm[f"{shape} {mode}"] = statistics.median(r.seconds for r in warms)
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
    for key, seconds in warm.items():
        shape, mode = key.split(" ", 1)
        if mode != "read-only":
            ratio = seconds / warm[f"{shape} read-only"]
            print(f"warm {shape} scan {mode} / read-only: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
