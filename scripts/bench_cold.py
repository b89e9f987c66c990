#!/usr/bin/env python3
"""Benchmark (issue 16): cold reads that start at once.

Three measurements against `osufs serve` on loopback, each over a fresh mount and empty cache,
repeated --runs times (medians printed):

- first MiB: a read of the first MiB of a cold 100 MB stored member behind --first-latency and a
  --first-link link; beside it the floor of fetching the whole member first (size / link), and
  the mount's peak memory growth while the whole member streams in;
- preview: a 64 KiB read at PreviewTime (60% in) of a cold 5 MB stored mp3 in a listed set:
  the requests it took at the server (round trips) and its time;
- glob grep: `grep -c '' ROOT/*/*.osu` over --sets cold sample sets behind --latency and a
  --link link, against the naive floor (every archive through the link) and its bytes.

    .venv/bin/python scripts/bench_cold.py [--sets 150] [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from osufs.samples import build_sample_library  # noqa: E402
from tests.helpers import CORPUS, Mount, Server  # noqa: E402
from tests.hostile import Raw, build_zip, osu_text  # noqa: E402

BIG_SET, PREVIEW_SET = 700001, 700002


def peak_memory(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    return 0


def process_cpu(pid: int) -> float:
    """User and system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def media(size: int) -> bytes:
    block = os.urandom(1 << 20)
    return (block * (size // len(block) + 1))[:size]


def build_media_sets(folder: Path) -> dict[int, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    shapes = [(BIG_SET, 100_000_000, b"video.mp4"), (PREVIEW_SET, 5_000_000, b"audio.mp3")]
    for set_id, size, name in shapes:
        data = media(size)
        osu = Raw(b"a (b) [c].osu", osu_text(str(set_id)), method=8)
        members = [osu, Raw(name, data, method=0)]
        (folder / f"{set_id}.osz").write_bytes(build_zip(members))
        made[set_id] = data
    return made


def fresh_mount(work: Path, server: Server, tag: str) -> Mount:
    base = work / tag
    shutil.rmtree(base, ignore_errors=True)
    source = f"hexide={server.url}"
    return Mount(base / "mnt", base / "cache", base / "mount.log", "--source", source)


def set_dir(mountpoint: Path, set_id: int) -> Path:
    return next(p for p in mountpoint.iterdir() if p.name.startswith(f"{set_id} "))


def first_mib(work: Path, args: argparse.Namespace, data: bytes) -> list[str]:
    server = Server(work / "media", work / "server-media.log", "--latency", str(args.first_latency),
                    "--link", str(args.first_link))  # fmt: skip
    times, sents, memories = [], [], []
    try:
        for run in range(args.runs):
            mount = fresh_mount(work, server, f"first-{run}")
            try:
                path = set_dir(mount.mountpoint, BIG_SET) / "video.mp4"
                path.stat()  # the listing, not timed
                memory = peak_memory(mount.process.pid)
                before = server.stats()["bytes_sent"]
                began = time.perf_counter()
                with open(path, "rb") as file:
                    head = file.read(1 << 20)
                    times.append(time.perf_counter() - began)
                    sents.append(server.stats()["bytes_sent"] - before)
                    assert head == data[: 1 << 20]
                    while file.read(1 << 20):
                        pass
                memories.append(peak_memory(mount.process.pid) - memory)
            finally:
                mount.unmount()
    finally:
        server.stop()
    floor = len(data) / args.first_link + args.first_latency
    return [
        f"first MiB of a cold {len(data) / 1e6:.0f} MB stored member, "
        f"{args.first_latency * 1000:g} ms, {args.first_link / 1e6:g} MB/s link:",
        f"  osufs {statistics.median(times):.3f} s (runs {', '.join(f'{t:.3f}' for t in times)}); "
        f"sent when it returned {statistics.median(sents) / 1e6:.1f} MB; target <= 0.2 s",
        f"  whole member first (before: the floor) {floor:.2f} s; "
        f"ratio {floor / statistics.median(times):.1f}x",
        f"  mount peak memory growth while the whole member streamed: "
        f"{max(memories) / 2**20:.1f} MiB (target <= 64 MiB)",
    ]


def preview(work: Path, args: argparse.Namespace, data: bytes) -> list[str]:
    server = Server(work / "media", work / "server-preview.log", "--latency", str(args.latency),
                    "--link", str(args.link))  # fmt: skip
    requests, times, sents = [], [], []
    try:
        for run in range(args.runs):
            mount = fresh_mount(work, server, f"preview-{run}")
            try:
                path = set_dir(mount.mountpoint, PREVIEW_SET) / "audio.mp3"
                path.stat()
                at = int(len(data) * 0.6)
                before = server.stats()
                began = time.perf_counter()
                with open(path, "rb") as file:
                    file.seek(at)
                    got = file.read(64 << 10)
                times.append(time.perf_counter() - began)
                after = server.stats()
                assert got == data[at : at + (64 << 10)]
                requests.append(after["requests"] - before["requests"])
                sents.append(after["bytes_sent"] - before["bytes_sent"])
            finally:
                mount.unmount()
    finally:
        server.stop()
    return [
        f"64 KiB at PreviewTime (60%) of a cold {len(data) / 1e6:.0f} MB stored mp3, "
        f"{args.latency * 1000:g} ms, {args.link / 1e6:g} MB/s link:",
        f"  requests {statistics.median(requests):g} (side by side: header + range; target <= 2), "
        f"{statistics.median(times):.3f} s, {statistics.median(sents) / 1e6:.2f} MB sent by then",
    ]


def glob_grep(work: Path, args: argparse.Namespace) -> list[str]:
    library = work / "library"
    stamp = library / "params.json"
    params = {"sets": args.sets, "seed": 0}
    if not stamp.exists() or json.loads(stamp.read_text()) != params:
        shutil.rmtree(library, ignore_errors=True)
        build_sample_library(library, args.sets, seed=0, audio_size=2_500_000,
                             osu_corpus=CORPUS / "osu")  # fmt: skip
        stamp.write_text(json.dumps(params))
    total = sum(p.stat().st_size for p in library.glob("*.osz"))
    server = Server(library, work / "server-grep.log", "--latency", str(args.latency),
                    "--link", str(args.link))  # fmt: skip
    times, globs, sents, requests, peaks, cpus = [], [], [], [], [], []
    # `grep -c '' ROOT/*/*.osu`, with the time the glob's expansion ended told on stderr.
    script = 'files=("$0"/*/*.osu); echo "$EPOCHREALTIME" >&2; exec grep -c "" "${files[@]}"'
    try:
        for run in range(args.runs):
            mount = fresh_mount(work, server, f"grep-{run}")
            try:
                before = server.stats()
                cpu = process_cpu(mount.process.pid) + process_cpu(server.pid)
                began = time.time()
                done = subprocess.run(
                    ["bash", "-c", script, str(mount.mountpoint)], capture_output=True, text=True
                )
                times.append(time.time() - began)
                cpus.append(process_cpu(mount.process.pid) + process_cpu(server.pid) - cpu)
                after = server.stats()
                assert done.returncode == 0, done.stderr
                globs.append(float(done.stderr.split()[-1].replace(",", ".")) - began)
                sents.append(after["bytes_sent"] - before["bytes_sent"])
                requests.append(after["requests"] - before["requests"])
                peaks.append(after["peak_in_flight"])
            finally:
                mount.unmount()
    finally:
        server.stop()
    floor = total / args.link
    took = statistics.median(times)
    return [
        f"cold grep -c '' ROOT/*/*.osu over {args.sets} sets ({total / 1e6:.0f} MB of archives), "
        f"{args.latency * 1000:g} ms, {args.link / 1e6:g} MB/s link:",
        f"  osufs {took:.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}; the glob "
        f"{statistics.median(globs):.2f} s of it), "
        f"{statistics.median(sents) / 1e6:.1f} MB, {statistics.median(requests):g} requests, "
        f"{max(peaks)} at once at most; CPU of the mount and the server "
        f"{statistics.median(cpus):.2f} s",
        f"  naive floor (every archive through the link) {floor:.1f} s: {floor / took:.1f}x "
        f"(target >= 15x); bytes {statistics.median(sents) / total:.2%} of the archives "
        "(target <= 2%)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=150)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds a request")
    parser.add_argument("--link", type=int, default=12_000_000, help="bytes/s all answers share")
    parser.add_argument("--first-latency", type=float, default=0.02)
    parser.add_argument("--first-link", type=int, default=50_000_000)
    parser.add_argument("--only", choices=["first", "preview", "grep"])
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="osufs-cold-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    try:
        media_data = build_media_sets(work / "media") if args.only != "grep" else {}
        if args.only in (None, "first"):
            rows += first_mib(work, args, media_data[BIG_SET])
            print(*rows[-4:], sep="\n", flush=True)
        if args.only in (None, "preview"):
            rows += preview(work, args, media_data[PREVIEW_SET])
            print(*rows[-2:], sep="\n", flush=True)
        if args.only in (None, "grep"):
            rows += glob_grep(work, args)
            print(*rows[-3:], sep="\n", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    print()
    now = datetime.datetime.now(datetime.UTC)
    print(f"cold reads, {now:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores (shared), "
          f"Linux {platform.release()}; load at the end {load}")  # fmt: skip
    print(*rows, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
