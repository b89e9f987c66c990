"""The root's set list (issue 14): a catalogue past the search's cap of 10,000 results a query,
read in date slices and resumed where the last sync stopped; a catalogue file's names complete
as soon as the mount is up. Real mounts over the loopback fakes of tests/fake_api.py and
tests/fake_mino.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs.names import set_folder_name
from osufs.sources.search import SEARCH_CAP
from tests.fake_api import ApiSet, ApiState, api_app
from tests.fake_mino import MinoState, mino_app
from tests.helpers import ThreadedApp, mounted
from tests.test_api_sources import NO_READ_AHEAD, api_options, wait_for
from tests.test_api_sources import client_file as client_file

BIG = SEARCH_CAP + 500


@pytest.fixture
def big_api(tmp_path: Path) -> Iterator[tuple[ApiState, str]]:
    """A ranked catalogue larger than one search may answer (the sets have no files)."""
    sets = {
        set_id: ApiSet(set_id, tmp_path / "none.osz", f"Artist {set_id}", f"Song {set_id}", "M", [])
        for set_id in range(1, BIG + 1)
    }
    state = ApiState(sets)
    server = ThreadedApp(api_app(state))
    try:
        yield state, server.url
    finally:
        server.stop()


def test_a_catalogue_past_the_search_cap_syncs_whole_and_resumes(
    big_api: tuple[ApiState, str], client_file: Path, tmp_path: Path
):
    state, url = big_api
    fast = ("--api-per-minute", "100000")
    options = api_options(url, client_file, "--catalogue", "ranked", *fast, *NO_READ_AHEAD)
    cache, log = tmp_path / "cache", tmp_path / "mount.log"
    # The first session is cut off after 120 pages (the API answers 429 from then on, asking
    # for a rest of 2 s, which the index keeps for the next session).
    state.search_limit, state.search_rest = 120, 2
    with mounted(tmp_path / "mnt", cache, log, *options) as mount:
        wait_for(lambda: "set list unavailable after 120 pages" in mount.log(), "the cut", 120)
        first = len(os.listdir(mount.mountpoint))
    assert first == 120 * state.page_size
    state.search_limit = None
    asked_before = len(state.searches)
    with mounted(tmp_path / "mnt", cache, log, *options) as mount:
        wait_for(lambda: mount.log().count("set list synced") == 1, "the rest synced", 120)
        listed = set(os.listdir(mount.mountpoint))
    every = {set_folder_name(i, f"Artist {i}", f"Song {i}") for i in range(1, BIG + 1)}
    assert listed == every
    # The second session went on from the first one's cursor, not from the start.
    assert "cursor_string" in state.searches[asked_before]
    # Past the cap, a slice of later ranked dates; no set is missing between the slices, and
    # re-reading the overlap cost a page or two.
    slices = {search.get("q", "") for search in state.searches}
    assert len(slices) == 2 and any(q.startswith("ranked>=") for q in slices)
    assert len(state.searches) - 1 <= BIG // state.page_size + 3


def test_a_catalogue_file_root_is_whole_as_soon_as_the_mount_is_up(tmp_path: Path):
    # Mino names the file's sets: paced, so naming them takes seconds, not milliseconds.
    sets = {
        set_id: ApiSet(set_id, tmp_path / "none.osz", f"Artist {set_id}", f"Song {set_id}", "M", [])
        for set_id in range(500, 512)
    }
    listed = tmp_path / "sets.txt"
    listed.write_text("".join(f"{set_id}\n" for set_id in sets))
    every = {set_folder_name(i, f"Artist {i}", f"Song {i}") for i in sets}
    state = MinoState(sets)
    server = ThreadedApp(mino_app(state))
    options = ["--source", f"catboy={server.url}", "--mirror-per-minute", "120"]
    options += ["--catalogue-file", str(listed), *NO_READ_AHEAD]
    cache, log = tmp_path / "cache", tmp_path / "mount.log"
    try:
        with mounted(tmp_path / "mnt", cache, log, *options) as mount:
            assert set(os.listdir(mount.mountpoint)) == every
        assert "catalogue file: naming 12 sets before the mount comes up" in mount.log()
        # A later mount takes the names from the index: not one request but its preflight's.
        asked = sum(state.requests.values())
        with mounted(tmp_path / "mnt", cache, log, *options) as mount:
            assert set(os.listdir(mount.mountpoint)) == every
        assert sum(state.requests.values()) == asked + 1 and state.requests["ratelimits"] == 2
    finally:
        server.stop()
    assert state.requests["set"] == len(sets) and state.requests["search"] == 0
    assert (state.too_many, state.teapots) == (0, 0)
