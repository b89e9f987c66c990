"""Fitting where users mount it: a large root, xattrs, statfs, du, the config file (issue 7)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from osufs.names import set_folder_name
from osufs.samples import build_sample_library
from osufs.store import CatalogueRecord, Store
from tests.helpers import Server, mounted, mounted_from
from tests.test_api_sources import wait_for

LARGE_ROOT = 20_000


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    build_sample_library(folder, count=4, audio_size=300_000)
    return folder


def test_large_root_lists_every_set_in_a_stable_order(tmp_path: Path):
    cache = tmp_path / "cache"
    store = Store(cache)
    names = {
        set_id: set_folder_name(set_id, f"Artist {set_id % 97}", f"Title {set_id}")
        for set_id in range(1, 3 * LARGE_ROOT, 3)
    }
    store.catalogue_add([(i, CatalogueRecord(n, 0, "test")) for i, n in names.items()])
    store.close()
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", "--offline") as mount:
        first = os.listdir(mount.mountpoint)
        second = [entry.name for entry in os.scandir(mount.mountpoint)]
        assert first == second, "two listings of the root differ"
        assert first == [names[i] for i in sorted(names)]  # in set id order, none lost
        assert len(set(first)) == len(names)
        some = names[3 * 1234 + 1]
        assert os.stat(mount.mountpoint / some).st_mode & 0o170000 == 0o040000
        stats = os.statvfs(mount.mountpoint)
        assert stats.f_files == len(names)
        assert stats.f_bsize == 4096


def test_sets_joining_during_a_root_listing(tmp_path: Path):
    """Another process adds sets between two readdir requests of one listing: no set is sent
    twice or lost, the one added past the reader's position shows, and readdir's attributes
    are each set's own."""
    cache = tmp_path / "cache"
    records = {
        set_id: CatalogueRecord(
            set_folder_name(set_id, f"Artist {set_id % 89}", f"Title {set_id}"),
            (1_500_000_000 + set_id) * 1_000_000_000,
            "test",
        )
        for set_id in range(10, 10 * LARGE_ROOT + 1, 10)
    }
    store = Store(cache)
    store.catalogue_add(list(records.items()))
    store.close()
    behind, ahead = 15, 10 * LARGE_ROOT + 5
    joining = {
        i: CatalogueRecord(set_folder_name(i, "Late", f"Set {i}"), 0, "test")
        for i in (behind, ahead)
    }
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", "--offline") as mount:
        # glibc sizes its readdir buffer from st_blksize: 1 MiB asks for thousands of sets at
        # once, but 20,000 still take several requests.
        assert os.stat(mount.mountpoint).st_blksize == 1 << 20
        with os.scandir(mount.mountpoint) as listing:
            listed = [next(listing).name]  # the first request is answered and buffered
            writer = Store(cache)
            try:
                writer.catalogue_add(list(joining.items()))
            finally:
                writer.close()
            listed += [entry.name for entry in listing]
        ids = [int(name.split(" ", 1)[0]) for name in listed]
        assert ids == sorted(set(ids)), "a set was sent twice or out of order"
        assert set(ids) == set(records) | {ahead}, "a set was lost, or one behind was sent"
        # The next listing has every set, at once: in the no-open mode the kernel's copy of
        # that first listing, which missed the set behind, was dropped when it was answered.
        every = {r.folder for r in [*records.values(), *joining.values()]}
        assert set(os.listdir(mount.mountpoint)) == every
        # A set another process adds after that shows at a listing soon after its commit.
        later = CatalogueRecord(set_folder_name(ahead + 10, "Later", "Still"), 0, "test")
        writer = Store(cache)
        try:
            writer.catalogue_add([(ahead + 10, later)])
        finally:
            writer.close()
        wait_for(lambda: later.folder in os.listdir(mount.mountpoint), "the later set listed")
        for set_id in (10, 12_340, 10 * LARGE_ROOT, ahead):
            record = records.get(set_id) or joining[set_id]
            st = os.stat(mount.mountpoint / record.folder)
            assert (st.st_ino, st.st_mtime_ns, st.st_ctime_ns) == (
                set_id << 32,
                record.mtime_ns,
                record.mtime_ns,
            )
            assert st.st_mode == 0o040555 and st.st_nlink == 2


def test_xattrs_say_what_a_file_manager_wants(server: Server, archives: Path, tmp_path: Path):
    with mounted_from(server, tmp_path, "--read-ahead", "0") as mount:
        folder = mount.mountpoint / "100001"
        audio = folder / "audio.mp3"
        assert os.getxattr(folder, "user.osufs.set_id") == b"100001"
        assert os.getxattr(folder, "user.osufs.source").startswith(b"hexide 127.0.0.1")
        assert set(os.listxattr(audio)) == {
            "user.osufs.set_id",
            "user.osufs.cached",
            "user.osufs.source",
        }
        assert os.getxattr(audio, "user.osufs.cached") == b"no"
        assert os.getxattr(folder, "user.osufs.cached") == b"no"
        audio.read_bytes()
        assert os.getxattr(audio, "user.osufs.cached") == b"yes"
        assert os.getxattr(folder, "user.osufs.cached") == b"partly"
        with pytest.raises(OSError):
            os.setxattr(audio, "user.note", b"x")
        with pytest.raises(OSError) as caught:  # so ls -l stops asking for every entry
            os.getxattr(audio, "security.selinux")
        assert caught.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as caught:
            os.getxattr(audio, "user.other")
        assert caught.value.errno == errno.ENODATA


def test_du_of_an_uncached_set_downloads_nothing(server: Server, archives: Path, tmp_path: Path):
    # No reading ahead: the neighbours' listings would count as requests of their own.
    with mounted_from(server, tmp_path, "--read-ahead", "0") as mount:
        output = subprocess.run(
            ["du", "-s", "--apparent-size", "-B1", str(mount.mountpoint / "100002") + "/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        stats = server.stats()
    with zipfile.ZipFile(archives / "100002.osz") as zf:
        total = sum(info.file_size for info in zf.infolist() if not info.is_dir())
    assert int(output.split()[0]) >= total
    assert stats["downloads"] == {"100002": 1}  # the archive's tail, for its directory
    assert stats["bytes_sent"] < (archives / "100002.osz").stat().st_size / 4


def test_config_file_sets_sources_and_cache(server: Server, archives: Path, tmp_path: Path):
    cache = tmp_path / "configured-cache"
    config = tmp_path / "config.toml"
    config.write_text(f'sources = ["hexide={server.url}"]\ncache_dir = "{cache}"\n')
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    command = [sys.executable, "-m", "osufs", "--config", str(config), "mount", str(mountpoint)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    try:
        with zipfile.ZipFile(archives / "100001.osz") as zf:
            assert (mountpoint / "100001" / "bg.jpg").read_bytes() == zf.read("bg.jpg")
        assert (cache / "index").is_dir()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
    bad = tmp_path / "bad.toml"
    bad.write_text("fetch_timeout = 'soon'\n")
    refused = subprocess.run(
        [sys.executable, "-m", "osufs", "--config", str(bad), "mount", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert "fetch_timeout has the wrong type" in refused.stderr
