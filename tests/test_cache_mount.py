"""The cache through real mounts (issue 5): dedup, budget and eviction order, pins and open
files, offline and network-down reads, kill -9 at several points, a full disk, two mounts."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs.fs import NO_OPEN
from osufs.samples import SHARED_HITSOUND, build_sample_library
from osufs.store import Store
from tests.helpers import Mount, Server, mounted, osufs_command, reads_reach_the_mount
from tests.test_mount import expected_members

SETS = 10
FIRST = 100001
# Without the read-ahead of .osu files, which sets get fetched follows the reads alone.
QUIET = ("--read-ahead", "0")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    build_sample_library(folder, count=SETS)
    return folder


@pytest.fixture(scope="module")
def expected(archives: Path) -> dict[int, dict[str, bytes]]:
    return {int(path.stem): expected_members(path) for path in sorted(archives.glob("*.osz"))}


def source(server: Server) -> tuple[str, str]:
    return ("--source", f"hexide={server.url}")


def set_size(members: dict[str, bytes]) -> int:
    """Bytes a set takes in the content store (identical members stored once)."""
    unique = {hashlib.sha256(data).digest(): len(data) for data in members.values()}
    return sum(unique.values())


def read_set(mountpoint: Path, set_id: int | Path) -> dict[str, bytes]:
    """Every file of a set, by its bare id (the symlink) or its folder's name."""
    folder = mountpoint / str(set_id)
    found = {}
    for dirpath, _dirs, files in os.walk(folder, onerror=raise_it):
        for name in files:
            path = Path(dirpath) / name
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def raise_it(error: OSError) -> None:
    raise error


def cache_cli(cache: Path, *args: str, env: dict[str, str] | None = None, check: bool = True):
    result = subprocess.run(
        osufs_command("cache", *args, "--cache-dir", str(cache)),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@contextlib.contextmanager
def opened_store(cache: Path) -> Iterator[Store]:
    """The store as a second process sees it (the test runs beside the mount)."""
    store = Store(cache)
    try:
        yield store
    finally:
        store.close()


def cached_sets(cache: Path) -> dict[int, int]:
    """Set id -> members cached."""
    with opened_store(cache) as store:
        return {row.set_id: row.members for row in store.cached_sets()}


def disk_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in (cache / "content").rglob("*") if p.is_file())


def test_shared_hitsound_is_stored_once(server: Server, expected, tmp_path: Path):
    cache = tmp_path / "cache"
    first, second = FIRST, FIRST + 1
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET) as m:
        for set_id in (first, second):
            assert read_set(m.mountpoint, set_id) == expected[set_id]
    # Remounted, so the kernel's page cache (kept across opens) answers none of it.
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET) as m:
        for set_id in (first, second):  # every member now a hit
            assert read_set(m.mountpoint, set_id) == expected[set_id]
        inode_a = os.stat(m.mountpoint / str(first) / SHARED_HITSOUND).st_ino
        inode_b = os.stat(m.mountpoint / str(second) / SHARED_HITSOUND).st_ino
        assert inode_a != inode_b  # two files in the tree, one in the store
    members = len(expected[first]) + len(expected[second])
    shared = expected[first][SHARED_HITSOUND]
    assert shared == expected[second][SHARED_HITSOUND]
    with opened_store(cache) as store:
        stats = store.stats()
        listing_a, listing_b = store.listing_get(first), store.listing_get(second)
        index_a = next(i for i, e in enumerate(listing_a.entries) if e.name == SHARED_HITSOUND)
        index_b = next(i for i, e in enumerate(listing_b.entries) if e.name == SHARED_HITSOUND)
        assert store.blob_path(first, index_a) == store.blob_path(second, index_b)
    assert (stats.members, stats.content_files) == (members, members - 1)
    assert stats.dedup_saving == len(shared)
    assert stats.stored_bytes == disk_bytes(cache)
    assert (stats.hits, stats.misses) == (members, members)
    out = cache_cli(cache, "stats").stdout
    assert f"{len(shared)} B" in out and "50.0% (" in out, out
    listed = cache_cli(cache, "ls").stdout
    assert str(first) in listed and str(second) in listed and "2 sets" in listed


def budget_for(expected, ids: list[int]) -> int:
    """A budget that holds any two of these sets and never three."""
    sizes = sorted(set_size(expected[i]) for i in ids)
    budget = sizes[-1] + sizes[-2]
    assert sizes[0] + sizes[1] + sizes[2] > budget
    return budget


def test_budget_is_honoured_and_least_recent_sets_go_first(server: Server, expected, tmp_path):
    cache = tmp_path / "cache"
    ids = list(range(FIRST + 2, FIRST + SETS))  # sets without the shared hitsound
    budget = budget_for(expected, ids)
    a, b, c, d = ids[:4]
    with mounted(
        tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET,
        "--cache-size", str(budget),
    ) as m:  # fmt: skip
        steps = []
        for set_id in (a, b):
            assert read_set(m.mountpoint, set_id) == expected[set_id]
        steps.append(cached_sets(cache))
        # Touch a (a hit: nothing fetched) so b is now the least recently used.
        reads_reach_the_mount(m.mountpoint)
        name = sorted(expected[a])[0]
        assert (m.mountpoint / str(a) / name).read_bytes() == expected[a][name]
        reads_reach_the_mount(m.mountpoint)
        assert read_set(m.mountpoint, c) == expected[c]
        steps.append(cached_sets(cache))
        reads_reach_the_mount(m.mountpoint)
        assert read_set(m.mountpoint, d) == expected[d]
        steps.append(cached_sets(cache))
        for set_id in ids[4:]:  # a workload three times the budget
            reads_reach_the_mount(m.mountpoint / str(set_id - 1))
            assert read_set(m.mountpoint, set_id) == expected[set_id]
            assert disk_bytes(cache) <= budget
            with opened_store(cache) as store:
                assert store.content_bytes() <= budget
    full = {set_id: len(expected[set_id]) for set_id in ids}
    assert steps[0] == {a: full[a], b: full[b]}
    assert steps[1] == {a: full[a], c: full[c]}, "b was used least recently"
    assert steps[2] == {c: full[c], d: full[d]}
    assert cached_sets(cache) == {set_id: full[set_id] for set_id in ids[-2:]}
    assert cache_cli(cache, "verify").returncode == 0


def test_pinned_sets_and_open_files_survive_eviction(server: Server, expected, tmp_path: Path):
    cache = tmp_path / "cache"
    ids = list(range(FIRST + 2, FIRST + SETS))
    budget = budget_for(expected, ids)
    pinned, held, *others = ids
    cache_cli(cache.parent / "unused", "pin", "1", check=False)  # no cache there: refused
    assert not (cache.parent / "unused").exists()
    Store(cache).close()
    cache_cli(cache, "pin", str(pinned))
    with mounted(
        tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET,
        "--cache-size", str(budget),
    ) as m:  # fmt: skip
        assert read_set(m.mountpoint, pinned) == expected[pinned]
        name = max(expected[held], key=lambda n: len(expected[held][n]))
        data = expected[held][name]
        with open(m.mountpoint / str(held) / name, "rb") as file:
            assert file.read(1000) == data[:1000]
            for set_id in others[:4]:
                assert read_set(m.mountpoint, set_id) == expected[set_id]
            now = cached_sets(cache)
            assert now[pinned] == len(expected[pinned])
            # Without OPEN and RELEASE, osufs cannot know the file is open: a read holds its
            # set for a lease, and an evicted member reads on from its descriptor or the network.
            assert NO_OPEN or held in now, "a set with an open file was evicted"
            assert file.read() == data[1000:]
            file.seek(0)
            assert file.read() == data
        reads_reach_the_mount(m.mountpoint)
        for set_id in others[4:]:
            assert read_set(m.mountpoint, set_id) == expected[set_id]
        now = cached_sets(cache)
        assert held not in now, "closed, the set is evictable again"
        assert now[pinned] == len(expected[pinned])
    left = set(cached_sets(cache))
    assert {pinned, others[-1]} <= left
    assert "pinned, kept" in cache_cli(cache, "evict", str(pinned)).stdout
    cache_cli(cache, "unpin", str(pinned))
    out = cache_cli(cache, "evict", str(pinned), str(others[-1])).stdout
    assert out.startswith("2 sets evicted"), out
    assert set(cached_sets(cache)) == left - {pinned, others[-1]}
    assert cache_cli(cache, "verify").returncode == 0


def fill_cache(server: Server, cache: Path, tmp_path: Path, set_ids: list[int], expected) -> None:
    with mounted(tmp_path / "fill", cache, tmp_path / "fill.log", *source(server), *QUIET) as m:
        for set_id in set_ids:
            assert read_set(m.mountpoint, set_id) == expected[set_id]
        os.listdir(m.mountpoint / str(FIRST + 5))  # a tree known, no member cached


def test_offline_serves_the_cache_and_nothing_else(server: Server, expected, tmp_path: Path):
    cache = tmp_path / "cache"
    fill_cache(server, cache, tmp_path, [FIRST, FIRST + 3], expected)
    before = server.stats()
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", "--offline") as m:
        assert len(os.listdir(m.mountpoint)) == SETS
        for set_id in (FIRST, FIRST + 3):
            assert read_set(m.mountpoint, set_id) == expected[set_id]
        known_tree = m.mountpoint / str(FIRST + 5)
        names = sorted(os.listdir(known_tree))
        assert names
        with pytest.raises(OSError) as caught:
            (known_tree / next(n for n in names if n.endswith(".osu"))).read_bytes()
        assert caught.value.errno == errno.EIO
        with pytest.raises(OSError) as caught:
            os.listdir(m.mountpoint / str(FIRST + 6))
        assert caught.value.errno == errno.EIO
        for unknown in ("999999", "999999 Somebody - Something"):
            with pytest.raises(FileNotFoundError):
                os.stat(m.mountpoint / unknown)
    assert server.stats() == before, "the offline mount used the network"


class CountingListener:
    """A port that accepts connections, counts them and closes them: a network that is down."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.connections += 1
                conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def test_network_down_cached_reads_never_reach_for_it(server: Server, expected, tmp_path):
    cache = tmp_path / "cache"
    fill_cache(server, cache, tmp_path, [FIRST, FIRST + 3], expected)
    down = CountingListener()
    try:
        with mounted(
            tmp_path / "mnt", cache, tmp_path / "mount.log", "--source", f"hexide={down.url}",
            "--fetch-timeout", "5",
        ) as m:  # fmt: skip
            preflight = down.connections  # the mount's one probe of each source, at start
            assert len(os.listdir(m.mountpoint)) == SETS
            for _ in range(3):
                for set_id in (FIRST, FIRST + 3):
                    assert read_set(m.mountpoint, set_id) == expected[set_id]
            assert down.connections == preflight
            with pytest.raises(OSError) as caught:
                os.listdir(m.mountpoint / str(FIRST + 7))
            assert caught.value.errno == errno.EIO
            assert down.connections > preflight, "the uncached set did not even try"
    finally:
        down.close()


def lazy_unmount(mountpoint: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def read_until_dead(mount: Mount, set_ids: list[int]) -> None:
    """Read sets through a mount that is meant to die; returns once it has."""
    with contextlib.suppress(OSError):
        for set_id in set_ids:
            read_set(mount.mountpoint, set_id)
    assert mount.process.wait(60) == -9, mount.log()


def check_recovered(server: Server, cache: Path, tmp_path: Path, expected, label: str) -> None:
    """verify finds nothing, orphan temp files are gone, every set reads byte-identical."""
    result = cache_cli(cache, "verify")
    assert " 0 damaged, 0 dangling, 0 reference counts repaired" in result.stdout, result.stdout
    with mounted(
        tmp_path / f"after-{label}", cache, tmp_path / f"after-{label}.log", *source(server),
        *QUIET,
    ) as m:  # fmt: skip
        temp_dirs = [p for p in (cache / "tmp").iterdir() if p.is_dir()]
        assert len(temp_dirs) == 1 and os.listdir(temp_dirs[0]) == [".lock"]
        for set_id, members in expected.items():
            assert read_set(m.mountpoint, set_id) == members
    assert cache_cli(cache, "verify").returncode == 0
    cache_cli(cache, "gc")
    with opened_store(cache) as store:
        assert store.content_bytes() == disk_bytes(cache)


@pytest.mark.parametrize(
    ("point", "budget"),
    [("temp-written", False), ("commit-renamed", False), ("commit-evicted", True)],
)
def test_kill_9_at_a_crash_point(server: Server, expected, tmp_path: Path, point: str, budget):
    cache = tmp_path / "cache"
    extra = ("--cache-size", str(budget_for(expected, list(expected)))) if budget else ()
    fill_cache(server, cache, tmp_path, [FIRST], expected)
    mount = Mount(
        tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET, *extra,
        env={"OSUFS_CRASH_AT": point},
    )  # fmt: skip
    try:
        read_until_dead(mount, list(expected)[1:])
    finally:
        lazy_unmount(mount.mountpoint)
        mount.unmount()
    check_recovered(server, cache, tmp_path, expected, point)


def test_kill_9_in_the_middle_of_downloads(archives: Path, expected, tmp_path: Path):
    """A slow mirror without ranges: whole archives are streaming in when the mount dies."""
    server = Server(archives, tmp_path / "server.log", "--no-ranges", "--bandwidth", "400000")
    cache = tmp_path / "cache"
    try:
        with mounted(tmp_path / "m1", cache, tmp_path / "m1.log", *source(server), *QUIET) as m:
            readers = [
                threading.Thread(target=read_set_quietly, args=(m.mountpoint, set_id))
                for set_id in list(expected)[:4]
            ]
            for reader in readers:
                reader.start()
            deadline = time.monotonic() + 60
            while server.stats()["bytes_sent"] < 300_000:  # bytes flow: pull the plug
                assert time.monotonic() < deadline, "the downloads never started"
                time.sleep(0.02)
            m.process.kill()
            sent = server.stats()["bytes_sent"]
            assert m.process.wait(30) == -9
            lazy_unmount(m.mountpoint)
            for reader in readers:
                reader.join(60)
        wanted = sum((archives / f"{set_id}.osz").stat().st_size for set_id in list(expected)[:4])
        assert sent < wanted, "the kill came after the downloads"
        check_recovered(server, cache, tmp_path, expected, "downloads")
    finally:
        server.stop()


def read_set_quietly(mountpoint: Path, set_id: int) -> None:
    with contextlib.suppress(OSError):
        read_set(mountpoint, set_id)


def test_kill_9_during_gc_and_evict(server: Server, expected, tmp_path: Path):
    cache = tmp_path / "cache"
    fill_cache(server, cache, tmp_path, list(expected)[:4], expected)
    for i in range(4):
        orphan = cache / "content" / "00" / "00" / hashlib.sha256(b"%d" % i).hexdigest()
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"left by a crash")
    result = cache_cli(cache, "gc", env={"OSUFS_CRASH_AT": "gc-unlinked"}, check=False)
    assert result.returncode == -9
    result = cache_cli(
        cache, "evict", str(FIRST), env={"OSUFS_CRASH_AT": "evict-indexed"}, check=False
    )
    assert result.returncode == -9
    assert FIRST not in cached_sets(cache)
    assert "3 unreferenced files removed" in cache_cli(cache, "gc").stdout
    check_recovered(server, cache, tmp_path, expected, "gc")


def test_verify_reports_and_drops_damage(server: Server, expected, tmp_path: Path):
    cache = tmp_path / "cache"
    fill_cache(server, cache, tmp_path, [FIRST + 3], expected)
    with opened_store(cache) as store:
        listing = store.listing_get(FIRST + 3)
        entries = sorted(store.cached_entries(FIRST + 3))
        broken, lost = (
            store.blob_path(FIRST + 3, entries[0]),
            store.blob_path(FIRST + 3, entries[1]),
        )
    broken.write_bytes(b"bit rot" + broken.read_bytes()[7:])
    lost.unlink()
    result = cache_cli(cache, "verify", check=False)
    assert result.returncode == 1
    assert f"set {FIRST + 3}: {listing.path(entries[0])}: contents do not match" in result.stdout
    assert f"set {FIRST + 3}: {listing.path(entries[1])}: missing" in result.stdout
    assert "2 damaged" in result.stdout
    assert cache_cli(cache, "verify").returncode == 0
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET) as m:
        assert read_set(m.mountpoint, FIRST + 3) == expected[FIRST + 3]


def test_a_vanished_content_file_is_fetched_again(server: Server, expected, tmp_path: Path):
    """An index entry whose file has gone (damage, or another mount's eviction caught half-way)
    heals on the next open instead of failing it."""
    cache = tmp_path / "cache"
    set_id = FIRST + 4
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET) as m:
        assert read_set(m.mountpoint, set_id) == expected[set_id]
        with opened_store(cache) as store:
            for entry in store.cached_entries(set_id):
                store.blob_path(set_id, entry).unlink()
        reads_reach_the_mount(m.mountpoint)
        assert read_set(m.mountpoint, set_id) == expected[set_id]
    assert "is missing; entry dropped" in (tmp_path / "mount.log").read_text()
    assert cache_cli(cache, "verify").returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "small"
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_fails_the_read_and_keeps_the_cache_sound(
    server: Server, expected, tmp_path: Path, small_disk: Path
):
    cache = small_disk / "cache"
    failures: dict[int, int] = {}
    good: list[int] = []
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET) as m:
        for set_id in expected:
            try:
                assert read_set(m.mountpoint, set_id) == expected[set_id]
                good.append(set_id)
            except OSError as error:
                failures[set_id] = error.errno
        assert failures, "2 MiB held every set"
        assert set(failures.values()) <= {errno.ENOSPC, errno.EIO}, failures
        assert errno.ENOSPC in failures.values()
        for set_id in good:  # the mount lives on, and what it had still reads
            assert read_set(m.mountpoint, set_id) == expected[set_id]
    assert "Traceback" not in (tmp_path / "mount.log").read_text()
    assert cache_cli(cache, "verify").returncode == 0
    assert [p.name for p in (cache / "tmp").iterdir()] == [".lock"]
    with opened_store(cache) as store:
        assert store.content_bytes() <= disk_bytes(cache)
    # With room made (evicting), the same mount setup serves the set that failed.
    cache_cli(cache, "evict", *(str(i) for i in good))
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount2.log", *source(server), *QUIET) as m:
        first_failed = min(failures)
        assert read_set(m.mountpoint, first_failed) == expected[first_failed]
    assert cache_cli(cache, "verify").returncode == 0


def read_all(mountpoint: Path, set_ids: list[int], expected, errors: list) -> None:
    try:
        for set_id in set_ids:
            found = read_set(mountpoint, set_id)
            if found != expected[set_id]:
                errors.append(f"{mountpoint}: set {set_id} differs")
    except Exception as error:
        errors.append(f"{mountpoint}: {error!r}")


@pytest.mark.parametrize("budget", [False, True])
def test_two_mounts_share_one_cache(server: Server, expected, tmp_path: Path, budget: bool):
    cache = tmp_path / "cache"
    ids = list(expected)
    extra = ("--cache-size", str(budget_for(expected, ids))) if budget else ()
    with (
        mounted(tmp_path / "m1", cache, tmp_path / "m1.log", *source(server), *extra) as one,
        mounted(tmp_path / "m2", cache, tmp_path / "m2.log", *source(server), *extra) as two,
    ):
        errors: list[str] = []
        readers = [
            threading.Thread(target=read_all, args=(one.mountpoint, ids, expected, errors)),
            threading.Thread(target=read_all, args=(two.mountpoint, ids[::-1], expected, errors)),
            threading.Thread(target=read_all, args=(two.mountpoint, ids, expected, errors)),
        ]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join(240)
        assert errors == []
        temp_dirs = [p for p in (cache / "tmp").iterdir() if p.is_dir()]
        assert len(temp_dirs) == 2
    for log in ("m1.log", "m2.log"):
        assert "Traceback" not in (tmp_path / log).read_text()
    assert cache_cli(cache, "verify").returncode == 0
    assert "0 unreferenced files removed" in cache_cli(cache, "gc").stdout
    with opened_store(cache) as store:
        stats = store.stats()
        assert stats.stored_bytes == disk_bytes(cache)
        if not budget:
            assert stats.sets == SETS
            members = [data for files in expected.values() for data in files.values()]
            unique = {hashlib.sha256(data).digest() for data in members}
            assert (stats.members, stats.content_files) == (len(members), len(unique))
