"""osu! stable living in the mount (issue 9): the writable layer through real mounts.

`osufs mount --writable DIR` over the real `osufs serve`: imports (an .osz dropped into the
root, extracted into a new folder), updates (a .osu overwritten or replaced), deletions (a
difficulty, a whole set) and renames land in DIR and survive remounts, while the cache and the
source folder stay exactly as they were.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs import overlay
from osufs.samples import build_sample_library
from osufs.store import Store
from tests.helpers import REAL_ARCHIVES, Mount, Server, mounted, mounted_from, osufs_command
from tests.test_mount import expected_members

pytestmark = pytest.mark.skipif(
    shutil.which("fuse-overlayfs") is None, reason="fuse-overlayfs is not installed"
)

SONGS_SCAN = Path(__file__).resolve().parents[1] / "scripts" / "songs_scan.py"
MARKER = b"// written through the writable layer 7f3a9c"
RENATUS = "Soleily - Renatus (Gamu) [Insane].osu"
SAMPLES = 4
FIRST_SAMPLE = 100001


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    for set_id, path in enumerate(REAL_ARCHIVES, start=1):
        shutil.copy(path, folder / f"{set_id}.osz")
    build_sample_library(folder, count=SAMPLES, first_id=FIRST_SAMPLE)
    return folder


@pytest.fixture(scope="module")
def new_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An .osz no source has, as osu!direct or a browser download would bring it."""
    folder = tmp_path_factory.mktemp("download")
    # Two, as the last sample set has Shift-JIS names, which Python's zipfile would not decode.
    set_id, _japanese = build_sample_library(folder, count=2, first_id=900001, seed=9)
    path = folder / f"{set_id}.osz"
    return path.rename(folder / f"{set_id} Downloaded - Set.osz")


def runtime_env(tmp_path: Path) -> dict[str, str]:
    """A runtime directory of the test's own, so the lower mount lives under tmp_path."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {"XDG_RUNTIME_DIR": str(runtime)}


@contextlib.contextmanager
def writable_mount(tmp_path: Path, server: Server, *extra: str) -> Iterator[Mount]:
    """A writable mount of the test's library; the overlay and the lower mount are always gone
    afterwards (unmounted lazily here if the mount process did not manage it)."""
    mountpoint = tmp_path / "mnt"
    try:
        with mounted(
            mountpoint,
            tmp_path / "cache",
            tmp_path / "mount.log",
            "--source",
            f"hexide={server.url}",
            "--writable",
            str(tmp_path / "layer"),
            *extra,
            env=runtime_env(tmp_path),
        ) as mount:
            yield mount
    finally:
        for entry in overlay.lower_mounts(mountpoint):
            overlay.fusermount(entry.mountpoint, lazy=True)
    assert overlay.mounted_at(mountpoint) is None
    assert not overlay.lower_mounts(mountpoint), "the lower mount outlived the overlay"


def folder_of(root: Path, set_id: int) -> Path:
    matches = [name for name in os.listdir(root) if name.startswith(f"{set_id} ")]
    assert len(matches) == 1, matches
    return root / matches[0]


def read_tree(folder: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".wh."):
                continue  # fuse-overlayfs's own markers, seen only in the upper directory
            path = Path(dirpath) / name
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def hash_files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(skip):
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def cache_state(cache: Path) -> dict[str, object]:
    """Every content file by hash, and what the index says about every set. Access times and hit
    counters are left out: reading through the overlay legitimately updates them."""
    with contextlib.closing(Store(cache)) as store:
        catalogue = store.catalogue_page(0, 1 << 20)
        listings = {i: store.listing_get(i) for i, _ in catalogue}
        state = {
            "catalogue": catalogue,
            "listings": {i: x.to_bytes() for i, x in listings.items() if x is not None},
            "cached": {i: sorted(store.cached_entries(i)) for i, _ in catalogue},
        }
    state["content"] = hash_files(cache / "content")
    return state


def assert_marker_absent(cache: Path) -> None:
    for path in cache.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), f"written bytes reached the cache: {path}"


def test_import_osz_and_extracted_folder(
    server: Server, archives: Path, new_set: Path, tmp_path: Path
):
    sources = hash_files(archives)
    with writable_mount(tmp_path, server) as mount:
        root = mount.mountpoint
        listed = set(os.listdir(root))
        for set_id in (1, FIRST_SAMPLE):
            read_tree(folder_of(root, set_id))  # as osu!'s first scan would
    before = cache_state(tmp_path / "cache")

    members = expected_members(new_set)
    folder_name = new_set.stem
    with writable_mount(tmp_path, server) as mount:
        root = mount.mountpoint
        # osu! finds the .osz in Songs, extracts it to a folder of its name, deletes the .osz.
        shutil.copy(new_set, root / new_set.name)
        assert new_set.name in os.listdir(root)
        assert (root / new_set.name).read_bytes() == new_set.read_bytes()
        with zipfile.ZipFile(root / new_set.name) as zf:
            zf.extractall(root / folder_name)
        os.remove(root / new_set.name)
        assert set(os.listdir(root)) == listed | {folder_name}
        assert read_tree(root / folder_name) == members
        # The library is still all there beside it.
        assert read_tree(folder_of(root, 1)) == expected_members(archives / "1.osz")

    with writable_mount(tmp_path, server) as mount:
        assert set(os.listdir(mount.mountpoint)) == listed | {folder_name}
        assert read_tree(mount.mountpoint / folder_name) == members
    assert read_tree(tmp_path / "layer" / "upper" / folder_name) == members
    assert cache_state(tmp_path / "cache") == before
    assert hash_files(archives) == sources


def test_updated_osu_shadows_the_archive(server: Server, archives: Path, tmp_path: Path):
    sources = hash_files(archives)
    original = expected_members(archives / "1.osz")
    with writable_mount(tmp_path, server) as mount:
        read_tree(folder_of(mount.mountpoint, 1))
    before = cache_state(tmp_path / "cache")

    others = sorted(n for n in original if n.endswith(".osu") and n != RENATUS)
    updated = original[RENATUS] + b"\r\n" + MARKER + b"\r\n"
    replaced = MARKER + b" replaced"
    with writable_mount(tmp_path, server) as mount:
        folder = folder_of(mount.mountpoint, 1)
        assert (folder / RENATUS).read_bytes() == original[RENATUS]
        # The editor saves in place; a map update writes a new file and replaces the old one.
        with open(folder / RENATUS, "wb") as file:
            file.write(updated)
        assert (folder / RENATUS).read_bytes() == updated
        assert os.stat(folder / RENATUS).st_size == len(updated)
        (folder / "update.tmp").write_bytes(replaced)
        os.replace(folder / "update.tmp", folder / others[0])
        assert (folder / others[0]).read_bytes() == replaced

    with writable_mount(tmp_path, server) as mount:
        tree = read_tree(folder_of(mount.mountpoint, 1))
    assert tree == {**original, RENATUS: updated, others[0]: replaced}
    assert cache_state(tmp_path / "cache") == before
    assert_marker_absent(tmp_path / "cache")
    assert hash_files(archives) == sources


def test_deletions_and_renames_stay_across_remounts(server: Server, archives: Path, tmp_path: Path):
    sources = hash_files(archives)
    original = expected_members(archives / "1.osz")
    with writable_mount(tmp_path, server) as mount:
        root = mount.mountpoint
        listed = set(os.listdir(root))
        doomed = folder_of(root, FIRST_SAMPLE)
        for set_id in (1, FIRST_SAMPLE, FIRST_SAMPLE + 1):
            read_tree(folder_of(root, set_id))
    before = cache_state(tmp_path / "cache")

    renamed = "Soleily - Renatus (Gamu) [Renamed].osu"
    difficulty = sorted(n for n in original if n.endswith(".osu") and n != RENATUS)[0]
    with writable_mount(tmp_path, server) as mount:
        root = mount.mountpoint
        folder = folder_of(root, 1)
        os.remove(folder / difficulty)
        os.rename(folder / RENATUS, folder / renamed)
        shutil.rmtree(doomed.parent / doomed.name)
        assert doomed.name not in os.listdir(root)
        assert difficulty not in os.listdir(folder)
        # A library folder cannot be renamed: fuse-overlayfs has no redirect_dir (documented).
        with pytest.raises(OSError) as caught:
            os.rename(folder_of(root, FIRST_SAMPLE + 1), root / "moved")
        assert caught.value.errno == errno.EXDEV

    with writable_mount(tmp_path, server) as mount:
        root = mount.mountpoint
        assert set(os.listdir(root)) == listed - {doomed.name}
        with pytest.raises(FileNotFoundError):
            os.stat(root / doomed.name)
        folder = folder_of(root, 1)
        with pytest.raises(FileNotFoundError):
            os.stat(folder / difficulty)
        tree = read_tree(folder)
    expected = {k: v for k, v in original.items() if k not in (difficulty, RENATUS)}
    assert tree == {**expected, renamed: original[RENATUS]}
    assert cache_state(tmp_path / "cache") == before
    assert hash_files(archives) == sources


def test_overlay_start_costs_no_network(server: Server, archives: Path, tmp_path: Path):
    """fuse-overlayfs loads the whole root as it starts: that must be index reads only."""
    with writable_mount(tmp_path, server):
        pass  # the first mount fetches the set list
    start = server.stats()
    with writable_mount(tmp_path, server) as mount:
        root = mount.mountpoint
        names = os.listdir(root)
        for name in names:
            st = os.stat(root / name)
            assert st.st_ino >> 32 == int(name.split(" ", 1)[0])  # osufs's inode, passed through
        assert server.stats() == start, "starting the overlay or listing the root fetched"
        # Unlisted names, such as the bare id, do not resolve through the overlay (README).
        assert not (root / "1").exists()
        os.listdir(folder_of(root, 1))
        assert server.stats()["requests"] == start["requests"] + 1  # the archive's tail
        assert server.stats()["downloads"].get("1") == start["downloads"].get("1", 0) + 1
    assert len(names) == len(list(archives.glob("*.osz")))


def test_read_only_without_writable(server: Server, tmp_path: Path):
    with mounted_from(server, tmp_path) as mount:
        folder = folder_of(mount.mountpoint, 1)
        attempts = [
            lambda: os.open(folder / RENATUS, os.O_WRONLY | os.O_TRUNC),
            lambda: os.unlink(folder / RENATUS),
            lambda: os.mkdir(mount.mountpoint / "900001 New - Set"),
            lambda: os.open(mount.mountpoint / "900001.osz", os.O_WRONLY | os.O_CREAT),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EROFS
        assert overlay.mounted_at(mount.mountpoint).fstype == "fuse.osufs"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        osufs_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_umount_command_for_both_forms(server: Server, tmp_path: Path):
    env = runtime_env(tmp_path)
    source = ("--source", f"hexide={server.url}", "--cache-dir", str(tmp_path / "cache"))
    for form in ((), ("--writable", str(tmp_path / "layer"))):
        mountpoint = tmp_path / f"mnt{len(form)}"
        mountpoint.mkdir()
        try:
            started = run_cli("mount", str(mountpoint), *source, *form, env=env)
            assert started.returncode == 0, started.stderr
            assert os.listdir(mountpoint)
            stopped = run_cli("umount", str(mountpoint), env=env)
            assert stopped.returncode == 0, stopped.stderr
            assert overlay.mounted_at(mountpoint) is None
            assert not overlay.lower_mounts(mountpoint)
        finally:
            for entry in [overlay.mounted_at(mountpoint), *overlay.lower_mounts(mountpoint)]:
                if entry is not None:
                    overlay.fusermount(entry.mountpoint, lazy=True)


def test_missing_fuse_overlayfs_says_what_to_install(tmp_path: Path):
    (tmp_path / "mnt").mkdir()
    bare = tmp_path / "bin"
    bare.mkdir()
    result = run_cli(
        "mount",
        str(tmp_path / "mnt"),
        "--offline",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--writable",
        str(tmp_path / "layer"),
        env={"PATH": str(bare)},
    )
    assert result.returncode != 0
    assert "install the fuse-overlayfs package" in result.stderr
    assert overlay.mounted_at(tmp_path / "mnt") is None


def songs_scan(mountpoint: Path, server: Server) -> dict:
    result = subprocess.run(
        [sys.executable, str(SONGS_SCAN), str(mountpoint), "--stats-url", server.url, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_songs_scan_through_both_mounts(server: Server, archives: Path, tmp_path: Path):
    sets = len(list(archives.glob("*.osz")))
    with mounted(
        tmp_path / "ro",
        tmp_path / "ro-cache",
        tmp_path / "ro.log",
        "--source",
        f"hexide={server.url}",
    ) as mount:
        read_only = songs_scan(mount.mountpoint, server)
    with writable_mount(tmp_path, server) as mount:
        cold = songs_scan(mount.mountpoint, server)
        warm = songs_scan(mount.mountpoint, server)
    for report in (read_only, cold, warm):
        assert report["errors"] == []
        assert report["sets"] == sets
    assert cold["files"] == read_only["files"] and cold["osu_files"] == read_only["osu_files"]
    assert cold["bytes_read"] == read_only["bytes_read"] == warm["bytes_read"]
    assert cold["bytes_sent"] > 0
    assert warm["bytes_sent"] == 0
