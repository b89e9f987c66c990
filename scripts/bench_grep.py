#!/usr/bin/env python3
"""Benchmark (issue 4): `grep -r` through an osufs mount against downloading and unzipping.

Builds a library of N sets from the real .osu files in ../shared/corpus/osu (plus pseudo-random
audio and images of realistic size), serves it behind a per-request latency and a per-response
bandwidth cap, and measures, in one run:

1. cold: `grep -rl --include='*.osu' PATTERN` through a fresh osufs mount (empty cache) against
   the naive path: download every .osz over HTTP from the same server with the same
   concurrency osufs reads ahead with (curl --parallel), unzip each, then the same grep.
   Wall time and bytes the server sent (its /_stats, as deltas).
2. warm: the same grep again through the same mount against the unpacked tree on local disk
   (median of --runs), plus a whole-tree `grep -rl PATTERN` (audio too) over the first
   --whole-tree-sets sets.

Two configurations (`--setup`):
- `mirror` (the default): `osufs serve`, a Hexide mirror; osufs lists sets from their archives'
  directories and reads .osu members by range.
- `site`: the official site and the osu! API as tests/fake_api.py emulates them (a token, set
  info with md5s, the catalogue search, `/osu/<beatmap id>`, cookie downloads redirected to a
  ranged file host), served in this process; osufs mounts `osuapi` and `osu` (archives only on
  demand) and lists every set provisionally from its .osu files; the naive side downloads every
  archive from the emulated site with the cookie. The emulation publishes no limit, so the API
  and /osu/ pace is `--api-per-minute` (the real one is 50: see docs/benchmarks.md). No
  whole-tree grep: a provisional set lists only its .osu files.

Both sides' file lists are compared; any difference, grep error or mount warning is printed.
Run it with the project's interpreter (needs /dev/fuse, fusermount3, curl, unzip, grep):

    .venv/bin/python scripts/bench_grep.py [--setup mirror|site] [--sets 1000]
        [--latency 0.02] [--bandwidth 50000000] [--link BYTES_PER_S] [--api-per-minute 60000]
        [--workdir DIR] [--keep] [--profile]

Disk: about twice the library (archives + unpacked tree); the osufs cache is removed before the
naive phase. Everything it starts is stopped, and the mount unmounted, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.counting_mount import COUNTS, tallies  # noqa: E402
from tests.helpers import Server, osufs_command  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "osu"
STARTUP = 60.0
MB = 1_000_000


def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


def human(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def du(path: Path) -> int:
    """Bytes allocated under `path`, not counting what is mounted below it."""
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The server and the mount, as subprocesses


class Mount:
    """`osufs mount --foreground`; unmount() always leaves the mountpoint unmounted."""

    def __init__(
        self,
        mountpoint: Path,
        cache_dir: Path,
        log_path: Path,
        args: list[str],
        ops_file: Path | None = None,
    ) -> None:
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.ops_file = ops_file
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in unmount()
        # With ops_file, every FUSE request is counted (tests/counting_mount.py).
        module = "tests.counting_mount" if ops_file else "osufs"
        self.process = subprocess.Popen(
            [*osufs_command(module=module), "mount", str(mountpoint), "--foreground",
             "--cache-dir", str(cache_dir), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**child_env(), COUNTS: str(ops_file or "")},
        )  # fmt: skip
        deadline = time.monotonic() + STARTUP
        while not os.path.ismount(mountpoint):
            if self.process.poll() is not None:
                raise RuntimeError(f"mount exited with {self.process.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount did not come up; see {log_path}")
            time.sleep(0.02)

    def op_counts(self) -> dict:
        """The counting mount's tallies so far (only with --profile)."""
        assert self.ops_file is not None
        return tallies(self.process, self.ops_file)

    def unmount(self) -> None:
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
        self._log.close()


@contextlib.contextmanager
def mounted(*args, **kwargs) -> Iterator[Mount]:
    mount = Mount(*args, **kwargs)
    try:
        yield mount
    finally:
        mount.unmount()


class EmulatedSite:
    """The official site and the osu! API of tests/fake_api.py, shaped like the mirror, in a
    thread of this process (so its CPU is this process's)."""

    def __init__(
        self, archives: Path, ids: list[int], latency: float, bandwidth: int, link: int | None
    ) -> None:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.routing import Mount

        from osufs.server import Link, ServerStats, Shaping
        from tests.fake_api import ApiState, api_app, api_set
        from tests.helpers import ThreadedApp

        self.state = ApiState({i: api_set(i, archives / f"{i}.osz") for i in ids})
        self._stats = ServerStats()
        shaping = Middleware(
            Shaping,
            stats=self._stats,
            latency=latency,
            bandwidth=bandwidth,
            link=Link(link) if link else None,
        )
        app = Starlette(routes=[Mount("/", api_app(self.state))], middleware=[shaping])
        self._server = ThreadedApp(app)
        self.url = self._server.url
        self.pid = os.getpid()

    def stats(self) -> dict:
        return {"requests": self._stats.requests, "bytes_sent": self._stats.bytes_sent}

    def counts(self) -> dict:
        """What osufs asked the emulation for, by kind."""
        return {
            "archives": sum(self.state.downloads.values()),
            "osu": sum(self.state.osu_requests.values()),
            "api": len(self.state.api_requests),
        }

    def secrets(self, workdir: Path) -> tuple[Path, Path]:
        """The client file and the cookie file a user would keep, owner-only."""
        from tests.fake_api import CLIENT_ID, CLIENT_SECRET, SESSION_COOKIE

        client, cookie = workdir / "client", workdir / "cookie"
        client.write_text(f"client_id={CLIENT_ID}\nclient_secret={CLIENT_SECRET}\n")
        cookie.write_text(SESSION_COOKIE)
        for path in (client, cookie):
            path.chmod(0o600)
        return client, cookie

    def stop(self) -> None:
        self._server.stop()


# Measuring


@dataclass
class GrepRun:
    seconds: float
    files: list[str]
    errors: str
    status: int


GREP_ENV = {**os.environ, "LC_ALL": "C.UTF-8"}


def run_grep(argv: list[str]) -> GrepRun:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=GREP_ENV)
    seconds = time.perf_counter() - start
    files = sorted(os.fsdecode(line) for line in done.stdout.splitlines())
    return GrepRun(seconds, files, done.stderr.decode(errors="replace"), done.returncode)


def grep_argv(pattern: str, roots: list[Path], osu_only: bool) -> list[str]:
    include = ["--include=*.osu"] if osu_only else []
    return ["grep", "-rl", *include, "--", pattern, *map(str, roots)]


def set_relative(paths: list[str], root: Path) -> set[tuple[int, str]]:
    """(set id, path inside the set) for grep's output, whether the set folder is `<id>` (the
    unpacked tree) or `<id> Artist - Title` (the mount)."""
    found = set()
    for path in paths:
        folder, _, inner = os.path.relpath(path, root).partition(os.sep)
        found.add((int(folder.split(" ", 1)[0]), inner))
    return found


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)
        print(f"  !! {text}", flush=True)

    def check_grep(self, what: str, run: GrepRun) -> None:
        if run.status not in (0, 1) or run.errors.strip():
            self.problem(f"{what}: grep exited {run.status}: {run.errors.strip()[:800]}")


def stat_delta(after: dict, before: dict) -> dict:
    """The counters' growth (the server's answer also holds per-set tallies: skipped)."""
    return {key: value - before[key] for key, value in after.items() if isinstance(value, int)}


def build_library(archives: Path, sets: int, audio_size: int) -> float:
    """Build (or reuse, when the same parameters built it) the library; returns seconds."""
    from osufs.samples import build_sample_library

    params = {"sets": sets, "audio_size": audio_size, "seed": 0, "corpus": str(CORPUS)}
    stamp = archives / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return 0.0
    if archives.exists():
        subprocess.run(["rm", "-rf", str(archives)], check=True)
    start = time.perf_counter()
    build_sample_library(archives, sets, seed=0, audio_size=audio_size, osu_corpus=CORPUS)
    stamp.write_text(json.dumps(params))
    return time.perf_counter() - start


def warm_server(url: str, ids: list[int], pool: int) -> None:
    """Fill the server's own caches (set index, archive hashes) that a real mirror keeps
    precomputed, so neither side pays for them; the counters are read as deltas anyway."""
    with httpx.Client(timeout=120) as client:
        client.get(f"{url}/beatmaps/").raise_for_status()
        with ThreadPoolExecutor(pool) as executor:
            for response in executor.map(lambda i: client.get(f"{url}/beatmaps/{i}"), ids):
                response.raise_for_status()


def naive_download(
    urls: dict[int, str], target: Path, pool: int, log: Path, cookie: str | None = None
) -> None:
    """Every archive with curl, `pool` transfers at once (one process, connections reused);
    with a cookie, as a logged-in browser downloads from the site (following its redirect)."""
    target.mkdir(parents=True, exist_ok=True)
    config = target / "curl.cfg"
    login = f'location\nheader = "Cookie: {cookie}"\n' if cookie else ""
    config.write_text(
        login + "".join(f'url = "{url}"\noutput = "{target}/{i}.osz"\n' for i, url in urls.items())
    )
    with open(log, "ab") as out:
        subprocess.run(
            ["curl", "--parallel", "--parallel-max", str(pool), "--fail", "-sS", "-K", str(config)],
            check=True,
            stdout=out,
            stderr=out,
        )
    config.unlink()


def naive_unzip(downloads: Path, tree: Path, ids: list[int], pool: int) -> list[str]:
    """Unpack each archive into tree/<id>, deleting it as soon as it is unpacked."""

    def unpack(set_id: int) -> str | None:
        archive = downloads / f"{set_id}.osz"
        done = subprocess.run(
            ["unzip", "-qq", "-o", str(archive), "-d", str(tree / str(set_id))],
            capture_output=True,
        )
        archive.unlink()
        # unzip exits 1 for warnings only (it does for the Shift-JIS names it cannot convert).
        if done.returncode > 1:
            return f"unzip {set_id}.osz exited {done.returncode}: {done.stderr[:300]!r}"
        return None

    tree.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(pool) as executor:
        return [error for error in executor.map(unpack, ids) if error]


def median_runs(argv: list[str], runs: int, report: Report, what: str) -> tuple[float, GrepRun]:
    results = [run_grep(argv) for _ in range(runs)]
    for run in results:
        report.check_grep(what, run)
    if any(run.files != results[0].files for run in results):
        report.problem(f"{what}: repeated runs found different files")
    return statistics.median(run.seconds for run in results), results[0]


def compare(report: Report, what: str, ours: set, theirs: set) -> None:
    if ours == theirs:
        return
    extra, missing = sorted(ours - theirs), sorted(theirs - ours)
    report.problem(
        f"{what}: osufs found {len(ours)} files, the naive tree {len(theirs)}; "
        f"only osufs: {extra[:3]}, only naive: {missing[:3]}"
    )


def summarise_ops(before: dict, after: dict, seconds: float) -> list[str]:
    rows = []
    for name, count in sorted(
        after["counts"].items(), key=lambda kv: -(kv[1] - before["counts"].get(kv[0], 0))
    ):
        n = count - before["counts"].get(name, 0)
        spent = after["seconds"][name] - before["seconds"].get(name, 0.0)
        if n:
            rows.append(
                f"    {name:<10} {n:>7} calls  {spent * 1000:8.1f} ms in the handler "
                f"({spent / n * 1e6:5.0f} µs each)"
            )
    return [f"  FUSE requests during one warm grep ({seconds:.2f} s wall):", *rows]


def mount_log_excerpt(log: Path, limit: int = 20) -> list[str]:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    flagged = [line for line in lines if " WARNING " in line or " ERROR " in line]
    return flagged[:limit] + ([f"... {len(flagged) - limit} more"] if len(flagged) > limit else [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--setup",
        choices=["mirror", "site"],
        default="mirror",
        help="a Hexide mirror, or the official site with the osu! API [mirror]",
    )
    parser.add_argument("--sets", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument(
        "--bandwidth", type=int, default=50 * MB, help="bytes/s, per response [50 MB/s]"
    )
    parser.add_argument(
        "--link",
        type=int,
        help="bytes/s all responses share: the client's downlink (default: none)",
    )
    parser.add_argument(
        "--audio-size", type=int, default=2_500_000, help="bytes per audio file [2.5 MB]"
    )
    parser.add_argument("--pattern", default="Mode: 2", help="what grep looks for [Mode: 2]")
    parser.add_argument("--pool", type=int, default=8, help="osufs --read-ahead = naive pool")
    parser.add_argument("--runs", type=int, default=3, help="warm runs (median reported)")
    parser.add_argument(
        "--whole-tree-sets",
        type=int,
        default=200,
        help="sets the whole-tree grep covers (0: skip it) [200]",
    )
    parser.add_argument("--workdir", type=Path, help="where to work [a new temp directory]")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--profile", action="store_true", help="count FUSE requests of a warm grep")
    parser.add_argument(
        "--api-per-minute",
        type=float,
        default=60000,
        help="--setup site: the pace of API and /osu/ requests osufs keeps to [60000]",
    )
    args = parser.parse_args()
    if args.setup == "site":
        args.whole_tree_sets = 0  # a provisional set lists only its .osu files

    # Ctrl-C and SIGTERM both unwind through the finally blocks below.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started ignoring it
    if not CORPUS.is_dir():
        parser.error(f"no .osu corpus at {CORPUS}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="osufs-bench-"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    archives, cache, mnt = workdir / "archives", workdir / "cache", workdir / "mnt"
    downloads, tree = workdir / "downloads", workdir / "tree"
    mount_log, server_log = workdir / "mount.log", workdir / "server.log"
    for stale in (cache, downloads, tree, mount_log, server_log):
        subprocess.run(["rm", "-rf", str(stale)], check=True)
    report = Report()
    server: Server | EmulatedSite | None = None
    peak_disk = 0
    try:
        print(f"building {args.sets} sets in {archives} ...", flush=True)
        built = build_library(archives, args.sets, args.audio_size)
        ids = sorted(int(p.stem) for p in archives.glob("*.osz"))
        library_bytes = sum((archives / f"{i}.osz").stat().st_size for i in ids)
        how = f"built in {built:.0f} s" if built else "reused"
        print(f"  {how}: {human(library_bytes)}")
        start = time.perf_counter()
        if args.setup == "mirror":
            shaping = ["--latency", str(args.latency), "--bandwidth", str(args.bandwidth)]
            shaping += ["--link", str(args.link)] if args.link else []
            server = Server(archives, server_log, *shaping)
            warm_server(server.url, ids, 16)
            print(f"  server indexed and hashed in {time.perf_counter() - start:.0f} s")
            mount_args = ["--source", f"hexide={server.url}"]
            naive_urls = {i: f"{server.url}/beatmaps/{i}/download" for i in ids}
            cookie = None
        else:
            server = EmulatedSite(archives, ids, args.latency, args.bandwidth, args.link)
            print(f"  site emulated in {time.perf_counter() - start:.0f} s")
            client_file, cookie_file = server.secrets(workdir)
            cookie = cookie_file.read_text()
            mount_args = [
                "--source", f"osuapi={server.url}", "--client-file", str(client_file),
                "--source", f"osu={server.url}", "--cookie-file", str(cookie_file),
                "--catalogue", "ranked", "--api-per-minute", str(args.api_per_minute),
            ]  # fmt: skip
            naive_urls = {i: f"{server.url}/beatmapsets/{i}/download" for i in ids}
        sys.stdout.flush()
        scan = grep_argv(args.pattern, [mnt], osu_only=True)
        subset = ids[: args.whole_tree_sets]

        # 1 + 2, osufs side: cold, then warm, on one mount with a fresh cache.
        print("osufs: cold grep ...", flush=True)
        ops_file = workdir / "ops.json" if args.profile else None
        before = server.stats()
        start = time.perf_counter()
        mount_args += ["--read-ahead", str(args.pool)]
        with mounted(mnt, cache, mount_log, mount_args, ops_file) as mount:
            # The whole catalogue first (the API's pages arrive after the first): the grep
            # must see every set, and listing the root is not what is measured.
            deadline = time.monotonic() + STARTUP
            while len(os.listdir(mnt)) < len(ids) and time.monotonic() < deadline:
                time.sleep(0.05)
            mount_seconds = time.perf_counter() - start
            counts_before = server.counts() if isinstance(server, EmulatedSite) else None
            cpu_before = cpu_seconds(server.pid), cpu_seconds(mount.process.pid)
            cold = run_grep(scan)
            osufs_cold = stat_delta(server.stats(), before)
            cold_cpu = (
                cpu_seconds(server.pid) - cpu_before[0],
                cpu_seconds(mount.process.pid) - cpu_before[1],
            )
            if isinstance(server, EmulatedSite) and counts_before is not None:
                asked = stat_delta(server.counts(), counts_before)
                if asked["archives"]:
                    report.problem(f"the cold grep downloaded {asked['archives']} archives")
            report.check_grep("osufs cold", cold)
            print(f"  {cold.seconds:.1f} s, {human(osufs_cold['bytes_sent'])}", flush=True)
            print("osufs: warm grep ...", flush=True)
            osufs_warm, warm_run = median_runs(scan, args.runs, report, "osufs warm")
            if warm_run.files != cold.files:
                report.problem("osufs: the warm grep found other files than the cold one")
            if args.profile:
                ops_before = mount.op_counts()
                profiled = run_grep(scan)
                ops_lines = summarise_ops(ops_before, mount.op_counts(), profiled.seconds)
            folders = {int(p.name.split(" ", 1)[0]): p for p in mnt.iterdir()}
            missing_folders = [i for i in subset if i not in folders]
            if missing_folders:
                report.problem(f"set folders missing from the mount: {missing_folders[:5]}")
            whole_roots = [folders[i] for i in subset if i in folders]
            if whole_roots:
                print(f"osufs: whole-tree grep of {len(subset)} sets (first, cold) ...")
                whole_argv = grep_argv(args.pattern, whole_roots, osu_only=False)
                before = server.stats()
                whole_cold = run_grep(whole_argv)
                whole_cold_bytes = stat_delta(server.stats(), before)["bytes_sent"]
                report.check_grep("osufs whole-tree cold", whole_cold)
                osufs_whole, whole_run = median_runs(whole_argv, args.runs, report, "osufs whole")
            peak_disk = max(peak_disk, du(workdir))
        mount_problems = mount_log_excerpt(mount_log)
        subprocess.run(["rm", "-rf", str(cache)], check=True)

        # 1 + 2, naive side: download, unzip, grep; then the same grep again, warm.
        print("naive: download ...", flush=True)
        before = server.stats()
        start = time.perf_counter()
        naive_download(naive_urls, downloads, args.pool, workdir / "curl.log", cookie)
        download_seconds = time.perf_counter() - start
        naive_bytes = stat_delta(server.stats(), before)
        peak_disk = max(peak_disk, du(workdir))
        print(f"  {download_seconds:.1f} s, {human(naive_bytes['bytes_sent'])}; unzip ...")
        start = time.perf_counter()
        for error in naive_unzip(downloads, tree, ids, args.pool):
            report.problem(error)
        unzip_seconds = time.perf_counter() - start
        native_scan = grep_argv(args.pattern, [tree], osu_only=True)
        naive_grep = run_grep(native_scan)
        report.check_grep("naive", naive_grep)
        naive_seconds = download_seconds + unzip_seconds + naive_grep.seconds
        peak_disk = max(peak_disk, du(workdir))
        print("native: warm grep ...", flush=True)
        native_warm, _ = median_runs(native_scan, args.runs, report, "native warm")
        compare(
            report, "cold grep", set_relative(cold.files, mnt),
            set_relative(naive_grep.files, tree),
        )  # fmt: skip
        if whole_roots:
            native_whole_argv = grep_argv(args.pattern, [tree / str(i) for i in subset], False)
            native_whole, native_whole_run = median_runs(
                native_whole_argv, args.runs, report, "native whole"
            )
            compare(
                report, "whole-tree grep", set_relative(whole_run.files, mnt),
                set_relative(native_whole_run.files, tree),
            )  # fmt: skip
            subset_bytes = sum((archives / f"{i}.osz").stat().st_size for i in subset)

        # The table.
        def mark(ok: bool) -> str:
            return "met" if ok else "NOT met"

        matched = len(cold.files)
        matched_sets = len({key[0] for key in set_relative(cold.files, mnt)})
        bytes_ratio = osufs_cold["bytes_sent"] / naive_bytes["bytes_sent"]
        speedup = naive_seconds / cold.seconds
        warm_ratio = osufs_warm / native_warm
        bw = f"{args.bandwidth / MB:g} MB/s a response"
        if args.link:
            bw += f", {args.link / MB:g} MB/s shared (the client's link)"
        if args.setup == "mirror":
            setup = f"a Hexide mirror (osufs serve): {args.latency * 1000:g} ms a request"
        else:
            setup = (
                f"the official site and the osu! API, emulated (tests/fake_api.py): "
                f"{args.latency * 1000:g} ms a request; osufs paced at {args.api_per_minute:g} "
                "API and /osu/ requests a minute"
            )
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
        rows = [
            f"grep benchmark, {datetime.date.today()}, {platform.node()}: "
            f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM, "  # noqa: E501
            f"Linux {platform.release()}, Python {platform.python_version()}; "
            f"load average at the end {load} (other work on the machine adds noise)",
            f"library: {len(ids)} sets, {human(library_bytes)} ({human(library_bytes / len(ids))}"
            f" a set; audio {human(args.audio_size)}); server: {setup}, {bw}; "
            f"osufs --read-ahead {args.pool}, naive pool {args.pool}",
            f"scan: grep -rl --include='*.osu' {shlex.quote(args.pattern)} -> {matched} files "
            f"in {matched_sets} sets",
            "",
            f"{'cold (empty cache)':<34}{'time':>9}{'moved':>11}{'requests':>10}",
            f"{'  osufs grep':<34}{cold.seconds:>8.1f}s{human(osufs_cold['bytes_sent']):>11}"
            f"{osufs_cold['requests']:>10}",
            f"{'  naive download+unzip+grep':<34}{naive_seconds:>8.1f}s"
            f"{human(naive_bytes['bytes_sent']):>11}{naive_bytes['requests']:>10}",
            f"{'    (download / unzip / grep)':<34} {download_seconds:.1f} / {unzip_seconds:.1f}"
            f" / {naive_grep.seconds:.2f} s",
            f"  bytes osufs/naive {bytes_ratio:.2%} (target <= 5%: {mark(bytes_ratio <= 0.05)});"
            f" time naive/osufs {speedup:.1f}x (target >= 10x: {mark(speedup >= 10)})",
            f"  (mount start, catalogue of {len(ids)} sets included in bytes: "
            f"{mount_seconds:.2f} s, not in the time; CPU during the osufs grep: mount "
            f"{cold_cpu[1]:.1f} s, server {cold_cpu[0]:.1f} s)",
            *(
                [
                    f"  (osufs asked for {asked['api']} API answers, {asked['osu']} .osu files "
                    f"and {asked['archives']} archives during the grep)"
                ]
                if args.setup == "site"
                else []
            ),
            "",
            f"{f'warm (median of {args.runs})':<34}{'osufs':>9}{'native':>9}{'ratio':>9}",
            f"{'  grep --include=*.osu':<34}{osufs_warm:>8.3f}s{native_warm:>8.3f}s"
            f"{warm_ratio:>8.1f}x   (target <= 2x: {mark(warm_ratio <= 2)})",
        ]
        if whole_roots:
            rows.append(
                f"{f'  grep whole tree, {len(subset)} sets':<34}{osufs_whole:>8.3f}s"
                f"{native_whole:>8.3f}s{osufs_whole / native_whole:>8.1f}x   "
                f"({human(subset_bytes)}; its cold osufs run {whole_cold.seconds:.1f} s, "
                f"{human(whole_cold_bytes)})"
            )
        if args.profile:
            rows += ["", *ops_lines]
        rows += ["", f"peak disk use of the work directory: {human(peak_disk)}"]
        rows.append(
            "files found: osufs == naive"
            if not any("found" in p for p in report.problems)
            else "files found: DIFFER (see problems)"
        )
        if mount_problems:
            rows += ["mount log warnings/errors:", *(f"  {line}" for line in mount_problems)]
        if report.problems:
            rows += ["problems:", *(f"  {p}" for p in report.problems)]
        print("\n" + "\n".join(rows))
        return 1 if report.problems else 0
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if os.path.ismount(mnt):  # a mount left by an exception inside `mounted`
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {workdir} (mount log: {mount_log})")
        else:
            if report.problems and mount_log.exists():
                kept = Path(tempfile.gettempdir()) / f"osufs-bench-mount-{os.getpid()}.log"
                mount_log.replace(kept)
                print(f"mount log kept at {kept}")
            # Only what this script made: --workdir may name a directory holding other things.
            made = [archives, cache, downloads, tree, mount_log, server_log]
            made += [workdir / name for name in ("ops.json", "curl.log", "client", "cookie")]
            for path in made:
                subprocess.run(["rm", "-rf", str(path)])
            with contextlib.suppress(OSError):
                mnt.rmdir()
                workdir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
