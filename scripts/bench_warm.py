#!/usr/bin/env python3
"""Benchmark (issue 15): warm scans through osufs in the kernel's no-open mode, side by side in
one run with native disk, osufs on pyfuse3 as released (the fallback) and ratarmount.

One library of N sets (osufs.samples from the real .osu files in ../shared/corpus/osu, small
audio), served by `osufs serve` on loopback, seen five ways:
- native: every archive unzipped on local disk;
- osufs: mounted with the patched pyfuse3 (.venv), its cache filled by one cold pass;
- osufs-stock: the same cache mounted by osufs on pyfuse3 3.5.0 as released (the virtualenv
  tests/test_fallback.py builds, build/stock-pyfuse3);
- ratarmount (pinned, in a bench-only virtualenv, build/bench-ratarmount): every archive
  mounted as a folder (`--recursive`) over a folder of the archives.
A second, smaller root of the first --glob-sets sets each way (osufs through
`--catalogue-file`) serves the glob scan. Every scan runs once to warm, then --runs times,
interleaved so that load from other work on the machine falls on every side alike; medians.

    .venv/bin/python scripts/bench_warm.py [--sets 1000] [--glob-sets 150] [--runs 5]
        [--workdir DIR] [--keep]

Everything it mounts is unmounted and every server stopped, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.counting_mount import COUNTS, tallies  # noqa: E402
from tests.helpers import Server, mounted  # noqa: E402
from tests.test_fallback import stock_python  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "osu"
RATARMOUNT = "1.3.0"
RATARMOUNT_VENV = REPO / "build" / "bench-ratarmount"
AUDIO = 100_000
PATTERN = "Mode: 2"
ENV = {**os.environ, "LC_ALL": "C.UTF-8"}


def ratarmount() -> Path:
    """The pinned ratarmount in its own virtualenv, installed on first use."""
    program = RATARMOUNT_VENV / "bin" / "ratarmount"
    python = RATARMOUNT_VENV / "bin" / "python"
    probe = "from importlib.metadata import version; print(version('ratarmount'))"
    if python.exists():
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True)
        if found.stdout.strip() == RATARMOUNT:
            return program
    subprocess.run([sys.executable, "-m", "venv", "--clear", RATARMOUNT_VENV], check=True)
    pip = [python, "-m", "pip", "install", "-q", f"ratarmount=={RATARMOUNT}"]
    subprocess.run(pip, check=True)
    return program


@contextlib.contextmanager
def rat_mounted(program: Path, folder: Path, mountpoint: Path, log: Path) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "ab") as out:
        subprocess.run(
            [program, "--recursive", "--index-folders", str(folder.parent / "rat-index"),
             str(folder), str(mountpoint)],
            check=True, stdout=out, stderr=out, timeout=1800,
        )  # fmt: skip
    print(f"ratarmount of {folder.name} up (indexes built): {time.perf_counter() - start:.1f} s")
    try:
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True)
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def linked(archives: Path, ids: list[int], folder: Path, suffix: str) -> Path:
    folder.mkdir(exist_ok=True)
    for set_id in ids:
        os.link(archives / f"{set_id}.osz", folder / f"{set_id}{suffix}")
    return folder


def unzip_all(archives: list[Path], tree: Path) -> None:
    def unpack(archive: Path) -> None:
        # unzip exits 1 for warnings only (the Shift-JIS names it cannot convert).
        done = subprocess.run(
            ["unzip", "-qq", "-o", str(archive), "-d", str(tree / archive.stem)],
            capture_output=True,
        )
        if done.returncode > 1:
            raise RuntimeError(f"unzip {archive.name}: {done.stderr[:300]!r}")

    tree.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(unpack, archives))


def timed(argv: list[str], shell: bool = False) -> tuple[float, bytes]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=ENV, shell=shell)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1) or done.stderr:
        raise RuntimeError(f"{argv}: exited {done.returncode}: {done.stderr[:500]!r}")
    return seconds, done.stdout


def scans(roots: dict[str, Path], globs: dict[str, Path]) -> dict[str, dict[str, list[str]]]:
    """Each scan's command for each side: scan -> side -> argv (a shell line for the glob)."""
    return {
        "grep -rl --include=*.osu": {
            side: ["grep", "-rl", "--include=*.osu", PATTERN, str(root)]
            for side, root in roots.items()
        },
        "grep -c '' ROOT/*/*.osu": {
            side: [f"grep -c '' {root}/*/*.osu"] for side, root in globs.items()
        },
        "find": {side: ["find", str(root)] for side, root in roots.items()},
        "grep -rl (every file)": {
            side: ["grep", "-rl", PATTERN, str(root)] for side, root in roots.items()
        },
    }


def measure(commands: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """Each side warmed once, then `runs` rounds interleaved; results checked equal in count."""
    lines: dict[str, int] = {}
    for side, argv in commands.items():
        _seconds, out = timed(argv, shell=len(argv) == 1)
        lines[side] = out.count(b"\n")
    if len(set(lines.values())) != 1:
        print(f"  !! the sides found different results (lines): {lines}", flush=True)
    times: dict[str, list[float]] = {side: [] for side in commands}
    for _ in range(runs):
        for side, argv in commands.items():
            times[side].append(timed(argv, shell=len(argv) == 1)[0])
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--glob-sets", type=int, default=150)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    from osufs.samples import build_sample_library

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="osufs-bench-warm-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory {workdir}", flush=True)
    stock = stock_python()
    rat = ratarmount()
    try:
        archives = workdir / "archives"
        ids = build_sample_library(
            archives, args.sets, seed=0, audio_size=AUDIO, osu_corpus=CORPUS
        )
        few = ids[: args.glob_sets]
        few_archives = linked(archives, few, workdir / "archives-few", ".osz")
        # ratarmount mounts an archive found in a folder only by its extension: .zip.
        zips = linked(archives, ids, workdir / "zips", ".zip")
        few_zips = linked(archives, few, workdir / "zips-few", ".zip")
        few_file = workdir / "few.txt"
        few_file.write_text("".join(f"{set_id}\n" for set_id in few))
        unzip_all(sorted(archives.glob("*.osz")), workdir / "native")
        unzip_all(sorted(few_archives.glob("*.osz")), workdir / "native-few")
        server = Server(archives, workdir / "server.log")
        cache = workdir / "cache"
        source = ("--source", f"hexide={server.url}")
        with contextlib.ExitStack() as stack:
            stack.callback(server.stop)  # last: after every mount is down
            # Every request reaching the no-open mount is counted (tests/counting_mount.py).
            counts = workdir / "counts.json"
            fast = stack.enter_context(
                mounted(workdir / "fast", cache, workdir / "fast.log", *source,
                        module="tests.counting_mount", env={COUNTS: str(counts)})
            )  # fmt: skip
            start = time.perf_counter()
            timed(["grep", "-rc", "", str(fast.mountpoint)])  # cold: fills the cache
            print(f"cold pass through osufs: {time.perf_counter() - start:.1f} s", flush=True)

            def mount(name: str, python: Path, *extra: str) -> Path:
                log = workdir / f"{name}.log"
                where = mounted(workdir / name, cache, log, *source, *extra, python=str(python))
                return stack.enter_context(where).mountpoint

            roots = {
                "native": workdir / "native",
                "osufs": fast.mountpoint,
                "osufs-stock": mount("stock", stock),
                "ratarmount": stack.enter_context(
                    rat_mounted(rat, zips, workdir / "rat", workdir / "rat.log")
                ),
            }
            globs = {
                "native": workdir / "native-few",
                "osufs": mount("fast-few", Path(sys.executable), "--catalogue-file", str(few_file)),
                "osufs-stock": mount("stock-few", stock, "--catalogue-file", str(few_file)),
                "ratarmount": stack.enter_context(
                    rat_mounted(rat, few_zips, workdir / "rat-few", workdir / "rat.log")
                ),
            }
            results, reached = {}, {}
            for scan, commands in scans(roots, globs).items():
                before = tallies(fast.process, counts)["counts"]
                results[scan] = measure(commands, args.runs)
                after = tallies(fast.process, counts)["counts"]
                grown = {name: n - before.get(name, 0) for name, n in after.items()}
                reached[scan] = {name: n for name, n in grown.items() if n}
            load = os.getloadavg()
        report(args, results, reached, load)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(
    args: argparse.Namespace,
    results: dict,
    reached: dict[str, dict[str, int]],
    load: tuple[float, ...],
) -> None:
    today = datetime.date.today().isoformat()
    print(
        f"\nwarm scans, {today}, {platform.node()}: {os.cpu_count()} cores, Linux "
        f"{platform.release()}, Python {platform.python_version()}; load average at the end "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (a machine shared with other work)"
    )
    print(
        f"library: {args.sets} sets ({args.glob_sets} for the glob), audio {AUDIO // 1000} kB; "
        f"median of {args.runs} interleaved runs after one warming run each"
    )
    sides = list(next(iter(results.values())))
    print(f"\n{'':28}" + "".join(f"{side:>13}" for side in sides) + "   osufs/native")
    for scan, times in results.items():
        medians = {side: statistics.median(values) for side, values in times.items()}
        row = "".join(f"{medians[side]:12.3f}s" for side in sides)
        print(f"  {scan:<26}{row}   {medians['osufs'] / medians['native']:10.2f}x")
    print("\nruns (min-max) and requests reaching the no-open osufs in all of a scan's runs:")
    for scan, times in results.items():
        spread = ", ".join(f"{side} {min(v):.3f}-{max(v):.3f}" for side, v in times.items())
        print(f"  {scan:<26}{spread}; osufs requests {reached[scan] or 'none'}")
    print("\nratios to osufs (each side's median / osufs's):")
    for scan, times in results.items():
        medians = {side: statistics.median(values) for side, values in times.items()}
        ratios = ", ".join(
            f"{side} {medians[side] / medians['osufs']:.1f}x" for side in sides if side != "osufs"
        )
        print(f"  {scan:<26}{ratios}")


if __name__ == "__main__":
    sys.exit(main())
