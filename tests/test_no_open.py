"""The kernel's no-open mode (issue 15; osufs/fs.py): a warm read or listing never reaches the
daemon, and eviction under reads never gives wrong bytes. With pyfuse3 as released (the
fallback, tests/test_fallback.py runs this module there) every open asks, and the same reads
give the same bytes."""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

from osufs.fs import NO_OPEN
from tests.counting_mount import COUNTS, tallies
from tests.helpers import Server, drop_pages, mounted
from tests.test_cache_mount import (
    FIRST,
    QUIET,
    SETS,
    budget_for,
    cache_cli,
    read_set,
    source,
)
from tests.test_cache_mount import archives as archives  # the module's fixtures, shared
from tests.test_cache_mount import expected as expected


def requests(counts: dict, before: dict) -> dict[str, int]:
    grown = {name: n - before["counts"].get(name, 0) for name, n in counts["counts"].items()}
    return {name: n for name, n in grown.items() if n}


def test_warm_reads_and_listings_never_reach_the_daemon(server: Server, expected, tmp_path):
    counts = tmp_path / "counts.json"
    with mounted(
        tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *source(server), *QUIET,
        module="tests.counting_mount", env={COUNTS: str(counts)},
    ) as mount:  # fmt: skip
        root = mount.mountpoint
        names = sorted(os.listdir(root))
        # By folder name: the bare id is a symlink, and pyfuse3 does not let the kernel keep
        # symlinks (FUSE_CAP_CACHE_SYMLINKS), so each path through one asks readlink.
        folders = {set_id: Path(os.readlink(root / str(set_id))) for set_id in (FIRST, FIRST + 1)}
        for set_id, folder in folders.items():
            assert read_set(root, folder) == expected[set_id]  # cold: fetched
        before = tallies(mount.process, counts)
        for _ in range(3):
            assert sorted(os.listdir(root)) == names
            for set_id, folder in folders.items():
                assert read_set(root, folder) == expected[set_id]
        warm = requests(tallies(mount.process, counts), before)
    if NO_OPEN:
        assert "FUSE mode: no-open" in mount.log()
        assert warm == {}, "a warm read or listing reached the daemon"
    else:
        assert "FUSE mode: open per file" in mount.log()
        files = sum(len(expected[set_id]) for set_id in (FIRST, FIRST + 1))
        assert warm["open"] == 3 * files  # (the last RELEASE may still be on its way)
        assert warm["opendir"] >= 3 * (1 + 2)


def test_eviction_during_reads_never_gives_wrong_bytes(server: Server, expected, tmp_path):
    cache = tmp_path / "cache"
    ids = list(expected)
    budget = budget_for(expected, ids[2:])  # two sets at a time, so every new one evicts
    errors: list[str] = []
    stop = threading.Event()

    def reader(order: list[int]) -> None:
        try:
            for _ in range(3):
                for set_id in order:
                    drop_pages(mount.mountpoint / str(set_id))
                    if read_set(mount.mountpoint, set_id) != expected[set_id]:
                        errors.append(f"set {set_id}: wrong bytes")
        except Exception as error:
            errors.append(repr(error))

    def evict_from_another_process() -> None:
        # Another process's eviction knows nothing of this mount's leases: a set at a time,
        # as another mount's budget would (evicting all at once, without a pause, can make an
        # open lose its freshly fetched file three times running, an EIO in either mode).
        for set_id in itertools.cycle(ids):
            if stop.wait(0.2):
                return
            cache_cli(cache, "evict", str(set_id))

    with mounted(
        tmp_path / "mnt", cache, tmp_path / "mount.log", *source(server), *QUIET,
        "--cache-size", str(budget),
    ) as mount:  # fmt: skip
        assert len(os.listdir(mount.mountpoint)) == SETS
        readers = [
            threading.Thread(target=reader, args=(ids,)),
            threading.Thread(target=reader, args=(ids[::-1],)),
        ]
        evictor = threading.Thread(target=evict_from_another_process)
        for thread in (*readers, evictor):
            thread.start()
        for thread in readers:
            thread.join(300)
        stop.set()
        evictor.join(60)
        assert errors == []
        for set_id in ids:  # and once more, quietly
            drop_pages(mount.mountpoint / str(set_id))
            assert read_set(mount.mountpoint, set_id) == expected[set_id]
    assert "Traceback" not in mount.log()
    assert cache_cli(cache, "verify").returncode == 0
