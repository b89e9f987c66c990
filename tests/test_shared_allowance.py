"""One allowance per source, whoever spends it (issue 14): a real mount and a real `osufs
prefetch` on one cache directory, both on the loopback Mino of tests/fake_mino.py, together
stay within its one allowance (no 429, no 418), each seeing what the other spent; and what one
source of the osu! API's shapes answered is not asked of another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import trio

from osufs.sources import SourceSpec, build_sources
from tests.fake_api import CLIENT_ID, CLIENT_SECRET, ApiState, api_app
from tests.fake_mino import MinoState, mino_app
from tests.helpers import ThreadedApp, mounted
from tests.test_api_sources import api_sets, osu_files
from tests.test_api_sources import archives as archives  # the module's fixture, shared
from tests.test_mino import RANKED, folder_of

# The emulation allows PER_WINDOW requests in WINDOW seconds; osufs is told the same (its
# minute shortened by SCALE), so together the two processes need several windows.
PER_WINDOW = 12
WINDOW = 3.0
SCALE = WINDOW / 60.0


def test_a_mount_and_prefetch_on_one_cache_stay_within_one_allowance(
    archives: Path, tmp_path: Path
):
    state = MinoState(api_sets(archives), per_minute=PER_WINDOW, window=WINDOW)
    server = ThreadedApp(mino_app(state))
    cache = tmp_path / "cache"
    env = {**os.environ, "OSUFS_WINDOW_SCALE": repr(SCALE)}
    source = ["--source", f"catboy={server.url}", "--mirror-per-minute", str(PER_WINDOW)]
    prefetched = ["--cache-dir", str(cache), *source]
    try:
        with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", *source, env=env) as mount:
            prefetch = subprocess.Popen(
                [sys.executable, "-m", "osufs", "prefetch", "100004-100006", "--all", *prefetched],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            try:
                # Meanwhile a reader goes through every .osu of the ranked sets.
                for set_id in RANKED:
                    path = mount.mountpoint / folder_of(state.sets[set_id])
                    for name, data in osu_files(archives / f"{set_id}.osz").items():
                        assert (path / name).read_bytes() == data, (set_id, name)
                output, _ = prefetch.communicate(timeout=120)
            finally:
                prefetch.kill()
                prefetch.wait()
            assert prefetch.returncode == 0, output
            assert "3 fetched" in output and "0 failed" in output, output
    finally:
        server.stop()
    assert state.requests["download"] >= 3 and state.requests["osu"] > 0
    # More than two windows' worth: two separate counts would each have allowed that much.
    assert sum(state.requests.values()) > 2 * PER_WINDOW
    assert (state.too_many, state.teapots) == (0, 0), "the two processes overran the mirror"


def test_a_set_info_from_the_api_is_not_asked_again_of_the_mirror(archives: Path, tmp_path: Path):
    sets = api_sets(archives)
    api, mino = ApiState(sets), MinoState(sets)
    api_server, mino_server = ThreadedApp(api_app(api)), ThreadedApp(mino_app(mino))
    settings = SimpleNamespace(
        sources=[
            SourceSpec.parse(f"osuapi={api_server.url}"),
            SourceSpec.parse(f"catboy={mino_server.url}"),
        ],
        cookie=None,
        no_video=False,
        cache_dir=tmp_path / "cache",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        catalogue="none",
    )

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            osuapi, catboy = build_sources(client, settings)
            first = await osuapi.set_difficulties(100001)
            second = await catboy.set_difficulties(100001)
            assert second == first
            await catboy.set_difficulties(100002)
            assert await osuapi.set_difficulties(100002) is not None

    try:
        trio.run(main)
    finally:
        api_server.stop()
        mino_server.stop()
    assert [path for path in api.api_requests if "/beatmapsets/" in path] == [
        "/api/v2/beatmapsets/100001?"
    ]
    assert mino.paths == ["/api/v2/s/100002"], "a set info was asked of both sources"
