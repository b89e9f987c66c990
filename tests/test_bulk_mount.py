"""The whole ranked library without harvesting (issue 17), through real mounts: `osufs cache
import` of the .osu tarball, then `--source onlinedb` lists every set and serves every .osu with
no request at all; the archive, asked only for audio, completes a set without moving anything."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs.names import set_folder_name
from osufs.osufile import parse_osu
from osufs.sources.onlinedb import time_ns
from tests.bulk import Beatmap as Row
from tests.bulk import (
    Bulk,
    build_bulk,
    synthetic_filename,
    synthetic_osu,
    write_online_db,
    write_tarball,
)
from tests.helpers import Server, mounted, osufs_command
from tests.test_stable_metadata import snapshot


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Bulk:
    return build_bulk(tmp_path_factory.mktemp("bulk"))


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No lazer data folder of the user's: an empty one of the test's."""
    return {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}


def cache_import(cache: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    command = osufs_command("cache", "import", *args, "--cache-dir", str(cache))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def folder_of(bulk: Bulk, set_id: int) -> str:
    first = min((b for b in bulk.beatmaps if b.set_id == set_id), key=lambda b: b.beatmap_id)
    meta = parse_osu(first.data)
    return set_folder_name(set_id, meta.artist, meta.title)


def set_time(bulk: Bulk, set_id: int) -> int:
    return max(time_ns(b.last_update) for b in bulk.beatmaps if b.set_id == set_id)


@pytest.fixture
def imported(bulk: Bulk, tmp_path: Path, env: dict[str, str]) -> Iterator[Path]:
    cache = tmp_path / "cache"
    result = cache_import(cache, env, str(bulk.tarball), "--onlinedb", str(bulk.online_db))
    assert result.returncode == 0, result.stderr
    yield cache


def check_every_osu(bulk: Bulk, root: Path, sets: list[int]) -> None:
    """Each set named from its .osu, its files named by online.db, timed by it, and the bytes."""
    assert sorted(os.listdir(root)) == sorted(folder_of(bulk, s) for s in sets)
    for set_id in sets:
        path = root / folder_of(bulk, set_id)
        mine = {b.filename: b for b in bulk.beatmaps if b.set_id == set_id}
        # (a set its archive completed lists more: its .osu files stay these)
        assert sorted(n for n in os.listdir(path) if n.endswith(".osu")) == sorted(mine)
        for name, beatmap in mine.items():
            st = os.stat(path / name)
            assert (st.st_size, st.st_mtime_ns) == (len(beatmap.data), set_time(bulk, set_id))
            assert (path / name).read_bytes() == beatmap.data


def test_imported_library_is_listed_and_grepped_with_no_request(
    bulk: Bulk, imported: Path, tmp_path: Path, env: dict[str, str]
):
    ranked_and_loved = bulk.sets(1, 2, 4)
    server = Server(bulk.archives, tmp_path / "server.log")
    try:
        options = (
            "--source", f"onlinedb={bulk.online_db}", "--source", f"hexide={server.url}",
            "--read-ahead", "0",
        )  # fmt: skip
        args = (tmp_path / "mnt", imported, tmp_path / "mount.log", *options)
        with mounted(*args, env=env) as mount:
            root = mount.mountpoint
            probed = server.stats()["requests"]  # the preflight asks each source once
            check_every_osu(bulk, root, ranked_and_loved)
            found = subprocess.run(["grep", "-rlc", "HitObjects", str(root)], capture_output=True)
            assert found.returncode == 0 and found.stderr == b""
            wanted = [b for b in bulk.beatmaps if b.approved in (1, 2, 4)]
            assert len(found.stdout.splitlines()) == len(wanted)
            assert probed <= 1
            assert server.stats()["requests"] == probed, "listing and grepping asked the mirror"
            before = snapshot(root)
            # The audio comes from the archive, which completes the set without moving a thing.
            set_id = ranked_and_loved[0]
            path = root / folder_of(bulk, set_id)
            audio = parse_osu(next(b.data for b in wanted if b.set_id == set_id)).audio_filename
            assert (path / audio).stat().st_size > 0
            assert server.stats()["requests"] > 0
            after = snapshot(root)
            assert {k: v for k, v in after.items() if k in before} == before
            assert len(after) > len(before)
        # Remounted, with no network source at all: the same sizes, times and inodes.
        offline = (tmp_path / "mnt", imported, tmp_path / "mount2.log", "--offline")
        with mounted(*offline, "--source", f"onlinedb={bulk.online_db}", env=env) as mount:
            again = snapshot(mount.mountpoint)
            assert again == after
            check_every_osu(bulk, mount.mountpoint, ranked_and_loved)
    finally:
        server.stop()


def test_offline_onlinedb_lists_everything_and_edits_are_not_listed(
    bulk: Bulk, imported: Path, tmp_path: Path, env: dict[str, str]
):
    options = ("--offline", "--source", f"onlinedb={bulk.online_db}", "--catalogue", "all")
    with mounted(tmp_path / "mnt", imported, tmp_path / "mount.log", *options, env=env) as mount:
        check_every_osu(bulk, mount.mountpoint, bulk.sets())  # the graveyard set too
        everything = b"".join(p.read_bytes() for p in mount.mountpoint.rglob("*.osu"))
        assert b"my edit" not in everything


def test_an_unknown_schema_version_stops_the_mount(bulk: Bulk, tmp_path: Path):
    future = tmp_path / "online.db"
    write_online_db(future, bulk.beatmaps, version=5)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    result = subprocess.run(
        osufs_command(
            "mount", str(mountpoint), "--foreground", "--cache-dir", str(tmp_path / "cache"),
            "--source", f"onlinedb={future}",
        ),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "online.db schema version 5 is not one this osufs knows" in result.stderr
    assert not os.path.ismount(mountpoint)


def test_an_interrupted_import_resumes(tmp_path: Path, env: dict[str, str]):
    rows = []
    files = {}
    for set_id in range(1, 2001):
        for level in range(1, 7):
            data = synthetic_osu(set_id, set_id * 10 + level, level)
            rows.append(
                Row(set_id, set_id * 10 + level, 1, __import__("hashlib").md5(data).hexdigest(),
                    "2024-01-01 00:00:00", synthetic_filename(data), data)
            )  # fmt: skip
            files[f"{set_id * 10 + level}.osu"] = data
    write_online_db(tmp_path / "online.db", rows)
    write_tarball(tmp_path / "dump.tar.bz2", files)
    cache = tmp_path / "cache"
    command = osufs_command(
        "cache", "import", str(tmp_path / "dump.tar.bz2"), "--cache-dir", str(cache),
        "--onlinedb", str(tmp_path / "online.db"),
    )  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while len(list((cache / "content").glob("*/*/*"))) < 2500:  # the first batch is in
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the import finished before the signal arrived")
    assert process.returncode == 1 and b"interrupted" in err, err
    first = int(out.decode().rsplit("\n", 2)[-2].split()[0])
    assert 0 < first < len(rows)
    again = cache_import(cache, env, str(tmp_path / "dump.tar.bz2"))
    assert again.returncode == 0, again.stderr
    assert f"{len(rows) - first} imported, {first} already there, 0 unmatched" in again.stdout
    assert sorted(os.listdir(cache / "tmp")) == [".lock"] or all(
        os.listdir(cache / "tmp" / d) == [".lock"] for d in os.listdir(cache / "tmp") if d[0] != "."
    )
