"""Metadata that never moves (issue 9): osu!.db keeps sizes and times and folder names, so every
entry must stat the same before its set is fetched (from the zip's central directory) as after
(from the whole archive), on every mount, from a ranged source and from one without ranges,
and through the writable layer; and folder names must be fixed by the set list alone."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from osufs.names import MEMBER_ROOM, set_folder_name
from osufs.samples import build_sample_library
from tests.helpers import REAL_ARCHIVES, Server, mounted
from tests.test_writable import KERNEL_LOWER_TAG, USABLE, writable_mount

SAMPLES = 4
SONGS = len("C:\\osu!\\Songs\\")
FORBIDDEN = set('"<>|:*?\\/') | {chr(c) for c in [*range(32), *range(0x7F, 0xA0)]}

Snapshot = dict[str, tuple[int, int, int, int]]


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    for set_id, path in enumerate(REAL_ARCHIVES, start=1):
        shutil.copy(path, folder / f"{set_id}.osz")
    build_sample_library(folder, count=SAMPLES)
    return folder


def snapshot(root: Path, *, read: bool = False) -> Snapshot:
    """(size, mtime_ns, mode, inode) of every set folder and everything in it, by path; with
    read, every file is also read in full (so the cache holds whole sets afterwards)."""
    found: Snapshot = {}

    def note(path: Path) -> None:
        st = os.lstat(path)
        found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_mode, st.st_ino)

    for name in sorted(os.listdir(root)):
        note(root / name)
        for dirpath, dirnames, filenames in os.walk(root / name):
            for entry in sorted(dirnames + filenames):
                note(Path(dirpath) / entry)
            if read:
                for entry in filenames:
                    (Path(dirpath) / entry).read_bytes()
    return found


def mount_args(server: Server, *extra: str) -> tuple[str, ...]:
    return ("--source", f"hexide={server.url}", "--read-ahead", "0", *extra)


def three_mounts(server: Server, tmp_path: Path) -> tuple[list[Snapshot], int]:
    """Listed only (first look at every set), after reading everything, and offline; and the
    bytes the source sent for the first look."""
    snapshots = []
    cache = tmp_path / "cache"
    with mounted(tmp_path / "mnt", cache, tmp_path / "1.log", *mount_args(server)) as mount:
        snapshots.append(snapshot(mount.mountpoint))
        listing_bytes = server.stats()["bytes_sent"]
        snapshot(mount.mountpoint, read=True)
    with mounted(tmp_path / "mnt", cache, tmp_path / "2.log", *mount_args(server)) as mount:
        snapshots.append(snapshot(mount.mountpoint))
    with mounted(tmp_path / "mnt", cache, tmp_path / "3.log", "--offline") as mount:
        snapshots.append(snapshot(mount.mountpoint))
    return snapshots, listing_bytes


def test_stat_is_the_same_in_every_state_and_from_every_source(archives: Path, tmp_path: Path):
    ranged = Server(archives, tmp_path / "ranged.log")
    plain = Server(archives, tmp_path / "plain.log", "--no-ranges")
    try:
        from_ranged, tails = three_mounts(ranged, tmp_path / "ranged")
        from_plain, wholes = three_mounts(plain, tmp_path / "plain")
        # Through the writable layer by each engine, on top of the ranged cache, offline.
        through_overlay = {}
        for engine in (name for name, usable in USABLE.items() if usable):
            with writable_mount(tmp_path / "ranged", plain, "--offline", engine=engine) as mount:
                through_overlay[engine] = snapshot(mount.mountpoint)
    finally:
        ranged.stop()
        plain.stop()

    # The first look read central directories from one source and whole archives from the other.
    total = sum(path.stat().st_size for path in archives.glob("*.osz"))
    assert tails < total // 4 and wholes >= total
    first = from_ranged[0]
    sets = len(list(archives.glob("*.osz")))
    assert sum("/" not in path for path in first) == sets
    assert any(stat.S_ISDIR(mode) for _size, _mtime, mode, _ino in first.values())
    for state in [*from_ranged, *from_plain]:
        assert state == first
    # The writable layer adds the owner's write bit (so osu! may write), and the kernel's tags
    # inode numbers with their layer (README: xino); nothing else changes.
    for engine, state in through_overlay.items():
        tag = KERNEL_LOWER_TAG if engine == "kernel" else 0
        assert state == {
            path: (size, mtime, mode | stat.S_IWUSR, tag | ino)
            for path, (size, mtime, mode, ino) in first.items()
        }, engine
    for path, (_size, mtime, mode, ino) in first.items():
        set_id = int(path.split(" ", 1)[0])
        assert ino >> 32 == set_id, path  # inodes derive from the set id
        assert mtime > 0, path
        if stat.S_ISREG(mode):
            assert mode & 0o777 == 0o444


@given(
    set_id=st.integers(min_value=1, max_value=(1 << 32) - 2),
    artist=st.text(max_size=300),
    title=st.text(max_size=300),
)
def test_folder_names_are_valid_for_windows_and_fixed(set_id: int, artist: str, title: str):
    name = set_folder_name(set_id, artist, title)
    assert name == set_folder_name(set_id, artist, title)
    assert name.startswith(f"{set_id} ") and len(name) > len(f"{set_id} ")
    assert not FORBIDDEN & set(name)
    assert not name.endswith((" ", "."))
    units = len(name.encode("utf-16-le")) // 2
    assert SONGS + units + 1 + MEMBER_ROOM <= 259
    assert len(name.encode("utf-8", "surrogatepass")) <= 255


def test_folder_names_are_unique_and_capped():
    long_title = "Title that goes on " * 20
    names = {set_folder_name(set_id, "Artist", long_title) for set_id in range(1, 5001)}
    assert len(names) == 5000
    longest = max(len(name) for name in names)
    assert SONGS + longest + 1 + MEMBER_ROOM <= 259
    assert set_folder_name(241526, "Soleily", "Renatus") == "241526 Soleily - Renatus"
    assert set_folder_name(5, "A\x7fB", "C\x85D") == "5 AB - CD"
