"""`osufs serve` for real on loopback: every endpoint, ranges, no-video archives, counters."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import time
import zipfile
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.applications import Starlette

from osufs import archive
from osufs.osufile import parse_osu
from osufs.samples import build_sample_library
from osufs.server import RangeNotSatisfiable, create_app, parse_range, serve, serve_app
from tests.helpers import REAL_ARCHIVES, Server
from tests.test_samples import read_set

SAMPLE_IDS = list(range(100001, 100007))
JAPANESE_REAL = 4  # japanese-filename.osz, in sorted order of the real archives
VIDEO_SET = 100001  # samples with with_video=True: every third set from the first
PLAIN_SET = 100002
LIST_KEYS = {"id", "ranked_id", "name", "title", "type", "size", "date"}
VERSION_KEYS = {
    "id", "map", "name", "size", "hash_md5", "hash_sha1", "m_title", "m_artist", "m_creator",
    "m_version", "m_source", "m_tags", "m_beatmap", "m_beatmapset", "d_drain", "d_size",
    "d_diff", "d_smult", "d_srate", "version", "path",
}  # fmt: skip

Check = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six samples (two with video) and the five real archives as 1.osz .. 5.osz."""
    root = tmp_path_factory.mktemp("served")
    assert build_sample_library(root, 6, audio_size=40_000, with_video=True) == SAMPLE_IDS
    assert len(REAL_ARCHIVES) == 5
    for set_id, path in enumerate(REAL_ARCHIVES, 1):
        shutil.copyfile(path, root / f"{set_id}.osz")
    return root


def run(target: Path | Starlette, check: Check, **options: Any) -> Starlette:
    """Serve `target` on loopback, run `check` with a client, stop; returns the app."""
    app = target if isinstance(target, Starlette) else create_app(target, **options)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_app, app)
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                await check(client)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return app


def osu_members(path: Path) -> dict[str, bytes]:
    """Listed .osu paths -> bytes, as the filesystem would show them."""
    return {p: d for p, d in read_set(path)[1].items() if p.lower().endswith(".osu")}


# Listing and set info


def test_list(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for url in ("/beatmaps/", "/beatmaps"):
            response = await client.get(url)
            assert response.status_code == 200
            items = response.json()
            assert [item["id"] for item in items] == [1, 2, 3, 4, 5, *SAMPLE_IDS]
            for item in items:
                assert set(item) == LIST_KEYS
                assert item["ranked_id"] == item["id"]
                assert item["type"] == "osz"
                assert item["size"] == (folder / f"{item['id']}.osz").stat().st_size
                assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", item["date"])
                assert item["name"] == f"{item['id']} {item['title']}"
            by_id = {item["id"]: item for item in items}
            assert by_id[1]["title"] == "Soleily - Renatus"
            assert by_id[JAPANESE_REAL]["title"] == "artist - title"
            assert by_id[100003]["title"] == "Yoasobi - Mihon no Uta"
            # The newest member time: the extended timestamp (UTC), not the local DOS time 17:18:02.
            assert by_id[1]["date"] == "2019-10-10 08:18:02"

    run(folder, check)


def test_set_info_sample(folder: Path) -> None:
    path = folder / f"{PLAIN_SET}.osz"
    expected = osu_members(path)

    async def check(client: httpx.AsyncClient) -> None:
        info = (await client.get(f"/beatmaps/{PLAIN_SET}")).json()
        assert set(info) == LIST_KEYS | {"hash_md5", "hash_sha1", "versions"}
        data = path.read_bytes()
        assert info["hash_md5"] == hashlib.md5(data).hexdigest()
        assert info["hash_sha1"] == hashlib.sha1(data).hexdigest()
        assert info["size"] == len(data)
        assert [v["path"] for v in info["versions"]] == sorted(expected, key=str.casefold)
        for index, version in enumerate(info["versions"]):
            assert set(version) == VERSION_KEYS
            raw = expected[version["path"]]
            meta = parse_osu(raw)
            assert version["name"] == version["path"].removesuffix(".osu")
            assert version["id"] == PLAIN_SET * 1000 + index
            assert meta.beatmap_id == version["m_beatmap"]
            assert version["map"] == PLAIN_SET == version["m_beatmapset"]
            assert version["size"] == len(raw)
            assert version["hash_md5"] == hashlib.md5(raw).hexdigest()
            assert version["hash_sha1"] == hashlib.sha1(raw).hexdigest()
            assert (version["m_title"], version["m_artist"]) == (meta.title, meta.artist)
            assert (version["m_creator"], version["m_version"]) == (meta.creator, meta.version)
            assert (version["m_source"], version["m_tags"]) == (meta.source, meta.tags)
            assert version["d_drain"] == meta.hp_drain_rate
            assert version["d_size"] == meta.circle_size
            assert version["d_diff"] == meta.overall_difficulty
            assert version["d_smult"] == meta.slider_multiplier
            assert version["d_srate"] == meta.slider_tick_rate
            assert version["version"] == 14

    run(folder, check)


def test_set_info_real(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        renatus = (await client.get("/beatmaps/1")).json()
        assert len(renatus["versions"]) == 12
        assert all(v["m_beatmap"] > 0 for v in renatus["versions"])
        # The quick copy's __MACOSX/._*.osu files are junk, not difficulties.
        quick = (await client.get("/beatmaps/2")).json()
        assert len(quick["versions"]) == 12
        assert not any("MACOSX" in v["path"] for v in quick["versions"])
        # Both copies carry the same BeatmapIDs; record ids still name one file each.
        assert {v["m_beatmap"] for v in quick["versions"]} & {
            v["m_beatmap"] for v in renatus["versions"]
        }
        assert not {v["id"] for v in quick["versions"]} & {v["id"] for v in renatus["versions"]}
        # Record ids are set id * 1000 + index, whatever the BeatmapID.
        ids = []
        for set_id in (3, 4, 5):
            versions = (await client.get(f"/beatmaps/{set_id}")).json()["versions"]
            assert [v["m_beatmap"] for v in versions] == [0] * len(versions)
            assert [v["id"] for v in versions] == [set_id * 1000 + i for i in range(len(versions))]
            ids += [v["id"] for v in versions]
        assert len(ids) == len(set(ids)) == 3
        ogg = (await client.get("/beatmaps/5")).json()["versions"][0]
        assert (ogg["name"], ogg["path"], ogg["version"]) == ("oggbeatmap", "oggbeatmap.osu", 13)
        assert ogg["m_source"] is None and ogg["m_tags"] is None

    run(folder, check)


def test_not_found(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for url in [
            "/beatmaps/999",
            "/beatmaps/999/content/raw/layout",
            "/beatmaps/999/download",
            "/beatmaps/999/download/novid",
            "/beatmaps/abc",
            "/metadata/424242",
            "/metadata/424242/raw",
            "/metadata/" + "0" * 31 + "1",
            "/metadata/" + "ab" * 20,
            "/metadata/not-a-key",
            "/no/such/endpoint",
        ]:
            response = await client.get(url)
            assert response.status_code == 404, url
            assert "error" in response.json(), url

    run(folder, check)


def test_layout(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        japanese = (await client.get(f"/beatmaps/{JAPANESE_REAL}/content/raw/layout")).json()
        assert japanese == {
            "directories": {},
            "files": ["artist - title (peppy) [difficulty].osu", "track.ogg", "見本.ogg"],
        }
        quick = (await client.get("/beatmaps/2/content/raw/layout")).json()
        assert quick["directories"] == {}
        assert "machinetop_background.jpg" in quick["files"]
        assert not any("MACOSX" in name for name in quick["files"])
        sample = (await client.get("/beatmaps/100003/content/raw/layout")).json()
        assert {"見本.ogg", "背景.jpg"} <= set(sample["files"])
        assert set(sample["directories"]) == {"sb"}
        assert sample["directories"]["sb"]["directories"] == {}
        assert all(name.endswith(".png") for name in sample["directories"]["sb"]["files"])
        # The same tree the filesystem builds.
        files = read_set(folder / "100003.osz")[1]
        flat = [*sample["files"], *(f"sb/{n}" for n in sample["directories"]["sb"]["files"])]
        assert sorted(flat) == sorted(files)

    run(folder, check)


# Downloads


def test_download_whole(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for set_id, suffix in [(1, ""), (PLAIN_SET, "/with-video.osz"), (VIDEO_SET, "/x/y")]:
            response = await client.get(f"/beatmaps/{set_id}/download{suffix}")
            assert response.status_code == 200
            assert response.content == (folder / f"{set_id}.osz").read_bytes()
            assert response.headers["content-length"] == str(len(response.content))
            assert response.headers["accept-ranges"] == "bytes"
            assert response.headers["content-type"] == "application/x-osu-beatmap-archive"
            assert "content-range" not in response.headers
        head = await client.head(f"/beatmaps/{PLAIN_SET}/download")
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["content-length"] == str((folder / f"{PLAIN_SET}.osz").stat().st_size)

    run(folder, check)


def test_ranges(folder: Path) -> None:
    data = (folder / "1.osz").read_bytes()
    size = len(data)
    small = (folder / f"{JAPANESE_REAL}.osz").read_bytes()

    async def get(client: httpx.AsyncClient, value: str, set_id: int = 1) -> httpx.Response:
        return await client.get(f"/beatmaps/{set_id}/download", headers={"Range": value})

    async def check(client: httpx.AsyncClient) -> None:
        cases = [
            ("bytes=0-99", 0, 99),
            ("bytes=100-199", 100, 199),
            ("bytes=1000-", 1000, size - 1),
            ("bytes=-500", size - 500, size - 1),
            (f"bytes=10-{size + 1000}", 10, size - 1),
            (f"bytes={size - 1}-{size - 1}", size - 1, size - 1),
            ("bytes= 5-9", 5, 9),
        ]
        for value, first, last in cases:
            response = await get(client, value)
            assert response.status_code == 206, value
            assert response.content == data[first : last + 1], value
            assert response.headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert response.headers["content-length"] == str(last - first + 1)
        # A suffix longer than the file is the whole file (the mount asks for its tail this way).
        tail = await get(client, f"bytes=-{archive.TAIL_BYTES}", JAPANESE_REAL)
        assert tail.status_code == 206
        assert tail.content == small
        assert tail.headers["content-range"] == f"bytes 0-{len(small) - 1}/{len(small)}"
        for value in [f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=-0"]:
            response = await get(client, value)
            assert response.status_code == 416, value
            assert response.headers["content-range"] == f"bytes */{size}"
            assert response.content == b""
        # Ranges we do not honour are ignored, per RFC 9110: the whole file, 200.
        for value in ["bytes=9-5", "items=0-9", "bytes=0-1,5-6", "bytes=a-b", "bytes=-"]:
            response = await get(client, value)
            assert response.status_code == 200, value
            assert response.content == data
        etag = (await get(client, "bytes=0-0")).headers["etag"]
        matched = await client.get(
            "/beatmaps/1/download", headers={"Range": "bytes=0-9", "If-Range": etag}
        )
        assert matched.status_code == 206
        stale = await client.get(
            "/beatmaps/1/download", headers={"Range": "bytes=0-9", "If-Range": '"other"'}
        )
        assert stale.status_code == 200 and stale.content == data

    run(folder, check)


def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=3-", 10) == (3, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=-30", 10) == (0, 9)
    assert parse_range("BYTES=2-4", 10) == (2, 4)
    assert parse_range("bytes=4-2", 10) is None
    assert parse_range("bytes=1-2,4-5", 10) is None
    for value, size in [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)]:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(value, size)


def _zip_contents(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {info.filename: zf.read(info) for info in zf.infolist()}


def test_novid(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        original = (folder / f"{VIDEO_SET}.osz").read_bytes()
        first = await client.get(f"/beatmaps/{VIDEO_SET}/download/novid")
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/x-osu-beatmap-archive"
        assert first.headers["accept-ranges"] == "bytes"
        novid = first.content
        assert len(novid) < len(original)
        again = await client.get(f"/beatmaps/{VIDEO_SET}/download/novid/no-video.osz")
        assert again.content == novid  # deterministic, built once
        full, without = _zip_contents(original), _zip_contents(novid)
        assert "video.mp4" in full
        assert without == {k: v for k, v in full.items() if k != "video.mp4"}
        # The osufs reader agrees, names and times included.
        with open(folder / f"{VIDEO_SET}.osz", "rb") as file:
            kept = archive.read_members(file, archive.Limits())
        mine = archive.read_members(io.BytesIO(novid), archive.Limits())
        assert [(m.raw_name, m.mtime_ns, m.crc32) for m in mine] == [
            (m.raw_name, m.mtime_ns, m.crc32) for m in kept if m.raw_name != b"video.mp4"
        ]
        ranged = await client.get(
            f"/beatmaps/{VIDEO_SET}/download/novid", headers={"Range": "bytes=-100"}
        )
        assert ranged.status_code == 206
        assert ranged.content == novid[-100:]
        # Without a video the no-video download is the archive itself.
        for set_id in (PLAIN_SET, 1, JAPANESE_REAL):
            response = await client.get(f"/beatmaps/{set_id}/download/novid")
            assert response.content == (folder / f"{set_id}.osz").read_bytes()

    run(folder, check)


def test_novid_of_real_video_archive(tmp_path: Path, folder: Path) -> None:
    """Data descriptors and extra fields survive: zipfile writes a video into a real archive."""
    target = tmp_path / "9.osz"
    shutil.copyfile(folder / "2.osz", target)
    with zipfile.ZipFile(target, "a") as zf:
        zf.writestr("movie.avi", b"RIFF" + bytes(5000))
        zf.writestr("sub/clip.MP4", b"\x00" * 300)
    expected = _zip_contents((folder / "2.osz").read_bytes())

    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get("/beatmaps/9/download/novid")
        assert _zip_contents(response.content) == expected

    run(tmp_path, check)


# Metadata


def test_metadata(folder: Path) -> None:
    raw = osu_members(folder / f"{PLAIN_SET}.osz")

    async def check(client: httpx.AsyncClient) -> None:
        info = (await client.get(f"/beatmaps/{PLAIN_SET}")).json()
        for version in info["versions"]:
            for key in [
                str(version["id"]),
                version["hash_md5"],
                version["hash_md5"].upper(),
                version["hash_sha1"],
            ]:
                response = await client.get(f"/metadata/{key}")
                assert response.status_code == 200, key
                assert response.json() == version
            text = await client.get(f"/metadata/{version['id']}/raw")
            assert text.status_code == 200
            assert text.headers["content-type"] == "text/plain; charset=utf-8"
            assert text.content == raw[version["path"]]
        # Synthetic ids resolve too, and the Japanese real set's .osu comes back verbatim.
        japanese = (await client.get(f"/metadata/{JAPANESE_REAL * 1000}")).json()
        assert japanese["map"] == JAPANESE_REAL
        body = (await client.get(f"/metadata/{JAPANESE_REAL * 1000}/raw")).content
        assert body == next(iter(osu_members(folder / f"{JAPANESE_REAL}.osz").values()))

    run(folder, check)


# Counters and shaping


def test_stats(folder: Path) -> None:
    bodies: list[int] = []

    async def check(client: httpx.AsyncClient) -> None:
        empty = (await client.get("/_stats")).json()
        assert empty == {
            "requests": 0,
            "downloads": {},
            "bytes_sent": 0,
            "in_flight": 0,
            "peak_in_flight": 0,
            "cut_short": 0,
        }
        for url, headers in [
            ("/beatmaps/", {}),
            ("/beatmaps/1/download", {}),
            ("/beatmaps/1/download", {"Range": "bytes=0-9"}),
            (f"/beatmaps/{VIDEO_SET}/download/novid/x.osz", {}),
            (f"/beatmaps/{PLAIN_SET}/download/a.osz", {"Range": "bytes=-5"}),
            ("/beatmaps/1/download", {"Range": "bytes=999999999-"}),
            ("/metadata/1000/raw", {}),
        ]:
            response = await client.get(url, headers=headers)
            bodies.append(len(response.content))
        stats = (await client.get("/_stats")).json()
        assert stats == {
            "requests": 7,
            "downloads": {"1": 3, str(VIDEO_SET): 1, str(PLAIN_SET): 1},
            "bytes_sent": sum(bodies),
            "in_flight": 0,
            "peak_in_flight": 1,  # one after the other
            "cut_short": 0,
        }

    app = run(folder, check)
    # In process, the same counters (the /_stats polls themselves are not counted).
    assert app.state.stats.requests == 7
    assert app.state.stats.downloads == {1: 3, VIDEO_SET: 1, PLAIN_SET: 1}
    assert app.state.stats.bytes_sent == sum(bodies)


def test_latency(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for url in ["/beatmaps/1", "/beatmaps/1/download"]:
            began = time.monotonic()
            response = await client.get(url)
            assert response.status_code == 200
            assert time.monotonic() - began >= 0.3

    run(folder, check, latency=0.3)


def test_ranges_disabled(folder: Path) -> None:
    data = (folder / "1.osz").read_bytes()

    async def check(client: httpx.AsyncClient) -> None:
        for value in ["bytes=0-9", "bytes=-10", f"bytes={len(data) + 1}-"]:
            response = await client.get("/beatmaps/1/download", headers={"Range": value})
            assert response.status_code == 200
            assert "accept-ranges" not in response.headers
            assert "content-range" not in response.headers
            assert response.content == data

    run(folder, check, ranges=False)


def test_bandwidth(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        began = time.monotonic()
        response = await client.get("/beatmaps/1/download", headers={"Range": "bytes=0-99999"})
        elapsed = time.monotonic() - began
        assert len(response.content) == 100_000
        assert elapsed >= 0.5  # 100 kB at 200 kB/s cannot arrive sooner

    run(folder, check, bandwidth=200_000)


def test_link_is_shared(folder: Path) -> None:
    """Two bodies at once share the link: together they take as long as both in a row."""

    async def check(client: httpx.AsyncClient) -> None:
        sizes: list[int] = []

        async def fetch() -> None:
            response = await client.get("/beatmaps/1/download", headers={"Range": "bytes=0-99999"})
            sizes.append(len(response.content))

        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            nursery.start_soon(fetch)
        elapsed = time.monotonic() - began
        assert sizes == [100_000, 100_000]
        assert elapsed >= 1.0  # 200 kB through a 200 kB/s link, however many answers

    run(folder, check, link=200_000)


def test_overlapping_requests_are_seen(folder: Path) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        async with trio.open_nursery() as nursery:
            for set_id in SAMPLE_IDS[:3]:
                nursery.start_soon(client.get, f"/beatmaps/{set_id}")
        stats = (await client.get("/_stats")).json()
        assert stats["peak_in_flight"] == 3 and stats["in_flight"] == 0

    run(folder, check, latency=0.3)


def test_cut_after_drops_the_connection_mid_body(folder: Path) -> None:
    data = (folder / "1.osz").read_bytes()

    async def check(client: httpx.AsyncClient) -> None:
        got = bytearray()
        with pytest.raises(httpx.HTTPError):
            async with client.stream("GET", "/beatmaps/1/download") as response:
                async for chunk in response.aiter_raw():
                    got += chunk
        assert bytes(got) == data[:1000]
        short = await client.get("/beatmaps/1/download", headers={"Range": "bytes=0-999"})
        assert short.content == data[:1000]  # a body no longer than the cut is whole
        stats = (await client.get("/_stats")).json()
        assert stats["cut_short"] == 1 and stats["bytes_sent"] == 2000

    run(folder, check, cut_after=1000)


def test_serve_with_options(folder: Path) -> None:
    """`serve` itself: binds loopback, reports its port, passes app options through."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(serve, folder, ranges=False))
            assert port > 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                response = await client.get("/beatmaps/5/download", headers={"Range": "bytes=0-0"})
                assert response.status_code == 200
                assert (await client.get("/_stats")).json()["downloads"] == {"5": 1}
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_changed_archive_is_reindexed(tmp_path: Path, folder: Path) -> None:
    target = tmp_path / "7.osz"
    shutil.copyfile(folder / "5.osz", target)

    async def check(client: httpx.AsyncClient) -> None:
        before = (await client.get("/beatmaps/7")).json()
        assert before["title"] == "osu-developers - BeatmapWithOgg"
        old_md5 = (await client.get("/metadata/7000")).json()["hash_md5"]
        shutil.copyfile(folder / f"{PLAIN_SET}.osz", target)
        after = (await client.get("/beatmaps/7")).json()
        assert after["hash_sha1"] == hashlib.sha1(target.read_bytes()).hexdigest()
        assert len(after["versions"]) == len(osu_members(target))
        assert (await client.get("/metadata/7000")).json()["hash_md5"] != old_md5
        target.unlink()
        assert (await client.get("/beatmaps/7")).status_code == 404
        assert (await client.get("/beatmaps/")).json() == []

    run(tmp_path, check)


def test_broken_archive(tmp_path: Path, folder: Path) -> None:
    (tmp_path / "8.osz").write_bytes(b"<html>not a zip</html>")
    shutil.copyfile(folder / "5.osz", tmp_path / "5.osz")

    async def check(client: httpx.AsyncClient) -> None:
        assert [item["id"] for item in (await client.get("/beatmaps/")).json()] == [5]
        for path in ("", "/download", "/download/novid", "/content/raw/layout"):
            response = await client.get(f"/beatmaps/8{path}")
            assert response.status_code == 422, path
            assert "set 8: unreadable archive" in response.json()["error"]
        assert (await client.get("/beatmaps/5/download")).status_code == 200

    run(tmp_path, check)


def test_serve_says_what_it_serves_and_what_it_skips(tmp_path: Path, folder: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(folder / "5.osz", served / "5.osz")
    shutil.copyfile(folder / "4.osz", served / "12.osz")
    (served / "1.osz").write_bytes(b"PK\x03\x04 but nothing after")
    shutil.copyfile(folder / "5.osz", served / "my set.osz")
    (served / "notes.txt").write_text("not an archive, and not named like one")
    server = Server(served, tmp_path / "serve.log")
    try:
        assert [item["id"] for item in httpx.get(f"{server.url}/beatmaps/").json()] == [5, 12]
        assert httpx.get(f"{server.url}/beatmaps/1/download").status_code == 422
    finally:
        server.stop()
    said = (tmp_path / "serve.log").read_text()
    assert "2 archives to serve from" in said and "2 files skipped" in said
    assert "skipping 1.osz: not a readable zip archive" in said
    assert "skipping my set.osz: not named <set id>.osz" in said
    assert "notes.txt" not in said
