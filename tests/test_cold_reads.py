"""Cold reads through a real mount, counted at the real server: a large member's first bytes
come before the member has arrived, a read in the middle of a stored member fetches around
it, a member failing its CRC is dropped after bytes were served, a dropped connection is
resumed. Every filesystem call that could hang runs with the pytest timeout as its bound."""

from __future__ import annotations

import errno
import glob
import os
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs.samples import build_sample_library
from tests.helpers import Server, mounted_from
from tests.hostile import Raw, build_zip, osu_text

BIG = 24 << 20
LINK = 24_000_000  # bytes a second: the big member takes about a second to arrive
SET_ID = 4242
BAD_CRC_SET = 4243
NOISE_SET = 4244  # a deflated member that does not compress: 2 MiB to inflate from its start


def media(size: int, seed: int) -> bytes:
    return (seed.to_bytes(4, "little") + os.urandom(4092)) * (size // 4096)


@pytest.fixture(scope="module")
def contents() -> dict[int, dict[str, bytes]]:
    return {
        SET_ID: {
            "a (b) [c].osu": osu_text("Cold"),
            "audio.mp3": media(BIG, 1),
            "video.avi": media(4 << 20, 2),
        },
        BAD_CRC_SET: {"a (b) [c].osu": osu_text("Bad"), "audio.mp3": media(4 << 20, 3)},
        NOISE_SET: {"a (b) [c].osu": osu_text("Noise"), "video.avi": os.urandom(2 << 20)},
    }


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, contents: dict) -> Path:
    folder = tmp_path_factory.mktemp("cold-archives")
    for set_id, files in contents.items():
        members = []
        for name, data in files.items():
            # Audio is stored, as in real sets; the video deflated, so it streams from its start.
            method = 8 if name.endswith((".osu", ".avi")) else 0
            crc = zlib.crc32(data) ^ (1 if set_id == BAD_CRC_SET and name == "audio.mp3" else 0)
            members.append(Raw(name.encode(), data, method=method, crc=crc))
        (folder / f"{set_id}.osz").write_bytes(build_zip(members))
    return folder


@pytest.fixture
def linked(archives: Path, tmp_path: Path) -> Iterator[Server]:
    server = Server(archives, tmp_path / "server.log", "--link", str(LINK), "--latency", "0.01")
    try:
        yield server
    finally:
        server.stop()


def set_dir(mountpoint: Path, set_id: int) -> Path:
    (path,) = [p for p in mountpoint.iterdir() if p.name.startswith(f"{set_id} ")]
    return path


def peak_memory(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmHWM")


def wait_cached(path: Path, state: str = "yes") -> None:
    for _ in range(400):
        if os.getxattr(path, "user.osufs.cached").decode() == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name} never became cached={state}")


def test_the_first_mib_returns_before_the_member_arrives(
    linked: Server, tmp_path: Path, contents: dict
) -> None:
    expected = contents[SET_ID]["audio.mp3"]
    with mounted_from(linked, tmp_path) as mount:
        path = set_dir(mount.mountpoint, SET_ID) / "audio.mp3"
        before = linked.stats()["bytes_sent"]
        memory = peak_memory(mount.process.pid)
        with open(path, "rb") as file:
            first = file.read(1 << 20)
            sent = linked.stats()["bytes_sent"] - before
            assert first == expected[: 1 << 20]
            assert sent < len(expected) // 2  # the member was still arriving
            assert file.read() == expected[1 << 20 :]
        wait_cached(path)
        assert path.read_bytes() == expected
        # Streamed through a file, not held: the mount grew by far less than the member.
        assert peak_memory(mount.process.pid) - memory < 16 << 20
        assert "streamed, checked and stored" in mount.log()


def test_a_read_in_the_middle_of_a_stored_member_fetches_around_it(
    linked: Server, tmp_path: Path, contents: dict
) -> None:
    expected = contents[SET_ID]["audio.mp3"]
    with mounted_from(linked, tmp_path) as mount:
        path = set_dir(mount.mountpoint, SET_ID) / "audio.mp3"
        at = int(len(expected) * 0.6)
        assert path.stat().st_size == len(expected)  # the set's listing: one request
        before = linked.stats()
        with open(path, "rb") as file:
            file.seek(at)
            assert file.read(64 << 10) == expected[at : at + (64 << 10)]
            after = linked.stats()
        # Not from the start: what came is the run from near the offset (still going).
        assert after["bytes_sent"] - before["bytes_sent"] < len(expected) - at + (1 << 20)
        # Its local header and the range from the offset, side by side.
        assert after["requests"] - before["requests"] <= 2


def test_a_deflated_member_streams_from_its_start(
    linked: Server, tmp_path: Path, contents: dict
) -> None:
    expected = contents[SET_ID]["video.avi"]
    with mounted_from(linked, tmp_path) as mount:
        path = set_dir(mount.mountpoint, SET_ID) / "video.avi"
        with open(path, "rb") as file:
            file.seek(len(expected) - 4096)
            assert file.read() == expected[-4096:]
        wait_cached(path)
        assert path.read_bytes() == expected


def test_a_member_failing_its_crc_is_dropped(
    linked: Server, tmp_path: Path, contents: dict
) -> None:
    expected = contents[BAD_CRC_SET]["audio.mp3"]
    with mounted_from(linked, tmp_path) as mount:
        path = set_dir(mount.mountpoint, BAD_CRC_SET) / "audio.mp3"
        with open(path, "rb") as file:
            # Until the member is complete, the source's bytes as they came.
            assert file.read(4096) == expected[:4096]
            for _ in range(400):
                try:
                    file.seek(0)
                    file.read()
                except OSError as error:
                    assert error.errno == errno.EIO
                    break
                time.sleep(0.05)
        with pytest.raises(OSError) as refused:
            path.read_bytes()
        assert refused.value.errno == errno.EIO
        with pytest.raises(OSError) as refused, open(path, "rb") as file:
            file.read(4096)  # its first pages too, read before the check: never served again
        assert refused.value.errno == errno.EIO
        assert os.getxattr(path, "user.osufs.cached") == b"no"
        assert "CRC32 mismatch" in mount.log()
    content = tmp_path / "cache" / "content"
    kept = [p for p in content.rglob("*") if p.is_file() and p.stat().st_size == len(expected)]
    assert not kept


def test_a_connection_dropped_mid_member_is_resumed(
    archives: Path, tmp_path: Path, contents: dict
) -> None:
    expected = contents[SET_ID]["audio.mp3"]
    server = Server(archives, tmp_path / "server.log", "--cut-after", str(5 << 20))
    try:
        with mounted_from(server, tmp_path) as mount:
            path = set_dir(mount.mountpoint, SET_ID) / "audio.mp3"
            assert path.read_bytes() == expected
            wait_cached(path)
            assert server.stats()["cut_short"] >= 4
            assert "resuming at byte" in mount.log()
    finally:
        server.stop()


def test_a_source_that_keeps_closing_mid_member_fails_the_read_within_the_deadline(
    archives: Path, tmp_path: Path, contents: dict
) -> None:
    expected = contents[NOISE_SET]["video.avi"]
    # Every body closed after 32 KiB: the deflated video resumes again and again, 100 ms a
    # time, far slower than the 2 s a reader waits for its bytes at the end of it (or, when
    # resumes bring nothing new, it fails after three).
    server = Server(archives, tmp_path / "server.log", "--cut-after", str(32 << 10),
                    "--latency", "0.1")  # fmt: skip
    try:
        with mounted_from(server, tmp_path, "--fetch-timeout", "2") as mount:
            path = set_dir(mount.mountpoint, NOISE_SET) / "video.avi"
            with open(path, "rb") as file:
                file.seek(len(expected) - 4096)
                with pytest.raises(OSError) as failed:
                    file.read(4096)
            assert failed.value.errno == errno.EIO
            assert server.stats()["cut_short"] >= 2
            log = mount.log()
            assert "resuming at byte" in log
            assert "did not come in 2.0 s" in log or "member 2: dropped" in log
            assert os.getxattr(path, "user.osufs.cached") == b"no"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fifty_sets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fifty")
    build_sample_library(folder, 50, audio_size=20_000)
    return folder


def test_a_glob_over_cold_set_folders_lists_them_in_parallel(
    fifty_sets: Path, tmp_path: Path
) -> None:
    server = Server(fifty_sets, tmp_path / "server.log", "--latency", "0.05")
    try:
        with mounted_from(server, tmp_path) as mount:
            before = server.stats()
            assert before["peak_in_flight"] == 1  # the catalogue, alone
            found = glob.glob(str(mount.mountpoint / "*" / "*.osu"))
            after = server.stats()
            assert len({Path(p).parent for p in found}) == 50
            assert after["peak_in_flight"] > 1  # listings overlapped
            # One request a listing, read ahead or not; the set with Shift-JIS names also
            # has its .osu files read, to choose their code page.
            asked = Counter(after["downloads"])
            assert sorted(asked.values())[:-1] == [1] * 49
    finally:
        server.stop()


def test_a_grep_after_the_glob_asks_each_set_for_its_osu_files_once(
    fifty_sets: Path, tmp_path: Path
) -> None:
    server = Server(fifty_sets, tmp_path / "server.log", "--latency", "0.05")
    try:
        with mounted_from(server, tmp_path) as mount:
            found = sorted(glob.glob(str(mount.mountpoint / "*" / "*.osu")))
            listed = Counter(server.stats()["downloads"])
            for path in found:  # as `grep -c '' ROOT/*/*.osu` reads them
                Path(path).read_bytes()
            asked = Counter(server.stats()["downloads"])
            # A set's .osu files lie together: one range, by the read-ahead or by the reader
            # (who waits for a read-ahead already asking), never both. The Shift-JIS set's came
            # with its listing.
            more = sorted(asked[set_id] - listed[set_id] for set_id in asked)
            assert more in ([0] + [1] * 49, [1] * 50)
    finally:
        server.stop()
