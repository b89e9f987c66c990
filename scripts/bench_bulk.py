#!/usr/bin/env python3
"""Benchmark (issue 17): the whole ranked library from online.db and the .osu dump.

Generates, in a temporary folder, a synthetic online.db of --sets sets and --osu difficulties,
the data.ppy.sh-style `.tar.bz2` of those `.osu` files and the same tree on native disk, then
measures side by side in one run:

- import: `osufs cache import TARBALL --onlinedb DB` into an empty cache (files a second);
- mount start: from `osufs mount --foreground` to mounted, the first time after the import and
  again (second mount of the same cache);
- root `ls -l`: the mount's against the native tree's (median of --runs; the first mount's is
  also shown);
- cold grep: `grep -rc HitObjects` over every `.osu` of a fresh mount against the native tree;
  the mount has a mirror (`osufs serve` over an empty folder) as its second source, and its
  request count must stay 0;
- memory: the mount daemon's peak RSS (VmHWM) after the grep.

    .venv/bin/python scripts/bench_bulk.py [--sets 60000] [--osu 250000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from osufs.names import set_folder_name  # noqa: E402
from osufs.osufile import parse_osu  # noqa: E402
from tests.bulk import (  # noqa: E402
    DUMP,
    Beatmap,
    synthetic_filename,
    synthetic_osu,
    write_online_db,
)
from tests.helpers import Mount, Server, osufs_command  # noqa: E402

STAMP = "2024-01-01 00:00:00"


def memory(pid: int) -> dict[str, int]:
    """The daemon's VmHWM (peak resident), RssAnon (its own memory) and RssFile (mapped files:
    the index's pages and the libraries, which the kernel may reclaim), in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "RssAnon", "RssFile"):
            found[name] = int(value.split()[0]) << 10
    return found


def generate(work: Path, sets: int, files: int) -> None:
    """online.db, the tarball and the native tree; `files` spread evenly over `sets`."""
    native = work / "native"
    shutil.rmtree(native, ignore_errors=True)
    native.mkdir(parents=True)
    rows = []
    per_set, extra = divmod(files, sets)
    beatmap_id = 1
    tarball = work / f"{DUMP}.tar.bz2"
    with tarfile.open(tarball, "w:bz2", compresslevel=6) as tar:
        for set_id in range(1, sets + 1):
            folder = None
            for level in range(1, per_set + (set_id <= extra) + 1):
                data = synthetic_osu(set_id, beatmap_id, level)
                name = synthetic_filename(data)
                if folder is None:
                    meta = parse_osu(data)
                    folder = native / set_folder_name(set_id, meta.artist, meta.title)
                    folder.mkdir()
                (folder / name).write_bytes(data)
                md5 = hashlib.md5(data).hexdigest()
                rows.append(Beatmap(set_id, beatmap_id, 1, md5, STAMP, name, b""))
                info = tarfile.TarInfo(f"{DUMP}/{beatmap_id}.osu")
                info.size = len(data)
                info.mtime = 1_700_000_000
                with open(folder / name, "rb") as file:
                    tar.addfile(info, file)
                beatmap_id += 1
    write_online_db(work / "online.db", rows)


def timed(command: list[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    return time.perf_counter() - began, done


def start_mount(work: Path, cache: Path, tag: str, *args: str) -> tuple[float, Mount]:
    began = time.perf_counter()
    mount = Mount(work / f"mnt-{tag}", cache, work / f"mount-{tag}.log", *args)
    return time.perf_counter() - began, mount


def ls_root(root: Path) -> tuple[float, int]:
    took, done = timed(["ls", "-l", str(root)], env={**os.environ, "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr
    return took, len(done.stdout.splitlines()) - 1


def cold_grep(
    work: Path, cache: Path, native: Path, server: Server, options: tuple[str, ...],
    mounts: list[Mount],
) -> list[str]:  # fmt: skip
    """grep -rc over every .osu of a fresh mount and of the native tree; the daemon's peak RSS."""
    subprocess.run(["sync"])
    native_grep, done = timed(["grep", "-rc", "HitObjects", str(native)])
    assert done.returncode == 0, done.stderr
    native_files = len(done.stdout.splitlines())
    mount = start_mount(work, cache, "grep", *options)[1]
    mounts.append(mount)
    before = server.stats()["requests"]
    mount_grep, done = timed(["grep", "-rc", "HitObjects", str(mount.mountpoint)])
    assert done.returncode == 0, done.stderr[:2000]
    requests = server.stats()["requests"] - before
    grepped = len(done.stdout.splitlines())
    held = memory(mount.process.pid)
    mount.unmount()
    return [
        f"cold grep -rc over every .osu: mount {mount_grep:.1f} s ({grepped:,} files, "
        f"{grepped / mount_grep:,.0f} files/s, {requests} requests), native "
        f"{native_grep:.1f} s ({native_files:,} files): {mount_grep / native_grep:.1f}x",
        f"mount daemon peak RSS after the grep: {held['VmHWM'] / 2**20:.0f} MiB (target <= 150 "
        f"MiB); resident at the end {held['RssAnon'] / 2**20:.0f} MiB its own, "
        f"{held['RssFile'] / 2**20:.0f} MiB mapped files",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=60_000)
    parser.add_argument("--osu", type=int, default=250_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="kept, and its fixtures reused")
    parser.add_argument("--no-grep", action="store_true", help="skip the cold grep")
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="osufs-bulk-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    server = None
    mounts: list[Mount] = []
    try:
        stamp = work / "params.json"
        params = {"sets": args.sets, "osu": args.osu}
        online_db, tarball, native = work / "online.db", work / f"{DUMP}.tar.bz2", work / "native"
        if not stamp.exists() or json.loads(stamp.read_text()) != params:
            began = time.perf_counter()
            generate(work, args.sets, args.osu)
            stamp.write_text(json.dumps(params))
            print(f"generated in {time.perf_counter() - began:.0f} s", flush=True)
        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        # The import syncs the file system per batch: it would flush the removal of the last
        # run's 250,000 files too, and be timed for it.
        os.sync()
        import_command = osufs_command(
            "cache", "import", str(tarball), "--onlinedb", str(online_db), "--cache-dir", str(cache)
        )
        env = {**os.environ, "XDG_DATA_HOME": str(work / "data"), "COLUMNS": "100"}
        took, done = timed(import_command, env=env)
        assert done.returncode == 0, done.stderr
        counts = done.stdout.strip().splitlines()[-1]
        size = tarball.stat().st_size
        rows.append(
            f"import of a {args.osu:,}-file tarball ({size / 1e6:.0f} MB bz2): {took:.1f} s, "
            f"{args.osu / took:,.0f} files/s (target >= 2,000); {counts}"
        )
        print(rows[-1], flush=True)
        again, done = timed(import_command, env=env)
        assert done.returncode == 0, done.stderr
        rows.append(
            f"  the same import again: {again:.1f} s; {done.stdout.strip().splitlines()[-1]}"
        )
        print(rows[-1], flush=True)

        (work / "empty").mkdir(exist_ok=True)
        server = Server(work / "empty", work / "server.log")
        options = (
            "--source", f"onlinedb={online_db}", "--source", f"hexide={server.url}",
            "--read-ahead", "0",
        )  # fmt: skip
        first_start, mount = start_mount(work, cache, "1", *options)
        mounts.append(mount)
        first_ls, listed = ls_root(mount.mountpoint)
        mount.unmount()
        starts, mount_ls, again_ls, native_ls = [], [], [], []
        for run in range(args.runs):
            took, mount = start_mount(work, cache, f"r{run}", *options)
            mounts.append(mount)
            starts.append(took)
            mount_ls.append(ls_root(mount.mountpoint)[0])  # a fresh mount: nothing in the kernel
            again_ls.append(ls_root(mount.mountpoint)[0])
            native_ls.append(ls_root(native)[0])
            mount.unmount()
        rows.append(
            f"mount start: first after the import {first_start:.2f} s (target <= 2 s), later "
            f"{statistics.median(starts):.2f} s median of {args.runs} (target <= 0.5 s)"
        )
        native_median = statistics.median(native_ls)
        fresh, repeat = statistics.median(mount_ls), statistics.median(again_ls)
        rows.append(
            f"root ls -l ({listed:,} sets), medians of {args.runs}: native {native_median:.3f} s; "
            f"mount, first ls of a fresh mount {fresh:.3f} s ({fresh / native_median:.2f}x; "
            f"target <= 1.5x), again {repeat:.3f} s ({repeat / native_median:.2f}x); "
            f"the first ls after the import {first_ls:.3f} s"
        )
        print(*rows[-2:], sep="\n", flush=True)

        if not args.no_grep:
            rows += cold_grep(work, cache, native, server, options, mounts)
            print(*rows[-2:], sep="\n", flush=True)
    finally:
        for mount in mounts:
            mount.unmount()
        if server is not None:
            server.stop()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.UTC)
    print()
    print(f"bulk library, {args.sets:,} sets, {args.osu:,} .osu; {now:%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} cores shared with other agents, Linux {platform.release()}; "
          f"load at the end {load}")  # fmt: skip
    print(*rows, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
