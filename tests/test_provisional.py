"""Listing a set without its archive (issue 10; docs/sources.md): with no unmetered archive
source, a set lists its difficulties from `/osu/<id>`, pinned forever; the archive comes only
for a name that listing lacks, and completes it without moving anything (issue 9). Real mounts
over the loopback fake of tests/fake_api.py."""

from __future__ import annotations

import errno
import os
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs.osufile import parse_osu
from osufs.sources.api import _iso_ns
from tests.fake_api import SESSION_COOKIE, ApiState, api_app
from tests.helpers import ThreadedApp, mounted
from tests.test_api_sources import (
    NO_READ_AHEAD,
    api_options,
    api_sets,
    errno_of,
    folder,
    osu_files,
    wait_for,
)
from tests.test_api_sources import archives as archives  # the module's fixture, shared
from tests.test_api_sources import client_file as client_file
from tests.test_stable_metadata import snapshot


@pytest.fixture
def api(archives: Path) -> Iterator[tuple[ApiState, str]]:
    state = ApiState(api_sets(archives))
    server = ThreadedApp(api_app(state))
    try:
        yield state, server.url
    finally:
        server.stop()


@pytest.fixture
def cookie_file(tmp_path: Path) -> Path:
    path = tmp_path / "cookie"
    path.write_text(SESSION_COOKIE)
    path.chmod(0o600)
    return path


def with_the_site(url: str, client_file: Path, cookie_file: Path, *extra: str) -> list[str]:
    """The API for listings and .osu files, the official site for archives, on demand."""
    return [
        *api_options(url, client_file, "--catalogue", "none"),
        "--source",
        f"osu={url}",
        "--cookie-file",
        str(cookie_file),
        *NO_READ_AHEAD,
        *extra,
    ]


def updated_ns(state: ApiState, set_id: int) -> int:
    return _iso_ns(state.sets[set_id].summary()["last_updated"])


def archive_members(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}


def test_the_api_alone_lists_sets_by_their_osu_files(
    api: tuple[ApiState, str], archives: Path, client_file: Path, tmp_path: Path
):
    state, url = api
    ranked = sorted(set_id for set_id, s in state.sets.items() if s.status == "ranked")
    options = api_options(url, client_file, "--catalogue", "ranked")  # reading ahead, too
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        root = mount.mountpoint
        every = {folder(state, set_id) for set_id in ranked}
        wait_for(lambda: set(os.listdir(root)) == every, "the catalogue listed")
        for set_id in ranked:
            path = root / folder(state, set_id)
            expected = osu_files(archives / f"{set_id}.osz")
            # Named as in the archive, sized and timed from the site's bytes and the set's time.
            assert sorted(os.listdir(path)) == sorted(expected), set_id
            for name, data in expected.items():
                stat = os.stat(path / name)
                assert (stat.st_size, stat.st_mtime_ns) == (len(data), updated_ns(state, set_id))
                assert stat.st_ino >> 32 == set_id
                assert (path / name).read_bytes() == data
            assert os.getxattr(path, "user.osufs.cached") == b"provisional"
            audio = parse_osu(next(iter(expected.values()))).audio_filename
            # No source has the archive: a name the listing lacks is not there.
            assert errno_of(lambda path=path, audio=audio: os.stat(path / audio)) == errno.ENOENT
        found = subprocess.run(["grep", "-rl", "Mode:", str(root)], capture_output=True)
        assert found.returncode == 0 and found.stderr == b""
        wanted = sum(len(osu_files(archives / f"{set_id}.osz")) for set_id in ranked)
        assert len(found.stdout.splitlines()) == wanted
    assert not state.downloads and not state.mirrors, "an archive was asked for"
    for set_id in ranked:
        for beatmap in state.sets[set_id].beatmaps:
            assert state.osu_requests[beatmap.beatmap_id] == 1, (set_id, beatmap.version)
    assert state.violations == []
    assert mount.log().count("listed before its archive") == len(ranked)


def changed_archive(original: Path, target: Path) -> dict[str, str]:
    """A copy of a sample set as the site might hand it out later: Hard under its old creator's
    name (the same bytes), Normal older (other bytes), a difficulty more. Returns the changes."""
    members = archive_members(original)
    osu = sorted(name for name in members if name.endswith(".osu"))
    hard = next(name for name in osu if "[Hard]" in name)
    normal = next(name for name in osu if "[Normal]" in name)
    renamed = hard.replace("(Deif)", "(OldName)")
    added = hard.replace("[Hard]", "[Extra]")
    members[renamed] = members.pop(hard)
    members[normal] = members[normal].replace(b"[General]", b"// before an edit\r\n[General]")
    members[added] = members[renamed].replace(b"Version:Hard", b"Version:Extra")
    assert members[added] != members[renamed]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (2019, 6, 1, 10, 0, 0)), data)
    return {"hard": hard, "renamed": renamed, "normal": normal, "added": added}


def test_the_archive_comes_for_the_audio_and_completes_the_listing_without_moving_it(
    api: tuple[ApiState, str],
    archives: Path,
    client_file: Path,
    cookie_file: Path,
    tmp_path: Path,
):
    state, url = api
    set_id = 100001
    served = tmp_path / "served.osz"
    changes = changed_archive(archives / f"{set_id}.osz", served)
    state.sets[set_id].archive = served  # the API still describes the original difficulties
    listed = osu_files(archives / f"{set_id}.osz")
    cache = tmp_path / "cache"
    options = with_the_site(url, client_file, cookie_file)
    with mounted(tmp_path / "mnt", cache, tmp_path / "1.log", *options) as mount:
        path = mount.mountpoint / os.readlink(mount.mountpoint / str(set_id))
        assert sorted(os.listdir(path)) == sorted(listed)
        before = snapshot(mount.mountpoint)
        for name, data in listed.items():
            assert (path / name).read_bytes() == data
        assert not state.downloads, "listing and reading .osu files fetched the archive"

        audio = parse_osu(listed[changes["hard"]]).audio_filename
        assert (path / audio).read_bytes() == archive_members(served)[audio]
        assert dict(state.downloads) == {set_id: 1}
        after = snapshot(mount.mountpoint, read=True)  # the rest by ranges of that download
        assert os.getxattr(path, "user.osufs.cached") != b"provisional"

        # Nothing listed before moved; the archive's other files come after it.
        assert {key: after[key] for key in before} == before
        pinned_inodes = {ino for _size, _mtime, _mode, ino in before.values()}
        for key in after.keys() - before.keys():
            assert after[key][3] > max(pinned_inodes), key
        names = set(os.listdir(path))
        assert changes["renamed"] not in names, "a listed difficulty appeared twice"
        assert names == set(listed) | {
            changes["added"],
            audio,
            "bg.jpg",
            "sb",
            "Soleily - Renatus 100001 (Deif).osb",
            "soft-hitclap.wav",
        }
        # The listed copies stay, even where the archive's differs; an added one is the zip's.
        for name, data in listed.items():
            assert (path / name).read_bytes() == data
        added = path / changes["added"]
        assert added.read_bytes() == archive_members(served)[changes["added"]]
        assert os.stat(added).st_mtime_ns != updated_ns(state, set_id)
    log_text = mount.log()
    assert f"as {changes['renamed']!r}; it stays listed under the name" in log_text
    assert f"the archive's {changes['normal']!r} differs from the copy listed" in log_text
    assert f"the archive adds {changes['added']!r}" in log_text

    # Another mount, and one offline: the same entries, the same numbers, the same bytes.
    with mounted(tmp_path / "mnt", cache, tmp_path / "2.log", *options) as mount:
        assert snapshot(mount.mountpoint, read=True) == after
    with mounted(tmp_path / "mnt", cache, tmp_path / "3.log", "--offline") as mount:
        assert snapshot(mount.mountpoint) == after
        for name, data in listed.items():
            assert (
                mount.mountpoint / os.readlink(mount.mountpoint / str(set_id)) / name
            ).read_bytes() == data
    assert dict(state.downloads) == {set_id: 1}


def test_a_provisional_listing_survives_a_remount_before_its_archive(
    api: tuple[ApiState, str],
    archives: Path,
    client_file: Path,
    cookie_file: Path,
    tmp_path: Path,
):
    state, url = api
    cache = tmp_path / "cache"
    options = with_the_site(url, client_file, cookie_file)
    with mounted(tmp_path / "mnt", cache, tmp_path / "1.log", *options) as mount:
        os.listdir(mount.mountpoint / "100002")
        first = snapshot(mount.mountpoint, read=True)
    asked = sum(state.osu_requests.values())
    with mounted(tmp_path / "mnt", cache, tmp_path / "2.log", "--offline") as mount:
        assert snapshot(mount.mountpoint, read=True) == first
        path = mount.mountpoint / os.readlink(mount.mountpoint / "100002")
        assert os.getxattr(path, "user.osufs.cached") == b"provisional"
        # Offline, a name the listing lacks cannot fetch the archive: a clear EIO.
        assert errno_of(lambda: os.stat(path / "audio.mp3")) == errno.EIO
    assert sum(state.osu_requests.values()) == asked and not state.downloads


def test_a_difficulty_without_its_checked_bytes_waits_for_the_archive(
    api: tuple[ApiState, str],
    archives: Path,
    client_file: Path,
    cookie_file: Path,
    tmp_path: Path,
):
    state, url = api
    wrong = state.sets[100002].beatmaps[0]
    state.wrong_osu.add(wrong.beatmap_id)
    failing = state.sets[100004].beatmaps[1]
    state.failing_osu.add(failing.beatmap_id)
    expected = osu_files(archives / "100002.osz")
    wrong_name = next(n for n, d in expected.items() if d == wrong.data)
    options = with_the_site(url, client_file, cookie_file)
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        # A wrong md5: that difficulty is left out, never listed with the site's bytes.
        path = mount.mountpoint / os.readlink(mount.mountpoint / "100002")
        assert sorted(os.listdir(path)) == sorted(set(expected) - {wrong_name})
        assert not state.downloads
        # Asking for it by name fetches the archive, which brings it with its own time.
        assert (path / wrong_name).read_bytes() == wrong.data
        assert os.stat(path / wrong_name).st_mtime_ns != updated_ns(state, 100002)
        assert dict(state.downloads) == {100002: 1}

        # A .osu the site cannot send now: the set is not listed (EIO), nothing is stored...
        assert errno_of(lambda: os.listdir(mount.mountpoint / "100004")) == errno.EIO
        assert "cannot be fetched now" in mount.log()
        good = [b.beatmap_id for b in state.sets[100004].beatmaps if b is not failing]
        assert all(state.osu_requests[beatmap] == 1 for beatmap in good)
        # ... and once it can be, the whole set is listed, without asking for the others again.
        state.failing_osu.clear()
        names = os.listdir(mount.mountpoint / "100004")
        assert sorted(names) == sorted(osu_files(archives / "100004.osz"))
        assert all(state.osu_requests[beatmap] == 1 for beatmap in good)
        assert os.path.ismount(mount.mountpoint)
    assert "is not listed until the archive comes" in mount.log()
    assert dict(state.downloads) == {100002: 1}


def test_a_listing_completed_by_another_mount_shows_at_its_next_readdir(
    api: tuple[ApiState, str],
    archives: Path,
    client_file: Path,
    cookie_file: Path,
    tmp_path: Path,
):
    """Two mounts on one cache: the second fetches the archive, and the first, whose kernel
    holds the provisional listing (no-open mode), lists the whole set soon after."""
    state, url = api
    set_id = 100001
    options = with_the_site(url, client_file, cookie_file)
    listed = osu_files(archives / f"{set_id}.osz")
    whole = {name.split("/")[0] for name in archive_members(archives / f"{set_id}.osz")}
    cache = tmp_path / "cache"
    with (
        mounted(tmp_path / "m1", cache, tmp_path / "1.log", *options) as one,
        mounted(tmp_path / "m2", cache, tmp_path / "2.log", *options) as two,
    ):
        first = one.mountpoint / os.readlink(one.mountpoint / str(set_id))
        assert sorted(os.listdir(first)) == sorted(listed)
        assert sorted(os.listdir(first)) == sorted(listed)  # cached by the kernel, or asked
        second = two.mountpoint / os.readlink(two.mountpoint / str(set_id))
        audio = parse_osu(next(iter(listed.values()))).audio_filename
        assert (second / audio).read_bytes() == archive_members(archives / f"{set_id}.osz")[audio]
        wait_for(lambda: set(os.listdir(first)) == whole, "the first mount lists the archive's")
        assert (first / audio).read_bytes() == (second / audio).read_bytes()
    assert dict(state.downloads) == {set_id: 1}
