"""Mino (catboy.best) and osu.direct as sources (issue 14): without an osu! account they list the
root from their search, name sets as osu! does, list a set's .osu files and serve them without
archives, every endpoint on one allowance that is never overrun (no 429, no 418). Real mounts
and real sources over the loopback fake of tests/fake_mino.py."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from osufs.names import set_folder_name
from osufs.sources import SourceLimited
from osufs.sources.mino import MinoSource
from osufs.sources.search import SEARCH_CAP
from tests.fake_api import ApiSet
from tests.fake_mino import MinoState, mino_app
from tests.helpers import ThreadedApp, mounted
from tests.test_api_sources import api_sets, osu_files
from tests.test_api_sources import archives as archives  # the module's fixture, shared

RANKED = [1, 100001, 100002, 100003, 100004]  # api_sets: 100005 is loved, 100006 graveyard


def folder_of(found: ApiSet) -> str:
    return set_folder_name(found.set_id, found.artist, found.title)


@pytest.fixture(params=["catboy", "osudirect"])
def mino(request: pytest.FixtureRequest, archives: Path) -> Iterator[tuple[MinoState, str]]:
    """Mino's emulation, or osu.direct's shape of it: (state, source option)."""
    kind = request.param
    state = MinoState(api_sets(archives))
    server = ThreadedApp(mino_app(state, shape="osudirect" if kind == "osudirect" else "mino"))
    try:
        yield state, f"{kind}={server.url}"
    finally:
        server.stop()


def test_a_mirror_alone_lists_names_and_greps_without_archives(
    mino: tuple[MinoState, str], archives: Path, tmp_path: Path
):
    state, source = mino
    options = ["--source", source, "--mirror-per-minute", "600"]
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        root = mount.mountpoint
        # The root lists the ranked sets at once, named as osu! names them.
        assert set(os.listdir(root)) == {folder_of(state.sets[i]) for i in RANKED}
        for set_id in RANKED:
            path = root / folder_of(state.sets[set_id])
            expected = osu_files(archives / f"{set_id}.osz")
            assert sorted(os.listdir(path)) == sorted(expected), set_id
            for name, data in expected.items():
                assert (path / name).read_bytes() == data
        found = subprocess.run(["grep", "-rlc", "Mode:", str(root)], capture_output=True)
        assert found.returncode == 0 and found.stderr == b""
        wanted = sum(len(osu_files(archives / f"{set_id}.osz")) for set_id in RANKED)
        assert len(found.stdout.splitlines()) == wanted
    assert state.requests["download"] == 0, "an archive was asked for"
    assert state.requests["osu"] == wanted  # every .osu once
    assert state.requests["set"] == len(RANKED)
    assert state.requests["search"] == 1
    assert (state.too_many, state.teapots) == (0, 0)
    assert f"set list synced: 1 pages, {len(RANKED)} sets listed" in mount.log()


def test_a_mirror_alone_names_a_set_looked_up_by_id(
    mino: tuple[MinoState, str], archives: Path, tmp_path: Path
):
    state, source = mino
    options = ["--source", source, "--catalogue", "none", "--read-ahead", "0"]
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        assert os.listdir(mount.mountpoint) == []
        loved = state.sets[100005]
        assert os.readlink(mount.mountpoint / "100005") == folder_of(loved)
        listed = os.listdir(mount.mountpoint / "100005")
        assert sorted(listed) == sorted(osu_files(archives / "100005.osz"))
    assert state.requests["download"] == 0 and state.requests["search"] == 0
    assert state.requests["set"] == 1, "the set info was asked for again"
    assert (state.too_many, state.teapots) == (0, 0)


# the allowance, below FUSE


@pytest.fixture
def one_mino(archives: Path) -> Iterator[tuple[MinoState, str]]:
    state = MinoState(api_sets(archives), per_minute=20, window=3.0)
    server = ThreadedApp(mino_app(state))
    try:
        yield state, server.url
    finally:
        server.stop()


def with_mino(url: str, body: Callable[[MinoSource], Awaitable[None]], **options) -> None:
    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await body(MinoSource(client, url, name="catboy", **options))

    trio.run(run)


def test_what_another_client_spent_slows_osufs_before_any_429(one_mino: tuple[MinoState, str]):
    state, url = one_mino
    state.window_start, state.used = time.time(), 18  # another client, same address

    async def body(source: MinoSource) -> None:
        beatmaps = state.sets[100001].beatmaps
        await source.beatmap_file(beatmaps[0].beatmap_id, "")  # "1 left": one token kept
        await source.beatmap_file(beatmaps[1].beatmap_id, "")  # "0 left": rested until reset
        with pytest.raises(SourceLimited, match="rate limit is spent") as caught:
            await source.set_info(100001)
        assert caught.value.until <= time.time() + 4
        await trio.sleep(max(0.0, caught.value.until - time.time()) + 0.1)
        assert (await source.set_info(100001))["id"] == 100001

    with_mino(url, body)
    assert dict(state.requests) == {"osu": 2, "set": 1}
    assert (state.too_many, state.teapots) == (0, 0)


def test_a_429_is_obeyed_so_the_mirror_never_bans(one_mino: tuple[MinoState, str]):
    state, url = one_mino
    # Spent by another client before osufs saw a header: the first answer is a 429.
    state.window_start, state.used = time.time(), 20

    async def body(source: MinoSource) -> None:
        for _attempt in range(3):
            with pytest.raises(SourceLimited):
                await source.folder_name(100001)
        await trio.sleep(max(0.0, source.blocked_until - time.time()) + 0.1)
        assert await source.folder_name(100001) == folder_of(state.sets[100001])

    with_mino(url, body)
    assert state.too_many == 1 and state.teapots == 0
    assert state.requests["set"] == 2, "asked again while told to wait"


def test_a_spent_day_rests_the_mirror_until_the_daily_reset(one_mino: tuple[MinoState, str]):
    state, url = one_mino
    state.daily, state.day_start, state.used_today = 5, time.time(), 4

    async def body(source: MinoSource) -> None:
        await source.set_info(100001)
        with pytest.raises(SourceLimited, match="daily allowance is spent") as caught:
            await source.set_info(100002)
        assert caught.value.until > time.time() + 80_000

    with_mino(url, body)
    assert state.requests["set"] == 1 and (state.too_many, state.teapots) == (0, 0)


def test_mino_search_past_its_cap_lists_every_set(tmp_path: Path):
    sets = {
        set_id: ApiSet(set_id, tmp_path / "none.osz", f"A{set_id}", f"T{set_id}", "M", [])
        for set_id in range(1, SEARCH_CAP + 301)
    }
    state = MinoState(sets, per_minute=100_000)
    server = ThreadedApp(mino_app(state))
    listed: set[int] = set()

    async def body(source: MinoSource) -> None:
        async for entries, _position, done in source.catalogue_pages(None):
            listed.update(entry.set_id for entry in entries)
            if done:
                return

    try:
        with_mino(server.url, body, catalogue="ranked", per_minute=100_000)
    finally:
        server.stop()
    assert listed == set(sets)
    assert any("ranked%3E%3D" in path for path in state.paths)  # a second slice
    assert (state.too_many, state.teapots) == (0, 0)


def test_the_emulation_bans_a_client_that_ignores_its_429(one_mino: tuple[MinoState, str]):
    """The emulation itself: what the tests above rely on it to catch."""
    state, url = one_mino
    state.window_start, state.used = time.time(), 20
    first = httpx.get(f"{url}/api/v2/s/100001")
    assert first.status_code == 429 and int(first.headers["retry-after"]) >= 1
    assert first.headers["x-ratelimit-remaining"] == "0" and "x-daily-remaining" in first.headers
    assert httpx.get(f"{url}/api/ratelimits").status_code == 418
    assert (state.too_many, state.teapots) == (1, 1)
