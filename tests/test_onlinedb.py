"""online.db below FUSE: its schema versions, its queries, the download (a loopback server,
bzip2 streamed) and the weekly refresh that keeps the old copy until the new one checks out;
and `osufs cache import` of the .osu tarball into a real temporary store."""

from __future__ import annotations

import bz2
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from osufs.importer import Importer, ImportError_
from osufs.sources.onlinedb import (
    REFRESH_AFTER,
    OnlineDb,
    OnlineDbError,
    OnlineDbSource,
    WorkingCopy,
    download,
    schema_version,
)
from osufs.store import Store
from tests.bulk import DUMP, Bulk, build_bulk, write_online_db, write_tarball
from tests.helpers import ThreadedApp, osufs_command


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Bulk:
    return build_bulk(tmp_path_factory.mktemp("bulk"))


class Files:
    """A loopback server of a few files, counting requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests = 0

        async def serve(request: Request) -> Response:
            self.requests += 1
            body = self.files.get(request.url.path)
            return Response(body or b"", status_code=200 if body is not None else 404)

        self.app = Starlette(routes=[Route("/{path:path}", serve)])


@pytest.fixture
def files() -> Iterator[tuple[Files, str]]:
    app = Files()
    server = ThreadedApp(app.app)
    try:
        yield app, server.url
    finally:
        server.stop()


def test_schema_versions(bulk: Bulk, tmp_path: Path):
    assert schema_version(bulk.online_db) == 2
    first = tmp_path / "v1.db"
    write_online_db(first, bulk.beatmaps[:3], version=None)
    assert schema_version(first) == 1
    future = tmp_path / "v7.db"
    write_online_db(future, bulk.beatmaps[:3], version=7)
    with pytest.raises(OnlineDbError, match="schema version 7"):
        schema_version(future)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(OnlineDbError, match="not an SQLite database"):
        schema_version(garbage)


def test_sets_and_their_difficulties(bulk: Bulk, tmp_path: Path):
    copy = WorkingCopy(tmp_path)
    copy.copy_from(bulk.online_db)
    db = OnlineDb(copy.path)
    try:
        trusted = [set_id for set_id, _time in db.sets((1, 2, 4))]
        assert trusted == bulk.sets(1, 2, 4)
        assert [s for s, _t in db.sets(None)] == bulk.sets()
        assert bulk.sets(0) and not set(bulk.sets(0)) & set(trusted)
        set_id = bulk.sets()[0]
        rows = db.beatmaps(set_id)
        mine = sorted((b for b in bulk.beatmaps if b.set_id == set_id), key=lambda b: b.beatmap_id)
        assert [(r.beatmap_id, r.md5, r.filename) for r in rows] == [
            (b.beatmap_id, b.md5, b.filename) for b in mine
        ]
        assert len(db.by_md5()) == len(bulk.beatmaps)
    finally:
        db.close()
    with sqlite3.connect(copy.path) as check:  # the working copy has its indexes
        names = {n for (n,) in check.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"osufs_by_set", "osufs_by_md5"} <= names


def test_download_is_streamed_and_a_bad_one_keeps_the_old_copy(
    bulk: Bulk, files: tuple[Files, str], tmp_path: Path
):
    app, url = files
    packed = bz2.compress(bulk.online_db.read_bytes())
    app.files["/online.db.bz2"] = packed
    app.files["/broken.bz2"] = packed[: len(packed) // 2]
    future = tmp_path / "future.db"
    write_online_db(future, bulk.beatmaps[:2], version=9)
    app.files["/future.bz2"] = bz2.compress(future.read_bytes())
    copy = WorkingCopy(tmp_path / "cache")

    async def fetch(path: str) -> None:
        async with httpx.AsyncClient() as client:
            await download(client, url + path, copy)

    trio.run(fetch, "/online.db.bz2")
    assert schema_version(copy.path) == 2
    before = copy.path.read_bytes()
    with pytest.raises(OnlineDbError, match="cut short"):
        trio.run(fetch, "/broken.bz2")
    with pytest.raises(OnlineDbError, match="schema version 9"):
        trio.run(fetch, "/future.bz2")
    assert copy.path.read_bytes() == before
    assert sorted(p.name for p in copy.folder.iterdir()) == ["online.db", "origin.json"]


def test_a_week_old_copy_is_refreshed(bulk: Bulk, files: tuple[Files, str], tmp_path: Path):
    app, url = files
    app.files["/online.db.bz2"] = bz2.compress(bulk.online_db.read_bytes())

    async def session() -> tuple[int, int]:
        async with httpx.AsyncClient() as client:
            source = OnlineDbSource(
                client, url + "/online.db.bz2", cache_dir=tmp_path, local=lambda md5: None
            )
            await source.prepare()
            await source.refresh()  # fresh: nothing asked
            first = app.requests
            origin = source.copy.origin()
            origin["at"] = time.time() - REFRESH_AFTER - 60
            (source.copy.folder / "origin.json").write_text(__import__("json").dumps(origin))
            await source.refresh()
            source.close()
            return first, app.requests

    first, after = trio.run(session)
    assert (first, after) == (1, 2)


def test_tarball_import_twice_adds_nothing(bulk: Bulk, tmp_path: Path):
    store = Store(tmp_path / "cache")
    db = OnlineDb(bulk.online_db)
    try:
        tally = Importer(store, db).run([bulk.tarball])
        assert (tally.imported, tally.already, tally.unmatched, tally.refused) == (
            len(bulk.beatmaps), 0, 1, 0,
        )  # fmt: skip
        for beatmap in bulk.beatmaps:
            assert store.osu_bytes(beatmap.md5) == beatmap.data
        assert store.osu_bytes(hashlib.md5(bulk.edited).hexdigest()) is None
        named = {set_id for set_id, _record in store.catalogue_page(0, 1000)}
        assert named == set(bulk.sets())
        stored = store.content_bytes()
        again = Importer(store, db).run([bulk.tarball])
        assert (again.imported, again.already, again.unmatched) == (0, len(bulk.beatmaps), 1)
        assert store.content_bytes() == stored
    finally:
        db.close()
        store.close()


def test_without_online_db_files_are_known_by_their_metadata(bulk: Bulk, tmp_path: Path):
    store = Store(tmp_path / "cache")
    try:
        tally = Importer(store, None).run([bulk.tarball])
        # The edit still names its beatmap: kept by md5, but no listing ever names that md5.
        assert (tally.imported, tally.unmatched) == (len(bulk.beatmaps) + 1, 0)
        assert store.catalogue_count() == 0  # no time known: a source names the sets
    finally:
        store.close()


def test_a_corrupt_tarball_is_a_clear_error_and_leaves_whole_files(bulk: Bulk, tmp_path: Path):
    data = bulk.tarball.read_bytes()
    broken = tmp_path / f"{DUMP}.tar.bz2"
    broken.write_bytes(data[: len(data) // 2] + b"\0" * 64 + data[len(data) // 2 + 64 :])
    store = Store(tmp_path / "cache")
    db = OnlineDb(bulk.online_db)
    try:
        with pytest.raises(ImportError_, match="damaged"):
            Importer(store, db).run([broken])
        assert os.listdir(store.tmp_dir) == [".lock"]  # no temporary file left behind
        report = store.verify()
        assert not report.damaged and not report.dangling
        for beatmap in bulk.beatmaps:
            data = store.osu_bytes(beatmap.md5)
            assert data is None or data == beatmap.data
    finally:
        db.close()
        store.close()


def test_cache_import_command_prints_the_counts(bulk: Bulk, tmp_path: Path):
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data")}
    command = osufs_command(
        "cache", "import", str(bulk.tarball), "--cache-dir", str(cache),
        "--onlinedb", str(bulk.online_db),
    )  # fmt: skip
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr
    assert f"{len(bulk.beatmaps)} imported, 0 already there, 1 unmatched, 0 refused" in first.stdout
    assert "edited.osu: unmatched" in first.stdout
    # The second time, online.db is the copy the first left in the cache.
    second = subprocess.run(command[:-2], capture_output=True, text=True, env=env, timeout=120)
    assert second.returncode == 0, second.stderr
    assert f"0 imported, {len(bulk.beatmaps)} already there, 1 unmatched" in second.stdout
    broken = tmp_path / "broken.tar.bz2"
    broken.write_bytes(b"BZh91AY&SY" + b"\x55" * 4000)
    third = subprocess.run(
        [*command[:5], str(broken), *command[6:8]], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert third.returncode == 1
    assert "broken.tar.bz2: the tarball is damaged" in third.stderr


def test_unknown_schema_refused_by_import(bulk: Bulk, tmp_path: Path):
    future = tmp_path / "online.db"
    write_online_db(future, bulk.beatmaps, version=3)
    result = subprocess.run(
        osufs_command(
            "cache", "import", str(bulk.tarball), "--cache-dir", str(tmp_path / "cache"),
            "--onlinedb", str(future),
        ),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "online.db schema version 3 is not one this osufs knows" in result.stderr


def test_tarball_names_do_not_matter(bulk: Bulk, tmp_path: Path):
    odd = tmp_path / "odd.tar.bz2"
    names = {f"{b.set_id} whatever/{i}.OSU": b.data for i, b in enumerate(bulk.beatmaps)}
    write_tarball(odd, names)
    store = Store(tmp_path / "cache")
    db = OnlineDb(bulk.online_db)
    try:
        assert Importer(store, db).run([odd]).imported == len(bulk.beatmaps)
    finally:
        db.close()
        store.close()
