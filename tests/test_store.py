"""The Store on its own: dedup, budget and eviction order, pins, verify, gc, crashes, map growth."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import msgpack
import pytest

from osufs.archive import Limits, ZipMember
from osufs.cache import parse_size
from osufs.fetch.ingest import loose_member, opener, write_members
from osufs.listing import (
    Entry,
    Pin,
    PinnedFile,
    SetListing,
    build_listing,
    complete_listing,
    provisional_listing,
)
from osufs.store import SCHEMA_VERSION, HashingWriter, PendingOsu, Store

KB = 1024


def commit(store: Store, set_id: int, members: dict[int, bytes]) -> None:
    """Store members of a set the way fetching does: the one write protocol."""
    items = [(entry, opener(data), loose_member(data)) for entry, data in members.items()]
    write_members(store, set_id, items, Limits())


def data_for(set_id: int, entry: int, size: int = 10 * KB) -> bytes:
    seed = hashlib.sha256(f"{set_id}:{entry}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def fill(store: Store, set_id: int, members: int = 2, size: int = 10 * KB) -> None:
    commit(store, set_id, {e: data_for(set_id, e, size) for e in (1, 2)[:members]})


def cached(store: Store) -> list[int]:
    return [row.set_id for row in store.cached_sets()]


def content_files(store: Store) -> list[Path]:
    return sorted(p for p in store.content_dir.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "cache")
    try:
        yield store
    finally:
        store.close()


def test_shared_bytes_are_stored_once(store: Store):
    shared = b"hitsound" * 1000
    commit(store, 1, {1: shared, 2: b"one"})
    commit(store, 2, {5: shared, 6: b"two"})
    assert store.blob_path(1, 1) == store.blob_path(2, 5)
    assert store.blob_path(1, 1).read_bytes() == shared
    assert len(content_files(store)) == 3
    stats = store.stats()
    assert (stats.sets, stats.members, stats.content_files) == (2, 4, 3)
    assert stats.stored_bytes == len(shared) + 6
    assert stats.dedup_saving == len(shared)
    assert sorted(os.listdir(store.tmp_dir)) == [".lock"], "temporary files left behind"


def test_evicting_one_sharer_keeps_the_shared_file(store: Store):
    shared = b"x" * 5000
    commit(store, 1, {1: shared, 2: b"only one"})
    commit(store, 2, {1: shared})
    only_one = store.blob_path(1, 2)
    report = store.evict([1, 3])
    assert (report.evicted, report.not_cached, report.bytes_freed) == ([1], [3], 8)
    assert not only_one.exists()
    assert store.blob_path(2, 1).read_bytes() == shared
    assert store.content_bytes() == len(shared)
    assert store.verify().damaged == []


def test_budget_holds_after_every_commit_and_evicts_least_recent(tmp_path: Path):
    store = Store(tmp_path / "cache", budget=60 * KB)  # three sets of 20 KiB
    try:
        for set_id in range(1, 9):
            fill(store, set_id)
            assert store.content_bytes() <= 60 * KB
            assert sum(f.stat().st_size for f in content_files(store)) <= 60 * KB
            if set_id == 3:
                store.usage.access(1, hit=True)  # set 1 becomes the most recently used
        assert cached(store) == [6, 7, 8]
        assert len(content_files(store)) == 6
    finally:
        store.close()


def test_access_order_decides(tmp_path: Path):
    store = Store(tmp_path / "cache", budget=60 * KB)
    try:
        for set_id in (1, 2, 3):
            fill(store, set_id)
        store.usage.access(1, hit=True)
        store.flush_usage()
        fill(store, 4)
        assert cached(store) == [1, 3, 4]
    finally:
        store.close()


def test_pinned_and_open_sets_survive(tmp_path: Path):
    store = Store(tmp_path / "cache", budget=60 * KB)
    try:
        fill(store, 1)
        fill(store, 2)
        store.pin([1])
        store.usage.opened(2)
        for set_id in range(3, 7):
            fill(store, set_id)
        assert cached(store) == [1, 2, 6]
        store.usage.closed(2)
        store.unpin([1])
        fill(store, 7)
        assert cached(store) == [2, 6, 7]  # 1, unpinned, was the least recently used
        assert store.content_bytes() <= 60 * KB
    finally:
        store.close()


def test_protected_sets_may_exceed_the_budget_but_nothing_breaks(tmp_path: Path):
    store = Store(tmp_path / "cache", budget=30 * KB)
    try:
        fill(store, 1)
        store.pin([1])
        fill(store, 2)  # the set being written is never evicted to make room for itself
        assert cached(store) == [1, 2]
        fill(store, 3)
        assert cached(store) == [1, 3]
        assert store.verify().damaged == []
    finally:
        store.close()


def test_explicit_evict_spares_pins(store: Store):
    fill(store, 1)
    fill(store, 2)
    store.pin([2])
    report = store.evict([1, 2])
    assert report.evicted == [1] and report.pinned == [2]
    assert cached(store) == [2]
    assert store.evict_to(0) == 0  # the only set left is pinned
    store.unpin([2])
    assert store.evict_to(0) == 20 * KB
    assert cached(store) == [] and content_files(store) == []


def test_access_times_are_batched_not_written_per_access(store: Store):
    fill(store, 1)
    before = store.env.info()["last_txnid"]
    for _ in range(1000):
        store.usage.access(1, hit=True)
    store.usage.access(1, hit=False)
    assert store.env.info()["last_txnid"] == before
    store.flush_usage()
    assert store.env.info()["last_txnid"] == before + 1
    stats = store.stats()
    assert (stats.hits, stats.misses) == (1000, 1)
    store.flush_usage()  # nothing new: no write at all
    assert store.env.info()["last_txnid"] == before + 1


def test_counters_and_budget_survive_reopening(tmp_path: Path):
    store = Store(tmp_path / "cache", budget=5 << 20)
    store.usage.access(7, hit=True)
    store.usage.access(7, hit=False)
    store.close()
    store = Store(tmp_path / "cache")
    try:
        stats = store.stats()
        assert (stats.hits, stats.misses, stats.budget) == (1, 1, 5 << 20)
    finally:
        store.close()


def test_verify_drops_damaged_and_missing_content(store: Store):
    shared = b"s" * 3000
    commit(store, 1, {1: shared, 2: b"fine"})
    commit(store, 2, {1: shared, 2: b"gone"})
    damaged, missing = store.blob_path(1, 1), store.blob_path(2, 2)
    damaged.write_bytes(b"t" * 3000)
    missing.unlink()
    report = store.verify()
    found = sorted((d.set_id, d.entry, d.reason) for d in report.damaged)
    mismatch = "contents do not match their hash"
    assert found == [(1, 1, mismatch), (2, 1, mismatch), (2, 2, "missing")]
    assert report.files_checked == 3
    assert store.cached_entries(1) == {2} and store.cached_entries(2) == set()
    assert not damaged.exists()
    assert store.content_bytes() == 4
    assert store.verify().damaged == []
    # A member dropped is simply fetched again: the same bytes commit cleanly.
    commit(store, 1, {1: shared})
    assert store.blob_path(1, 1).read_bytes() == shared


def test_verify_repairs_counts(store: Store):
    fill(store, 1)
    digest = store.blob_path(1, 1).name

    def corrupt(txn: lmdb.Transaction) -> None:
        txn.put(bytes.fromhex(digest), msgpack.packb([10 * KB, 5]), db=store._content)
        txn.put(b"content_bytes", struct.pack(">Q", 1), db=store._meta)

    store._write(corrupt)
    report = store.verify()
    assert report.refs_repaired == 1 and not report.damaged
    assert store.content_bytes() == 20 * KB
    assert store.evict([1]).bytes_freed == 20 * KB
    assert content_files(store) == []


def test_gc_removes_unreferenced_files_and_orphan_temp_dirs(store: Store):
    fill(store, 1)
    kept = content_files(store)
    orphan = store.content_path(hashlib.sha256(b"orphan").digest())
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    stray = store.content_dir / "ab" / "stray.tmp"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"??")
    dead = store.tmp_dir.parent / "999999-dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "half-written").write_bytes(b"x" * 100)
    report = store.gc()
    assert (report.files_removed, report.bytes_removed, report.temp_dirs_removed) == (2, 8, 1)
    assert content_files(store) == kept
    assert not dead.exists() and store.tmp_dir.exists()
    assert not (store.content_dir / "ab").exists() or any((store.content_dir / "ab").iterdir())
    assert store.verify().damaged == []


def test_orphan_temp_dirs_go_at_start_live_ones_stay(tmp_path: Path):
    root = tmp_path / "cache"
    Store(root).close()
    code = "import sys; from pathlib import Path; from osufs.store import Store\n"
    code += "s = Store(Path(sys.argv[1])); print(s.tmp_dir.name, flush=True)\n"
    code += "sys.stdin.read(); s.close()"
    live = subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[1],
    )
    try:
        live_dir = root / "tmp" / live.stdout.readline().decode().strip()
        dead = root / "tmp" / "1-dead"
        dead.mkdir()
        (dead / ".lock").touch()
        (dead / "partial").write_bytes(b"x")
        no_lock = root / "tmp" / "2-died-before-locking"
        no_lock.mkdir()
        store = Store(root)
        try:
            assert not dead.exists() and not no_lock.exists()
            assert live_dir.is_dir() and store.tmp_dir.is_dir()
        finally:
            store.close()
    finally:
        live.stdin.close()
        live.wait(60)
    assert sorted(p.name for p in (root / "tmp").iterdir()) == [".lock"]


def test_a_file_in_place_without_an_entry_is_replaced(store: Store):
    data = b"real bytes"
    digest = hashlib.sha256(data).digest()
    final = store.content_path(digest)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"junk left by a crash")
    commit(store, 1, {1: data})
    assert store.blob_path(1, 1).read_bytes() == data


def test_drop_missing(store: Store):
    fill(store, 1)
    path = store.blob_path(1, 1)
    assert not store.drop_missing(1, 1, path)  # still there: nothing to do
    path.unlink()
    assert store.drop_missing(1, 1, path)
    assert store.cached_entries(1) == {2}
    assert store.content_bytes() == 10 * KB


def test_map_grows_from_tiny(tmp_path: Path):
    store = Store(tmp_path / "cache", map_size=64 * KB)
    try:
        listing = SetListing([], [Entry("", 0, True, 0, 0, -1)] + [
            Entry(f"file {i}.osu", 0, False, i, 0, -1) for i in range(200)
        ])  # fmt: skip
        for set_id in range(1, 301):
            store.listing_put(set_id, listing)
            fill(store, set_id, members=1, size=100)
        assert store.env.info()["map_size"] > 64 * KB
        assert len(cached(store)) == 300
        assert store.listing_get_uncached(300) == listing
    finally:
        store.close()


def _grow_concurrently(root: str, first: int) -> None:
    store = Store(Path(root), map_size=64 * KB)
    try:
        for set_id in range(first, first + 300):
            store.listing_put(set_id, SetListing([], [Entry("x" * 300, 0, True, 0, 0, -1)]))
            fill(store, set_id, members=1, size=100)
            assert store.listing_get_uncached(set_id) is not None
    finally:
        store.close()


def test_two_processes_grow_one_tiny_map(tmp_path: Path):
    root = tmp_path / "cache"
    Store(root, map_size=64 * KB).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_grow_concurrently, args=(str(root), n)) for n in (1, 1001)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    store = Store(root)
    try:
        assert len(cached(store)) == 600
        assert store.verify().damaged == []
    finally:
        store.close()


CRASHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tests.test_store import Store, fill
    store = Store(Path(sys.argv[1]), budget=int(sys.argv[2]) or None)
    for set_id in range(1, 4):
        fill(store, set_id)
    if sys.argv[3] == "evict":
        store.evict([1, 2])
    elif sys.argv[3] == "gc":
        store.gc()
    raise SystemExit("no crash happened")
    """
)


@pytest.mark.parametrize(
    ("point", "budget", "action"),
    [
        ("commit-renamed", 0, ""),
        ("commit-evicted", 40 * KB, ""),
        ("evict-indexed", 0, "evict"),
        ("temp-written", 0, ""),
    ],
)
def test_crash_points_leave_a_consistent_cache(tmp_path: Path, point: str, budget: int, action):
    root = tmp_path / "cache"
    big = 80 * KB if point == "temp-written" else 10 * KB
    script = CRASHER.replace("fill(store, set_id)", f"fill(store, set_id, size={big})")
    result = subprocess.run(
        [sys.executable, "-c", script, str(root), str(budget), action],
        env={**os.environ, "OSUFS_CRASH_AT": point},
        cwd=Path(__file__).parents[1],
        capture_output=True,
    )
    assert result.returncode == -9, result.stderr.decode()
    store = Store(root)
    try:
        assert sorted(p.name for p in (root / "tmp").iterdir()) == [".lock", store.tmp_dir.name]
        assert os.listdir(store.tmp_dir) == [".lock"]
        report = store.verify()
        assert report.damaged == [] and report.dangling == [] and report.refs_repaired == 0
        indexed = {store.blob_path(row.set_id, e) for row in store.cached_sets() for e in (1, 2)}
        indexed.discard(None)
        on_disk = set(content_files(store))
        assert indexed <= on_disk
        store.gc()
        assert set(content_files(store)) == indexed
        assert sum(p.stat().st_size for p in indexed) == store.content_bytes()
        for row in store.cached_sets():
            for entry in store.cached_entries(row.set_id):
                data = store.blob_path(row.set_id, entry).read_bytes()
                assert data == data_for(row.set_id, entry, big)
    finally:
        store.close()


def test_crash_during_gc(tmp_path: Path):
    root = tmp_path / "cache"
    store = Store(root)
    fill(store, 1)
    for i in range(5):
        path = store.content_path(hashlib.sha256(b"orphan %d" % i).digest())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"orphan")
    store.close()
    script = "import sys; from pathlib import Path; from osufs.store import Store\n"
    script += "Store(Path(sys.argv[1])).gc()"
    result = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        env={**os.environ, "OSUFS_CRASH_AT": "gc-unlinked"},
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == -9
    store = Store(root)
    try:
        assert store.verify().damaged == []
        assert store.gc().files_removed == 4
        assert len(content_files(store)) == 2
        assert store.blob_path(1, 1).read_bytes() == data_for(1, 1)
    finally:
        store.close()


def test_schema_1_is_upgraded(tmp_path: Path):
    root = tmp_path / "cache"
    (root / "index").mkdir(parents=True)
    env = lmdb.open(str(root / "index"), max_dbs=8, map_size=1 << 20)
    meta, blobs, content = (env.open_db(name) for name in (b"meta", b"blobs", b"content"))
    digest = hashlib.sha256(b"abc").digest()
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"1", db=meta)
        txn.put(struct.pack(">QI", 5, 1), digest, db=blobs)
        txn.put(digest, msgpack.packb([3, 1]), db=content)
    env.close()
    path = root / "content" / digest.hex()[:2] / digest.hex()[2:4] / digest.hex()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"abc")
    store = Store(root)
    try:
        assert store.content_bytes() == 3
        assert [(r.set_id, r.size) for r in store.cached_sets()] == [(5, 3)]
        assert store.evict_to(0) == 3
        assert not path.exists()
    finally:
        store.close()


def test_schema_2_listings_are_read_as_they_are(tmp_path: Path):
    root = tmp_path / "cache"
    (root / "index").mkdir(parents=True)
    listing = build_listing([ZipMember(b"a.osu", True, 0, 0, 7, 3, 3, 0, 5, False)])
    env = lmdb.open(str(root / "index"), max_dbs=16, map_size=1 << 20)
    meta, listings = (env.open_db(name) for name in (b"meta", b"listings"))
    members, entries = msgpack.unpackb(listing.to_bytes(), raw=False)[1:3]
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"2", db=meta)
        txn.put(struct.pack(">Q", 9), msgpack.packb([1, members, entries]), db=listings)
    env.close()
    store = Store(root)
    try:
        assert store.listing_get(9) == listing
        with store._read() as txn:
            assert txn.get(b"schema", db=store._meta) == str(SCHEMA_VERSION).encode()
    finally:
        store.close()


def test_schema_4_provisional_listings_are_read_as_they_are(tmp_path: Path):
    root = tmp_path / "cache"
    (root / "index").mkdir(parents=True)
    listing = provisional_listing([PinnedFile("a.osu", 3, Pin(1, "ab" * 16, 7))], 10)
    entries = [(e.name, e.parent, e.is_dir, e.size, e.mtime_ns, e.member) for e in listing.entries]
    env = lmdb.open(str(root / "index"), max_dbs=16, map_size=1 << 20)
    meta, listings = (env.open_db(name) for name in (b"meta", b"listings"))
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"4", db=meta)
        stored = [2, [], entries, [(1, "ab" * 16, 7)], True]
        txn.put(struct.pack(">Q", 9), msgpack.packb(stored, use_bin_type=True), db=listings)
    env.close()
    store = Store(root)
    try:
        assert store.listing_get(9) == listing
        with store._read() as txn:
            assert txn.get(b"schema", db=store._meta) == b"5"
    finally:
        store.close()


def test_a_provisional_listing_is_completed_once(tmp_path: Path):
    pin = PinnedFile("a.osu", 3, Pin(1, "0" * 32, 7))
    first = provisional_listing([pin], 10)
    member = ZipMember(b"a.osu", True, 0, 0, 7, 3, 3, 0, 5, False)
    store = Store(tmp_path / "cache")
    try:
        assert store.listing_put(4, first) is first
        assert store.listing_get(4) == first
        done = complete_listing(first, [member])
        assert store.listing_complete(4, done) is done
        assert store.listing_get(4) == done and store.listing_put(4, first) == done
        # A second completion (another mount's, later) finds the first standing.
        other = complete_listing(first, [member, ZipMember(b"b", True, 0, 0, 1, 1, 1, 9, 5, False)])
        assert store.listing_complete(4, other) == done
    finally:
        store.close()


def test_a_listing_stored_with_its_links_indexes_them_once(store: Store):
    stored = b"[General]\n" * 50
    commit(store, 1, {1: stored})  # bytes another set holds: what an import's .osu is to this one
    digest = bytes.fromhex(store.blob_path(1, 1).name)
    first = provisional_listing([PinnedFile("a.osu", len(stored), Pin(7, "0" * 32, 7))], 10)
    assert store.listing_put(2, first, [(1, digest)]) is first
    assert store.blob_path(2, 1) == store.blob_path(1, 1)
    second = provisional_listing([PinnedFile("b.osu", len(stored), Pin(8, "1" * 32, 8))], 10)
    assert store.listing_put(2, second, [(1, digest), (2, digest)]) == first  # another was first
    assert store.cached_entries(2) == {1}
    store.evict([1])
    assert store.blob_path(2, 1).read_bytes() == stored  # its own reference holds the bytes
    assert store.stats().members == 1 and store.verify().damaged == []


def test_an_import_s_random_md5s_are_rewritten_into_full_pages(store: Store):
    files = [f"[Metadata]\nBeatmapID:{n}\n".encode() for n in range(15_000)]
    for start in range(0, len(files), 2_000):  # as an import commits them: md5s in no order
        items = []
        for data in files[start : start + 2_000]:
            path, sink = store.new_temp(len(data))
            with sink:
                writer = HashingWriter(sink)
                writer(data)
            items.append(
                PendingOsu(hashlib.md5(data).digest(), path, writer.hash.digest(), len(data))
            )
        store.commit_osu(items)
    with store._read() as txn:
        before = txn.stat(store._osu)["leaf_pages"] + txn.stat(store._content)["leaf_pages"]
    freed = store.compact_osu_tables()
    with store._read() as txn:
        after = txn.stat(store._osu)["leaf_pages"] + txn.stat(store._content)["leaf_pages"]
    assert freed == before - after and after < 0.8 * before
    assert all(store.osu_bytes(hashlib.md5(data).hexdigest()) == data for data in files)
    assert store.verify().damaged == [] and store.compact_osu_tables() == 0  # full already


@pytest.mark.parametrize(
    ("text", "size"),
    [("20G", 20 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("100000", 100000),
     ("64k", 64 << 10), ("2 TB", 2 << 40), ("10MB", 10 << 20)],
)  # fmt: skip
def test_parse_size(text: str, size: int):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "20X", "1e9", "twenty"])
def test_parse_size_refuses(text: str):
    with pytest.raises(ValueError):
        parse_size(text)
