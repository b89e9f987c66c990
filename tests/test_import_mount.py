"""Importing what players already have (issue 17), through real mounts: a folder of `.osz` and
an osu! stable Songs folder with one edited `.osu`, imported with `osufs cache import`, then
mounted with no reachable network source: listed, grepped, read and compared byte for byte."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from osufs.store import Store
from tests.bulk import Bulk, Songs, build_bulk, build_songs, write_tarball
from tests.helpers import Server, mounted, osufs_command
from tests.test_bulk_mount import cache_import, folder_of
from tests.test_stable_metadata import snapshot


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Bulk:
    return build_bulk(tmp_path_factory.mktemp("bulk"), count=6)


@pytest.fixture(scope="module")
def songs(bulk: Bulk, tmp_path_factory: pytest.TempPathFactory) -> Songs:
    return build_songs(tmp_path_factory.mktemp("songs") / "Songs", bulk)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No lazer data folder of the user's: an empty one of the test's."""
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}


def counts(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def set_dir(root: Path, set_id: int) -> Path:
    return next(path for path in root.iterdir() if path.name.startswith(f"{set_id} "))


def tree_of(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_folder_of_osz_is_served_with_no_network(
    bulk: Bulk, songs: Songs, tmp_path: Path, env: dict[str, str]
):
    cache = tmp_path / "cache"
    files = sum(len(tree) for tree in songs.trees.values())
    osu = sum(name.endswith(".osu") for tree in songs.trees.values() for name in tree)
    # No online.db: each archive stands on its own directory's sizes and CRC32s.
    assert counts(cache_import(cache, env, str(bulk.archives))) == (
        f"{files} imported, 0 already there, 0 unmatched, 0 refused"
    )
    store = Store(cache)
    stored = store.content_bytes()
    store.close()
    assert counts(cache_import(cache, env, str(bulk.archives))) == (
        f"0 imported, {files} already there, 0 unmatched, 0 refused"
    )
    store = Store(cache)
    assert store.content_bytes() == stored  # the second import added nothing
    store.close()
    with mounted(tmp_path / "mnt", cache, tmp_path / "m1.log", "--offline", env=env) as mount:
        root = mount.mountpoint
        assert sorted(os.listdir(root)) == sorted(folder_of(bulk, s) for s in bulk.sets())
        for set_id, tree in songs.trees.items():
            assert tree_of(set_dir(root, set_id)) == tree
        found = subprocess.run(["grep", "-rl", "HitObjects", str(root)], capture_output=True)
        assert found.returncode == 0 and len(found.stdout.splitlines()) == osu
        before = snapshot(root)
    with mounted(tmp_path / "mnt", cache, tmp_path / "m2.log", "--offline", env=env) as mount:
        assert snapshot(mount.mountpoint) == before
    # With a mirror and online.db as sources, nothing is asked of either, and nothing moves.
    server = Server(bulk.archives, tmp_path / "server.log")
    try:
        options = (
            "--source", f"onlinedb={bulk.online_db}", "--catalogue", "all",
            "--source", f"hexide={server.url}", "--read-ahead", "0",
        )  # fmt: skip
        with mounted(tmp_path / "mnt", cache, tmp_path / "m3.log", *options, env=env) as mount:
            probed = server.stats()["requests"]  # the preflight asks each source once
            assert snapshot(mount.mountpoint, read=True) == before
            assert server.stats()["requests"] == probed
    finally:
        server.stop()


def test_a_songs_folder_with_online_db_keeps_only_its_known_osu(
    bulk: Bulk, songs: Songs, tmp_path: Path, env: dict[str, str]
):
    cache = tmp_path / "cache"
    files = sum(len(tree) for tree in songs.trees.values())
    osu = sum(name.endswith(".osu") for tree in songs.trees.values() for name in tree)
    result = cache_import(cache, env, str(songs.folder), "--onlinedb", str(bulk.online_db))
    # No archive directory is known: audio and images cannot be checked, so none is taken.
    others = files - osu
    assert counts(result) == f"{osu - 1} imported, 0 already there, {others} unmatched, 1 refused"
    edited_set, edited_name = songs.edited
    assert f"{edited_name}: refused, the player's edit" in result.stdout
    options = ("--offline", "--source", f"onlinedb={bulk.online_db}", "--catalogue", "all")
    with mounted(tmp_path / "mnt", cache, tmp_path / "m.log", *options, env=env) as mount:
        root = mount.mountpoint
        assert sorted(os.listdir(root)) == sorted(folder_of(bulk, s) for s in bulk.sets())
        for set_id, tree in songs.trees.items():
            if set_id == edited_set:
                continue
            listed = set_dir(root, set_id)
            assert {name: (listed / name).read_bytes() for name in os.listdir(listed)} == {
                name: data for name, data in tree.items() if name.endswith(".osu")
            }
        everything = b"".join(path.read_bytes() for path in root.glob("*/*.osu"))
        assert b"my edit" not in everything


def test_a_songs_folder_checked_against_the_archive_directory(
    bulk: Bulk, songs: Songs, tmp_path: Path, env: dict[str, str]
):
    cache = tmp_path / "cache"
    files = sum(len(tree) for tree in songs.trees.values())
    server = Server(bulk.archives, tmp_path / "server.log")
    try:
        hexide = ("--source", f"hexide={server.url}", "--read-ahead", "0")
        with mounted(tmp_path / "mnt", cache, tmp_path / "m1.log", *hexide, env=env) as mount:
            for set_id in songs.trees:
                os.listdir(set_dir(mount.mountpoint, set_id))  # its archive's directory only
            listed = snapshot(mount.mountpoint)
        asked = server.stats()["requests"]
        store = Store(cache)
        # (the .osu files of an archive with legacy-encoded names were read to decode them)
        kept = sum(len(store.cached_entries(set_id)) for set_id in songs.trees)
        store.close()
        result = cache_import(cache, env, str(songs.folder))
        assert counts(result) == (
            f"{files - 1 - kept} imported, {kept} already there, 0 unmatched, 1 refused"
        )
        edited_set, edited_name = songs.edited
        assert f"{edited_name}: refused, the player's edit" in result.stdout
        with mounted(tmp_path / "mnt", cache, tmp_path / "m2.log", "--offline", env=env) as mount:
            root = mount.mountpoint
            assert snapshot(root) == listed  # the archive's sizes, times and inodes
            for set_id, tree in songs.trees.items():
                for name, data in tree.items():
                    if (set_id, name) == songs.edited:
                        with pytest.raises(OSError):
                            (set_dir(root, set_id) / name).read_bytes()  # not the edit
                    else:
                        assert (set_dir(root, set_id) / name).read_bytes() == data
        assert server.stats()["requests"] == asked
        with mounted(tmp_path / "mnt", cache, tmp_path / "m3.log", *hexide, env=env) as mount:
            edited = set_dir(mount.mountpoint, edited_set) / edited_name
            assert edited.read_bytes() == songs.trees[edited_set][edited_name]
            assert snapshot(mount.mountpoint) == listed
    finally:
        server.stop()
    again = cache_import(cache, env, str(songs.folder))
    assert counts(again) == f"0 imported, {files - 1} already there, 0 unmatched, 1 refused"


def stored_member_data(osz: Path, name: str) -> int:
    """Where a stored member's bytes start in its archive."""
    with zipfile.ZipFile(osz) as zf:
        info = zf.getinfo(name)
    with open(osz, "rb") as file:
        file.seek(info.header_offset + 26)
        lengths = file.read(4)
    return info.header_offset + 30 + int.from_bytes(lengths[:2], "little") + int.from_bytes(
        lengths[2:], "little"
    )


def test_a_damaged_archive_and_a_bad_member_are_refused(
    bulk: Bulk, songs: Songs, tmp_path: Path, env: dict[str, str]
):
    folder = tmp_path / "downloads"
    folder.mkdir()
    whole, garbled, cut = sorted(songs.trees)[:3]
    shutil.copy(bulk.archives / f"{whole}.osz", folder)
    data = bytearray((bulk.archives / f"{garbled}.osz").read_bytes())
    at = stored_member_data(bulk.archives / f"{garbled}.osz", "audio.mp3") + 100
    data[at] ^= 0xFF
    (folder / f"{garbled}.osz").write_bytes(data)
    original = (bulk.archives / f"{cut}.osz").read_bytes()
    (folder / f"{cut}.osz").write_bytes(original[: len(original) // 2])
    cache = tmp_path / "cache"
    result = cache_import(cache, env, str(folder))
    good = len(songs.trees[whole]) + len(songs.trees[garbled]) - 1
    assert counts(result) == f"{good} imported, 0 already there, 0 unmatched, 2 refused"
    assert f"{cut}.osz: refused, not a readable archive" in result.stdout
    assert "audio.mp3" in result.stdout and "CRC32 mismatch" in result.stdout
    with mounted(tmp_path / "mnt", cache, tmp_path / "m.log", "--offline", env=env) as mount:
        root = mount.mountpoint
        assert sorted(os.listdir(root)) == sorted(folder_of(bulk, s) for s in (whole, garbled))
        assert tree_of(set_dir(root, whole)) == songs.trees[whole]
        for name, content in songs.trees[garbled].items():
            path = set_dir(root, garbled) / name
            if name == "audio.mp3":
                assert path.stat().st_size == len(content)  # listed, as its archive has it
                with pytest.raises(OSError):
                    path.read_bytes()  # but nothing damaged was kept
            else:
                assert path.read_bytes() == content
    verify = subprocess.run(
        osufs_command("cache", "verify", "--cache-dir", str(cache)), capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout


def test_a_corrupt_tarball_leaves_only_whole_files_in_the_mount(
    bulk: Bulk, tmp_path: Path, env: dict[str, str]
):
    # The dump's files first, then 600 kB no bzip2 block can shrink, damaged near its end.
    files = {f"{b.beatmap_id}.osu": b.data for b in bulk.beatmaps}
    files |= {f"filler{n}.osu": os.urandom(50_000) for n in range(12)}
    broken = tmp_path / bulk.tarball.name
    write_tarball(broken, files, compresslevel=1)
    data = broken.read_bytes()
    at = len(data) * 3 // 4
    broken.write_bytes(data[:at] + b"\0" * 64 + data[at + 64 :])
    cache = tmp_path / "cache"
    result = cache_import(cache, env, str(broken), "--onlinedb", str(bulk.online_db))
    assert result.returncode == 1
    assert f"{broken.name}: the tarball is damaged" in result.stderr
    by_md5 = {b.md5: b.data for b in bulk.beatmaps}
    options = ("--offline", "--source", f"onlinedb={bulk.online_db}", "--catalogue", "all")
    with mounted(tmp_path / "mnt", cache, tmp_path / "m.log", *options, env=env) as mount:
        served = [path.read_bytes() for path in mount.mountpoint.glob("*/*.osu")]
    assert len(served) == len(bulk.beatmaps), "the files before the damage were imported"
    assert all(by_md5.get(hashlib.md5(data).hexdigest()) == data for data in served)
    verify = subprocess.run(
        osufs_command("cache", "verify", "--cache-dir", str(cache)), capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout


def test_an_osz_with_an_edited_osu_is_not_taken_as_the_sets_archive(
    bulk: Bulk, songs: Songs, tmp_path: Path, env: dict[str, str]
):
    set_id, name = songs.edited
    repacked = tmp_path / f"{set_id} my version.osz"
    with zipfile.ZipFile(bulk.archives / f"{set_id}.osz") as old, zipfile.ZipFile(
        repacked, "w"
    ) as new:
        for info in old.infolist():
            data = old.read(info)
            if info.filename == name:
                data = data.replace(b"[Metadata]", b"[Metadata]\r\nTags:my edit", 1)
            new.writestr(info, data)
    tree = songs.trees[set_id]
    osu = sorted(n for n in tree if n.endswith(".osu"))
    cache = tmp_path / "cache"
    result = cache_import(cache, env, str(repacked), "--onlinedb", str(bulk.online_db))
    others = len(tree) - len(osu) + 1  # the edit, and every file that is not a .osu
    assert counts(result) == (
        f"{len(osu) - 1} imported, 0 already there, {others} unmatched, 0 refused"
    )
    assert f"not taken as set {set_id}'s archive" in result.stdout
    options = ("--offline", "--source", f"onlinedb={bulk.online_db}")
    with mounted(tmp_path / "mnt", cache, tmp_path / "m.log", *options, env=env) as mount:
        listed = set_dir(mount.mountpoint, set_id)
        # Listed from online.db, every .osu but the edited one at hand: no archive tree at all.
        served = {n: (listed / n).read_bytes() for n in osu if n != name}
        assert served == {n: tree[n] for n in osu if n != name}
        assert not (set(os.listdir(listed)) - set(osu))
