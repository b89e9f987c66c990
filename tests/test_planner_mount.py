"""The planner through real mounts (issue 14): reads wait for the soonest free source within
their deadline or go where they can be served sooner, a 429 rests only that source and a set's
failure stays with that set, read-ahead never makes a reader fail, and no 429 or 418 is ever
provoked. Over the loopback emulations of the osu! API (tests/fake_api.py) and Mino
(tests/fake_mino.py)."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from osufs.names import set_folder_name
from osufs.samples import build_sample_library
from tests.fake_api import ApiSet, ApiState, api_app, api_set
from tests.fake_mino import MinoState, mino_app
from tests.helpers import ThreadedApp, mounted
from tests.test_api_sources import NO_READ_AHEAD, api_options, osu_files, wait_for
from tests.test_api_sources import client_file as client_file  # the module's fixture, shared

SETS = 30
WINDOW = 3.0
SCALED = {**os.environ, "OSUFS_WINDOW_SCALE": repr(WINDOW / 60.0)}


@pytest.fixture(scope="module")
def thirty(tmp_path_factory: pytest.TempPathFactory) -> dict[int, ApiSet]:
    folder = tmp_path_factory.mktemp("thirty")
    ids = build_sample_library(folder, SETS, audio_size=20_000)
    return {set_id: api_set(set_id, folder / f"{set_id}.osz") for set_id in ids}


@pytest.fixture
def servers(thirty: dict[int, ApiSet]) -> Iterator[tuple[ApiState, MinoState, str, str]]:
    """The osu! API (with /osu/) and Mino over the same thirty sets."""
    api_state, mino_state = ApiState(dict(thirty)), MinoState(dict(thirty))
    api, mino = ThreadedApp(api_app(api_state)), ThreadedApp(mino_app(mino_state))
    try:
        yield api_state, mino_state, api.url, mino.url
    finally:
        api.stop()
        mino.stop()


def grep_every_osu(root: Path) -> subprocess.CompletedProcess[bytes]:
    """`grep -c '' */*.osu` at the root, as a user would type it."""
    return subprocess.run(
        "grep -c '' */*.osu", shell=True, cwd=root, capture_output=True, timeout=300
    )


def test_a_grep_reads_every_osu_once_the_mirror_is_spent(
    servers: tuple[ApiState, MinoState, str, str],
    thirty: dict[int, ApiSet],
    client_file: Path,
    tmp_path: Path,
):
    api_state, mino_state, api_url, mino_url = servers
    # Both windows are three seconds (osufs's minute shortened to match): the API allows 60
    # requests in one, the mirror five.
    api_state.per_minute, api_state.window = 60, WINDOW
    mino_state.per_minute, mino_state.window = 5, WINDOW
    options = [
        "--source",
        f"catboy={mino_url}",
        "--source",
        f"osuapi={api_url}",
        "--client-file",
        str(client_file),
        "--mirror-per-minute",
        "5",
        "--fetch-timeout",
        "10",
    ]
    with mounted(
        tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options, env=SCALED
    ) as mount:
        found = grep_every_osu(mount.mountpoint)
        log_text = mount.log()
    assert found.stderr == b"" and found.returncode == 0, log_text[-3000:]
    # Every .osu of every set was read whole: grep counted each one's lines.
    counted: dict[str, list[int]] = {}
    for line in found.stdout.decode().splitlines():
        path, lines = line.rsplit(":", 1)
        counted.setdefault(path.split(" ", 1)[0], []).append(int(lines))
    for set_id, found_set in thirty.items():
        expected = [len(data.splitlines()) for data in osu_files(found_set.archive).values()]
        assert sorted(counted.get(str(set_id), [])) == sorted(expected), set_id
    # The mirror's allowance was spent (a window's worth at least); every .osu came from
    # `/osu/` at either source, none from an archive.
    assert sum(mino_state.requests.values()) >= mino_state.per_minute
    assert mino_state.requests["download"] == 0
    assert (mino_state.too_many, mino_state.teapots) == (0, 0)
    assert api_state.limited_api == 0


def read_timed(path: Path, done: dict[str, float]) -> bytes:
    data = path.read_bytes()
    done[path.name] = time.monotonic()
    return data


def test_a_429_for_one_set_waits_while_other_sets_read(
    servers: tuple[ApiState, MinoState, str, str],
    thirty: dict[int, ApiSet],
    client_file: Path,
    tmp_path: Path,
):
    api_state, mino_state, api_url, mino_url = servers
    busy, others = 100005, [100006, 100007, 100008, 100009]
    mino_state.overloaded[f"/d/{busy}"] = 2  # its archive: 429, Retry-After: 2, once
    options = [
        *api_options(api_url, client_file, "--api-per-minute", "6000"),
        "--source",
        f"catboy={mino_url}",
        "--fetch-timeout",
        "10",
        *NO_READ_AHEAD,
    ]
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        root = mount.mountpoint
        done: dict[str, float] = {}
        with ThreadPoolExecutor(4) as pool:
            audio = pool.submit(read_timed, root / str(busy) / "audio.mp3", done)
            read = [
                pool.submit(read_timed, root / str(set_id) / name, done)
                for set_id in others
                for name in osu_files(thirty[set_id].archive)
            ]
            # While the mirror rests, the other sets' .osu files come from the API.
            for future, set_id_name in zip(
                read, [(i, n) for i in others for n in osu_files(thirty[i].archive)], strict=True
            ):
                set_id, name = set_id_name
                assert future.result() == osu_files(thirty[set_id].archive)[name]
            with zipfile.ZipFile(thirty[busy].archive) as archive:
                assert audio.result() == archive.read("audio.mp3")
        log_text = mount.log()
    assert mino_state.held == 1
    assert max(t for name, t in done.items() if name != "audio.mp3") < done["audio.mp3"]
    # The mirror was asked again for the set once its Retry-After had passed, and it served.
    assert mino_state.requests["download"] >= 2
    assert "its Retry-After" in log_text or "rate limited" in log_text
    assert (mino_state.too_many, mino_state.teapots) == (0, 0)
    assert api_state.limited_api == 0


def test_reading_ahead_into_a_429_never_fails_a_reader(
    servers: tuple[ApiState, MinoState, str, str], thirty: dict[int, ApiSet], tmp_path: Path
):
    _api_state, mino_state, _api_url, mino_url = servers
    first, *later = sorted(thirty)[:8]
    mino_state.per_minute = 600
    # Reading ahead of the first set asks for the next ones' .osu files: 429, Retry-After: 2
    # (for whichever is asked for first; the others for a reader, later).
    for set_id in later[:3]:
        mino_state.overloaded[f"/osu/{thirty[set_id].beatmaps[0].beatmap_id}"] = 2
    options = ["--source", f"catboy={mino_url}", "--mirror-per-minute", "600"]
    options += ["--fetch-timeout", "10"]
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        root = mount.mountpoint

        def read_set(set_id: int) -> None:
            found = thirty[set_id]
            path = root / set_folder_name(set_id, found.artist, found.title)
            for name, data in osu_files(found.archive).items():
                assert (path / name).read_bytes() == data, (set_id, name)

        read_set(first)
        wait_for(lambda: mino_state.held >= 1, "reading ahead into a 429")
        for set_id in later:  # the one read ahead into the 429 too
            read_set(set_id)
        log_text = mount.log()
    assert "WARNING" not in log_text, log_text
    assert (mino_state.too_many, mino_state.teapots) == (0, 0)
