#!/usr/bin/env python3
"""Benchmark (issue 14): a cold grep over every .osu of N sets on today's metered sources.

The sources are the two that bind today, emulated on loopback with their allowances and
headers: the osu! API (tests/fake_api.py: 60 requests a window, `/oauth/token`, `/api/` and
`/osu/` together, x-ratelimit-remaining, 429 with Retry-After past it) and a Mino-like mirror
(tests/fake_mino.py: 60 a window, x-ratelimit-remaining/-reset, x-daily-remaining, 429, then
418 for a client that asks while told to wait). Each request waits `--latency` and every body
shares one `--link` (the client's downlink). osufs mounts `osuapi` and `catboy` on an empty
cache, lists the ranked catalogue from the API's search, and `grep -c '' -r --include=*.osu`
reads every difficulty. It prints:

- the wall time (mount to the grep's end) beside the floor the allowances impose: the requests
  the job needs at least (search pages, one set info per set, one request per .osu file, one
  token) divided by the two allowances together;
- the requests by source and kind; the 429s, 418s and EIOs.

A real minute makes this a 10-minute run at 300 sets. `--scale` shortens both the emulations'
windows and osufs's (OSUFS_WINDOW_SCALE) by the same factor: 60 a minute becomes 60 in
`60 * scale` seconds, and the floor scales with it; latency and link are not scaled, so at a
small scale the per-request latency weighs more than it would in a real run. Run it with the
project's interpreter (needs /dev/fuse, fusermount3, grep):

    .venv/bin/python scripts/bench_today.py [--sets 300] [--scale 0.2] [--latency 0.05]
        [--link 12500000] [--workdir DIR] [--keep]

Everything it starts is stopped, and the mount unmounted, even on failure. Nothing is written
outside the work directory (the mount's state, config and log directories are under it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus" / "osu"
PER_WINDOW = 60  # both sources' published allowance: 60 a minute
TARGET = 1.2


class TwoServers:
    """The API and the mirror on two loopback ports, in one trio loop (one shared link)."""

    def __init__(self, apps: list[object]) -> None:
        import trio

        from osufs.server import serve_app

        self.ports: list[int] = []
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None

        async def run() -> None:
            with trio.CancelScope() as scope:
                self._scope = scope
                self._token = trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    for app in apps:
                        self.ports.append(await nursery.start(serve_app, app, "127.0.0.1", 0))
                    self._ready.set()

        self._thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the emulations did not start")

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(10)


def shaped(app: object, latency: float, link: object) -> object:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount

    from osufs.server import ServerStats, Shaping

    middleware = Middleware(Shaping, stats=ServerStats(), latency=latency, link=link)
    return Starlette(routes=[Mount("/", app)], middleware=[middleware])


def build_library(archives: Path, sets: int) -> None:
    from osufs.samples import build_sample_library

    stamp = archives / f"built-{sets}"
    if stamp.exists():
        return
    shutil.rmtree(archives, ignore_errors=True)
    build_sample_library(archives, sets, seed=0, audio_size=50_000, osu_corpus=CORPUS)
    stamp.touch()


@contextlib.contextmanager
def work_directory(given: str | None, keep: bool) -> Iterator[Path]:
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="osufs-bench-today-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=300)
    parser.add_argument("--scale", type=float, default=0.2, help="window factor [0.2: 12 s]")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds a request")
    parser.add_argument("--link", type=int, default=12_500_000, help="bytes/s, shared")
    parser.add_argument("--workdir", help="keep the library here between runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = parser.parse_args()

    from osufs.server import Link
    from tests.fake_api import CLIENT_ID, CLIENT_SECRET, ApiState, api_app, api_set
    from tests.fake_mino import MinoState, mino_app
    from tests.helpers import Mount

    window = 60.0 * args.scale
    with work_directory(args.workdir, args.keep) as work:
        archives = work / "archives"
        started = time.perf_counter()
        build_library(archives, args.sets)
        print(f"library: {args.sets} sets ({time.perf_counter() - started:.0f} s to build)")
        ids = sorted(int(p.stem) for p in archives.glob("*.osz"))[: args.sets]
        sets = {i: api_set(i, archives / f"{i}.osz") for i in ids}
        difficulties = sum(len(s.beatmaps) for s in sets.values())
        api = ApiState(sets, per_minute=PER_WINDOW, window=window)
        mino = MinoState(sets, per_minute=PER_WINDOW, window=window)
        link = Link(args.link)
        servers = TwoServers(
            [shaped(api_app(api), args.latency, link), shaped(mino_app(mino), args.latency, link)]
        )
        api_url, mino_url = (f"http://127.0.0.1:{port}" for port in servers.ports)
        client_file = work / "client"
        client_file.write_text(f"client_id={CLIENT_ID}\nclient_secret={CLIENT_SECRET}\n")
        client_file.chmod(0o600)
        cache, mountpoint = work / "cache", work / "mnt"
        shutil.rmtree(cache, ignore_errors=True)
        env = {"OSUFS_WINDOW_SCALE": repr(args.scale)}
        for variable in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
            env[variable] = str(work / "home" / variable.lower())
        options = [
            "--source", f"osuapi={api_url}", "--client-file", str(client_file),
            "--source", f"catboy={mino_url}", "--catalogue", "ranked",
            "--api-per-minute", str(PER_WINDOW), "--mirror-per-minute", str(PER_WINDOW),
        ]  # fmt: skip
        mount = None
        try:
            began = time.perf_counter()
            mount = Mount(mountpoint, cache, work / "mount.log", *options, env=env)
            while len(os.listdir(mountpoint)) < len(ids):
                if time.perf_counter() - began > 60 + 20 * window:
                    raise RuntimeError(f"the root never listed every set:\n{mount.log()}")
                time.sleep(0.05)
            listed = time.perf_counter() - began
            argv = ["grep", "-c", "", "-r", "--include=*.osu", str(mountpoint)]
            grep = subprocess.run(argv, capture_output=True, text=True)
            wall = time.perf_counter() - began
        finally:
            if mount is not None:
                mount.unmount()
            servers.stop()
        files = len(grep.stdout.splitlines())
        eios = grep.stderr.count("Input/output error")
        log_text = (work / "mount.log").read_text(errors="replace")

    pages = math.ceil(len(ids) / api.page_size)
    needed = 1 + pages + len(ids) + difficulties  # a token, the search, set infos, .osu files
    floor = needed / (2 * PER_WINDOW) * window
    api_kinds = Counter(
        "search" if "/search" in path else "set" for path in api.api_requests
    )
    api_kinds["osu"] = sum(api.osu_requests.values())
    api_kinds["token"] = api.grants
    print(
        f"osufs {platform.python_version()}, {os.cpu_count()} cores; {len(ids)} sets, "
        f"{difficulties} .osu files; {args.latency * 1000:g} ms a request, "
        f"{args.link / 1e6:g} MB/s shared link"
    )
    print(
        f"allowances: the API {PER_WINDOW} and the mirror {PER_WINDOW} a window of {window:g} s "
        f"(a minute scaled by {args.scale:g}; a real run takes {1 / args.scale:g}x as long)"
    )
    print(f"requests needed at least: {needed} (1 token, {pages} search pages, {len(ids)} set "
          f"infos, {difficulties} .osu files)")
    print(f"root listed: {listed:.1f} s")
    ratio = wall / floor
    print(f"wall: {wall:.1f} s   floor: {floor:.1f} s   ratio: {ratio:.2f}x (target <= {TARGET})")
    alone = 2 * floor
    print(f"  (one allowance alone would take {alone:.1f} s: {wall / alone:.2f}x of that)")
    print(f"grep read {files} of {difficulties} .osu files")
    asked = [
        Counter(path.split("?")[0].rsplit("/", 1)[-1] for path in paths)
        for paths in (
            [p for p in api.api_requests if "/search" not in p],
            [p for p in mino.paths if p.startswith("/api/v2/s/")],
        )
    ]
    infos = asked[0] + asked[1]
    again = sum(count - 1 for count in infos.values())
    both = len(asked[0].keys() & asked[1].keys())
    print(
        f"set infos asked again: {again} of {sum(infos.values())} ({both} sets asked of both "
        "sources)"
    )
    print(f"API requests: {dict(api_kinds)} = {sum(api_kinds.values())}")
    print(f"mirror requests: {dict(mino.requests)} = {sum(mino.requests.values())}")
    print(
        f"429s: API {api.limited_api}, mirror {mino.too_many}; 418s: {mino.teapots}; "
        f"EIOs: {eios} (grep exit {grep.returncode})"
    )
    warnings = [line for line in log_text.splitlines() if "WARNING" in line or "ERROR" in line]
    for line in warnings[:10]:
        print(f"  log: {line}")
    good = (
        ratio <= TARGET
        and api.limited_api == mino.too_many == mino.teapots == eios == 0
        and files == difficulties
    )
    print("targets met" if good else "targets NOT met")
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
