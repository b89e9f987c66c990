"""A user's session with a real mount over the real `osufs serve` on loopback."""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from osufs.samples import build_sample_library
from tests.helpers import REAL_ARCHIVES, Server, mounted, mounted_from

JUNK = ("__MACOSX/", ".DS_Store", "Thumbs.db")


def expected_members(archive: Path) -> dict[str, bytes]:
    """Member path -> bytes, decoded the way osu! does (UTF-8 flag, UTF-8, else code page 932)."""
    found: dict[str, bytes] = {}
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            raw = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                name = raw.decode("cp932")
            name = name.replace("\\", "/")
            if info.is_dir() or any(junk in name for junk in JUNK):
                continue
            found[name] = zf.read(info)
    return found


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    for set_id, path in enumerate(REAL_ARCHIVES, start=1):
        shutil.copy(path, folder / f"{set_id}.osz")
    build_sample_library(folder, count=6)
    return folder


def set_folder(mountpoint: Path, set_id: int) -> Path:
    matches = [name for name in os.listdir(mountpoint) if name.startswith(f"{set_id} ")]
    assert len(matches) == 1, matches
    return mountpoint / matches[0]


def test_every_member_reads_byte_identical(server: Server, archives: Path, tmp_path: Path):
    with mounted_from(server, tmp_path) as mount:
        for set_id, path in enumerate(REAL_ARCHIVES, start=1):
            folder = set_folder(mount.mountpoint, set_id)
            for name, data in expected_members(path).items():
                with open(folder / name, "rb") as file:
                    assert file.read() == data, (path.name, name)
                if data:
                    with (
                        open(folder / name, "rb") as file,
                        mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ) as mapped,
                    ):
                        assert mapped[:] == data
                        assert mapped[len(data) // 2 :] == data[len(data) // 2 :]
                assert os.stat(folder / name).st_size == len(data)


def test_root_names_symlinks_and_junk(server: Server, archives: Path, tmp_path: Path):
    with mounted_from(server, tmp_path) as mount:
        root = sorted(os.listdir(mount.mountpoint))
        assert len(root) == len(list(archives.glob("*.osz")))
        assert "1 " not in root and all(name.split(" ", 1)[0].isdigit() for name in root)
        assert server.stats()["downloads"] == {}, "listing the root downloaded something"
        renatus = set_folder(mount.mountpoint, 1)
        assert renatus.name == "1 Soleily - Renatus"
        assert os.readlink(mount.mountpoint / "1") == renatus.name
        assert (mount.mountpoint / "1" / "Soleily - Renatus (Gamu) [Insane].osu").is_file()
        japanese = set_folder(
            mount.mountpoint,
            REAL_ARCHIVES.index(next(p for p in REAL_ARCHIVES if p.name == "japanese-filename.osz"))
            + 1,
        )
        assert "見本.ogg" in os.listdir(japanese)
        for set_id in range(1, len(REAL_ARCHIVES) + 1):
            for _dirpath, dirnames, filenames in os.walk(set_folder(mount.mountpoint, set_id)):
                assert "__MACOSX" not in dirnames
                assert not [n for n in filenames if n in (".DS_Store", "Thumbs.db")]
                assert not [n for n in filenames if n.startswith("._")]
        with pytest.raises(FileNotFoundError):
            os.stat(mount.mountpoint / "999999")


def ls_a(folder: Path) -> list[str]:
    """Names as `ls -a` sees them: the raw directory stream, `.` and `..` included."""
    import subprocess

    return subprocess.run(["ls", "-a1f", str(folder)], capture_output=True, text=True,
                          check=True).stdout.splitlines()  # fmt: skip


def test_dot_entries_and_the_catalogue_times(server: Server, archives: Path, tmp_path: Path):
    with mounted_from(server, tmp_path) as mount:
        root = mount.mountpoint
        listed = ls_a(root)
        assert listed[:2] == [".", ".."] and sorted(listed[2:]) == sorted(os.listdir(root))
        folder = set_folder(root, 1)
        assert ls_a(folder)[:2] == [".", ".."]
        assert sorted(ls_a(folder)[2:]) == sorted(os.listdir(folder))
        sample = root / next(p.stem for p in sorted(archives.glob("*.osz")) if int(p.stem) > 1000)
        sub = next(sample / name for name in os.listdir(sample) if (sample / name).is_dir())
        assert ls_a(sub)[:2] == [".", ".."]
        # The root takes its newest set's time; a bare-id symlink its set's; never 1970.
        times = [os.stat(root / name).st_mtime_ns for name in os.listdir(root)]
        assert os.stat(root).st_mtime_ns == max(times) > 0
        assert os.lstat(root / "1").st_mtime_ns == os.stat(folder).st_mtime_ns > 0
        assert not os.path.exists(root / "4294967297"), "an id past 2^31-1 has no inode"


def test_sample_set_tree_has_subfolders_and_times(server: Server, archives: Path, tmp_path: Path):
    sample = next(p for p in sorted(archives.glob("*.osz")) if int(p.stem) > 1000)
    with mounted_from(server, tmp_path) as mount:
        folder = mount.mountpoint / sample.stem
        with zipfile.ZipFile(sample) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                st = os.stat(folder / info.filename)
                assert st.st_size == info.file_size
                assert st.st_mtime_ns % 1_000_000_000 == 0
        assert any(os.path.isdir(folder / name) for name in os.listdir(folder))


def test_everything_that_writes_is_erofs(server: Server, tmp_path: Path):
    with mounted_from(server, tmp_path) as mount:
        folder = mount.mountpoint / "1"
        member = folder / "Soleily - Renatus (Gamu) [Insane].osu"
        attempts = [
            lambda: os.open(folder / "new.osu", os.O_CREAT | os.O_WRONLY),
            lambda: os.open(member, os.O_RDWR),
            lambda: os.unlink(member),
            lambda: os.rename(member, folder / "moved.osu"),
            lambda: os.mkdir(folder / "sub"),
            lambda: os.mkdir(mount.mountpoint / "123 New - Set"),
            lambda: os.chmod(member, 0o777),
            lambda: os.truncate(member, 0),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EROFS


def _read_together(paths: list[Path]) -> list[bytes]:
    barrier = threading.Barrier(len(paths))
    results: list[bytes | None] = [None] * len(paths)

    def read(i: int) -> None:
        barrier.wait()
        with open(paths[i], "rb") as file:
            results[i] = file.read()

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(paths))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [r for r in results if r is not None]


def test_sixteen_readers_one_download(archives: Path, tmp_path: Path):
    """Against a mirror without ranges, sixteen first readers of one set cause one download."""
    server = Server(archives, tmp_path / "server.log", "--no-ranges")
    try:
        with mounted_from(server, tmp_path) as mount:
            expected = expected_members(REAL_ARCHIVES[0])
            names = sorted(expected)[:16]
            paths = [mount.mountpoint / "1" / names[i % len(names)] for i in range(16)]
            results = _read_together(paths)
            assert results == [expected[path.name] for path in paths]
            assert server.stats()["downloads"] == {"1": 1}
    finally:
        server.stop()


def test_sixteen_readers_one_fetch(server: Server, tmp_path: Path):
    with mounted_from(server, tmp_path, "--read-ahead", "0") as mount:
        folder = mount.mountpoint / "1"
        os.listdir(folder)
        before = server.stats()
        member = "Soleily - Renatus (ExPew) [Another].osu"
        results = _read_together([folder / member] * 16)
        assert len(set(results)) == 1
        assert results[0] == expected_members(REAL_ARCHIVES[0])[member]
        after = server.stats()
        # The set was reached by ranges when listed: one ranged request for the member.
        assert after["requests"] - before["requests"] == 1
        assert after["downloads"]["1"] == before["downloads"]["1"] + 1


def test_cache_survives_remount_without_server(archives: Path, tmp_path: Path):
    server = Server(archives, tmp_path / "server.log")
    cache = tmp_path / "cache"
    expected = expected_members(REAL_ARCHIVES[0])
    try:
        with mounted(
            tmp_path / "mnt",
            cache,
            tmp_path / "mount1.log",
            "--source",
            f"hexide={server.url}",
            "--read-ahead",
            "0",
        ) as mount:
            for name, data in expected.items():
                assert (mount.mountpoint / "1" / name).read_bytes() == data
            listing = sorted(os.listdir(mount.mountpoint))
    finally:
        server.stop()
    with mounted(
        tmp_path / "mnt",
        cache,
        tmp_path / "mount2.log",
        "--source",
        f"hexide={server.url}",
        "--fetch-timeout",
        "5",
    ) as mount:
        assert sorted(os.listdir(mount.mountpoint)) == listing
        for name, data in expected.items():
            assert (mount.mountpoint / "1" / name).read_bytes() == data
        uncached = set_folder(mount.mountpoint, 2)
        with pytest.raises(OSError) as caught:
            os.listdir(uncached)
        assert caught.value.errno == errno.EIO
