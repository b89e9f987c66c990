"""The planner through real mounts (issue 14): reads wait for the soonest free source within
their deadline or go where they can be served sooner, a 429 rests only that source and a set's
failure stays with that set, read-ahead never makes a reader fail, and no 429 or 418 is ever
provoked. Over the loopback emulations of the osu! API (tests/fake_api.py) and Mino
(tests/fake_mino.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs.samples import build_sample_library
from tests.fake_api import ApiSet, ApiState, api_app, api_set
from tests.fake_mino import MinoState, mino_app
from tests.helpers import ThreadedApp, mounted
from tests.test_api_sources import client_file as client_file  # the module's fixture, shared
from tests.test_api_sources import osu_files

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
    # The mirror was spent at once; every .osu came from /osu/, none from an archive.
    assert mino_state.requests["download"] == 0
    assert "its rate limit is spent" in log_text
    assert (mino_state.too_many, mino_state.teapots) == (0, 0)
    assert api_state.limited_api == 0
