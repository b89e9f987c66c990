"""How bytes reach a reader: the metadata tier, ranged members, whole archives (issue 4)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from osufs.samples import build_sample_library
from tests.helpers import Server, ThreadedApp, mounted, mounted_from

SETS = 12


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    build_sample_library(folder, count=SETS, audio_size=1_500_000)
    return folder


def osu_members(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {
            info.filename: zf.read(info)
            for info in zf.infolist()
            if info.filename.endswith(".osu") and "/" not in info.filename
        }


def has_legacy_names(archive: Path) -> bool:
    with zipfile.ZipFile(archive) as zf:
        return any(
            not info.flag_bits & 0x800 and not info.filename.isascii() for info in zf.infolist()
        )


def archive_bytes(archives: Path) -> int:
    return sum(path.stat().st_size for path in archives.glob("*.osz"))


def read_all_osu(mountpoint: Path, archives: Path) -> None:
    for archive in sorted(archives.glob("*.osz")):
        for name, data in osu_members(archive).items():
            assert (mountpoint / archive.stem / name).read_bytes() == data, (archive, name)


def test_osu_files_from_the_metadata_tier(server: Server, archives: Path, tmp_path: Path):
    """Listings cached by an earlier session; the .osu files then never touch an archive."""
    cache = tmp_path / "cache"
    with mounted(
        tmp_path / "mnt", cache, tmp_path / "browse.log", "--source", f"hexide={server.url}"
    ) as mount:
        for archive in archives.glob("*.osz"):
            os.listdir(mount.mountpoint / archive.stem)
    before = server.stats()
    with mounted(
        tmp_path / "mnt", cache, tmp_path / "scan.log", "--source", f"hexide={server.url}"
    ) as mount:
        read_all_osu(mount.mountpoint, archives)
    after = server.stats()
    assert after["downloads"] == before["downloads"], "an archive was touched"
    for archive in archives.glob("*.osz"):
        # One tail request per set for its listing in the first session, except where legacy
        # names needed the .osu files to choose a code page: those came by range then.
        extra = len(osu_members(archive)) if has_legacy_names(archive) else 0
        assert after["downloads"][archive.stem] == 1 + extra
    assert after["bytes_sent"] < 0.05 * archive_bytes(archives)


def test_osu_files_from_ranged_members(server: Server, archives: Path, tmp_path: Path):
    """A plain mirror has no metadata tier: members come by range, never whole archives."""
    template = f"url={server.url}/beatmaps/{{id}}/download"
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        template,
        "--read-ahead",
        "0",
    ) as mount:
        os.listdir(mount.mountpoint / "100001")  # a plain mirror has no list: look up by id
        read_all_osu(mount.mountpoint, archives)
        stats = server.stats()
    for archive in archives.glob("*.osz"):
        # The tail, then one range per .osu.
        assert stats["downloads"][archive.stem] == 1 + len(osu_members(archive))
    assert stats["bytes_sent"] < 0.05 * archive_bytes(archives)


def test_source_without_ranges_still_works(archives: Path, tmp_path: Path):
    server = Server(archives, tmp_path / "server.log", "--no-ranges")
    try:
        with mounted_from(server, tmp_path) as mount:
            read_all_osu(mount.mountpoint, archives)
            audio = mount.mountpoint / "100002" / "audio.mp3"
            with zipfile.ZipFile(archives / "100002.osz") as zf:
                assert audio.read_bytes() == zf.read("audio.mp3")
            stats = server.stats()
        assert stats["downloads"] == {path.stem: 1 for path in archives.glob("*.osz")}
    finally:
        server.stop()


def lying_mirror(upstream: str) -> Starlette:
    """Forwards to a real mirror but changes one byte of every raw .osu it serves."""

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient() as client:
            answer = await client.get(
                f"{upstream}{request.url.path}",
                headers={k: v for k, v in request.headers.items() if k.lower() == "range"},
            )
        body = answer.content
        if request.url.path.endswith("/raw"):
            body = body[:-1] + bytes([body[-1] ^ 0x20])
        headers = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() in ("content-type", "content-range", "accept-ranges")
        }
        return Response(body, status_code=answer.status_code, headers=headers)

    return Starlette(routes=[Route("/{path:path}", forward)])


def test_wrong_metadata_tier_bytes_fall_back_to_the_archive(
    server: Server, archives: Path, tmp_path: Path
):
    liar = ThreadedApp(lying_mirror(server.url))
    cache = tmp_path / "cache"
    source = ["--source", f"hexide={liar.url}", "--read-ahead", "0"]
    try:
        with mounted(tmp_path / "mnt", cache, tmp_path / "browse.log", *source) as mount:
            os.listdir(mount.mountpoint / "100004")
        with mounted(tmp_path / "mnt", cache, tmp_path / "scan.log", *source) as mount:
            for name, data in osu_members(archives / "100004.osz").items():
                assert (mount.mountpoint / "100004" / name).read_bytes() == data
            assert "does not match its md5" in mount.log()
    finally:
        liar.stop()


def test_cold_grep_moves_a_small_fraction(server: Server, archives: Path, tmp_path: Path):
    with mounted_from(server, tmp_path) as mount:
        found = subprocess.run(
            ["grep", "-rl", "--include=*.osu", "Creator:", str(mount.mountpoint)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        stats = server.stats()
    expected = sum(len(osu_members(path)) for path in archives.glob("*.osz"))
    assert len([line for line in found if line]) == expected
    assert stats["bytes_sent"] < 0.05 * archive_bytes(archives)
    # Read-ahead fetches a set's neighbouring .osu members in one request: fewer requests
    # than a tail per set plus one per file (a reader racing it may still fetch a few alone).
    assert sum(stats["downloads"].values()) < expected + SETS


def prefetch(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "osufs", "prefetch", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_prefetch_fills_resumes_and_serves_offline(archives: Path, tmp_path: Path):
    server = Server(archives, tmp_path / "server.log")
    cache = tmp_path / "cache"
    common = ["--source", f"hexide={server.url}", "--cache-dir", str(cache)]
    try:
        first = prefetch("100001-100006", "--only", "osu", *common)
        assert "6 fetched, 0 already cached" in first
        moved = server.stats()["bytes_sent"]
        assert moved < 0.05 * sum(
            (archives / f"{n}.osz").stat().st_size for n in range(100001, 100007)
        )
        again = prefetch("100001-100006", "--only", "osu", *common)
        assert "0 fetched, 6 already cached" in again
        whole = prefetch("100005,100006", "--all", *common)
        assert "2 fetched" in whole
        assert "1 missing" in prefetch("999999", *common)
    finally:
        server.stop()
    with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", "--offline") as mount:
        for set_id in range(100001, 100007):
            for name, data in osu_members(archives / f"{set_id}.osz").items():
                assert (mount.mountpoint / str(set_id) / name).read_bytes() == data
        with zipfile.ZipFile(archives / "100006.osz") as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    assert (mount.mountpoint / "100006" / info.filename).read_bytes() == zf.read(
                        info
                    )


def repack(original: Path, target: Path, *, drop: str) -> None:
    """Another copy of a set, as a mirror might make it: other order, stored, one file less."""
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(target, "w") as copy:
        for info in reversed(source.infolist()):
            if info.filename != drop and not info.is_dir():
                copy.writestr(info, source.read(info), compress_type=zipfile.ZIP_STORED)


@pytest.mark.parametrize("ranges", [True, False], ids=["ranged", "whole"])
def test_another_mirrors_copy_serves_the_same_listing(archives: Path, tmp_path: Path, ranges: bool):
    cache = tmp_path / "cache"
    first = Server(archives, tmp_path / "first.log")
    try:
        with mounted(
            tmp_path / "mnt", cache, tmp_path / "list.log", "--source", f"hexide={first.url}"
        ) as mount:
            listed = sorted(os.listdir(mount.mountpoint / "100005"))
    finally:
        first.stop()
    other = tmp_path / "other"
    other.mkdir()
    repack(archives / "100005.osz", other / "100005.osz", drop="bg.jpg")
    second = Server(other, tmp_path / "second.log", *([] if ranges else ["--no-ranges"]))
    try:
        with mounted(
            tmp_path / "mnt", cache, tmp_path / "read.log", "--source", f"hexide={second.url}"
        ) as mount:
            folder = mount.mountpoint / "100005"
            assert sorted(os.listdir(folder)) == listed  # the listing does not move
            with zipfile.ZipFile(archives / "100005.osz") as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    if info.filename == "bg.jpg":
                        with pytest.raises(OSError) as caught:
                            (folder / "bg.jpg").read_bytes()
                        assert caught.value.errno == errno.EIO
                    else:
                        assert (folder / info.filename).read_bytes() == zf.read(info)
            assert "is another copy" in mount.log()
    finally:
        second.stop()
