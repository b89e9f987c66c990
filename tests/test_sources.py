"""Sources against real loopback servers: the site's protocol, pacing, limits, retries, checks."""

from __future__ import annotations

import email.utils
import errno
import io
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import click
import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from osufs.allowance import Allowance, Shape
from osufs.cli import read_cookie
from osufs.errors import OsufsError
from osufs.sources import (
    COOKIE_REFUSED,
    OSU_BURST,
    OSU_LIMIT_DEFAULT,
    OSU_PER_HOUR,
    OSU_SHAPE,
    RETRIES,
    RETRY_AFTER_CAP,
    HexideSource,
    OsuSiteSource,
    RemoteArchive,
    SourceLimited,
    SourceMissing,
    SourceSpec,
    TemplateSource,
    parse_retry_after,
)
from tests.fake_site import FakeSite
from tests.helpers import REAL_ARCHIVES, ThreadedApp

T = TypeVar("T")
COOKIE = "osu_session=unit-test-session-0123456789; XSRF-TOKEN=xyz"
ARCHIVES = {set_id: path for set_id, path in enumerate(REAL_ARCHIVES, start=1)}


@pytest.fixture
def site() -> Iterator[FakeSite]:
    # The file host shares the site's address here, so only osufs itself keeps the cookie
    # from it: a cookie jar matches hosts, not ports.
    with FakeSite(ARCHIVES, cookie=COOKIE, file_host="127.0.0.1") as running:
        yield running


def run(body: Callable[[httpx.AsyncClient], Awaitable[T]], timeout: float = 20.0) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
            with trio.fail_after(timeout):
                return await body(client)

    return trio.run(main)


def osu(client: httpx.AsyncClient, site: FakeSite, **options) -> OsuSiteSource:
    source = OsuSiteSource(client, site.url, options.pop("cookie", COOKIE), **options)
    source.retry_delay = 0.01
    return source


async def tail(source, set_id: int, length: int = 4096) -> tuple[RemoteArchive | None, bytes]:
    sink = io.BytesIO()
    remote = await source.open_archive(set_id, length, sink)
    return remote, sink.getvalue()


# pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pacing_keeps_every_hour_under_the_site_allowance():
    clock = FakeClock()
    allowance = Allowance("site", OSU_SHAPE, clock=clock)
    granted: list[float] = []
    for _ in range(4 * 3600):  # a scan that asks every second for four hours
        if allowance.take() == 0.0:
            granted.append(clock.now)
        clock.now += 1
    busiest = max(sum(1 for t in granted if start <= t < start + 3600) for start in granted)
    assert busiest <= OSU_BURST + OSU_PER_HOUR < 190
    assert len(granted) >= OSU_BURST + 3 * OSU_PER_HOUR


# the site's protocol


def test_download_follows_the_redirect_without_the_cookie(site: FakeSite):
    expected = ARCHIVES[1].read_bytes()

    async def body(client: httpx.AsyncClient) -> None:
        source = osu(client, site)
        remote, end = await tail(source, 1)
        assert remote is not None and remote.url.startswith(site.files_url)
        assert end == expected[-4096:]
        assert await remote.read(0, 100) == expected[:100]
        sink = io.BytesIO()
        await source.download_whole(1, remote.url, sink, remote.size)
        assert sink.getvalue() == expected
        # The site did set a cookie; the jar kept it and would have sent it to the host.
        assert client.cookies

    run(body)
    assert site.state.violations == []
    assert site.state.granted == {1: 1}, "ranged reads of the file host went to the site"
    assert site.state.file_requests[1] == 3


def test_without_a_referer_the_site_sends_its_page(site: FakeSite):
    class NoReferer(OsuSiteSource):
        def download_headers(self, set_id: int) -> dict[str, str]:
            return {}

    async def body(client: httpx.AsyncClient) -> None:
        with pytest.raises(OsufsError) as caught:
            await tail(NoReferer(client, site.url, COOKIE), 1)
        assert caught.value.errno == errno.EIO
        assert "HTML page (/beatmapsets/1)" in str(caught.value)

    run(body)
    assert site.state.granted == {}


def test_bad_cookie_is_eacces_reported_once_and_not_retried(site: FakeSite, caplog):
    caplog.set_level(logging.INFO)
    secret = "osu_session=not-the-right-one-4242"

    async def body(client: httpx.AsyncClient) -> list[OsufsError]:
        source = osu(client, site, cookie=secret)
        errors = []
        for set_id in (1, 2, 3):
            with pytest.raises(OsufsError) as caught:
                await tail(source, set_id)
            errors.append(caught.value)
        # 401s are not downloads: the allowance is as full as it was.
        assert source.allowance.free_at(OSU_BURST) <= time.time()
        return errors

    errors = run(body)
    assert [e.errno for e in errors] == [errno.EACCES] * 3
    assert site.state.refused == 1, "the refused cookie was offered again"
    assert caplog.text.count(COOKIE_REFUSED) == 1
    assert "not-the-right-one" not in caplog.text
    assert not any("not-the-right-one" in str(e) for e in errors)


def test_missing_set_is_source_missing_and_not_counted(site: FakeSite):
    async def body(client: httpx.AsyncClient) -> None:
        source = osu(client, site, shape=Shape(1, 3600, 1))
        with pytest.raises(SourceMissing):
            await tail(source, 999)
        remote, _ = await tail(source, 1)  # the 404 gave its token back
        assert remote is not None
        with pytest.raises(SourceLimited) as caught:
            await tail(source, 2)
        assert "pacing" in str(caught.value) and caught.value.until > time.time() + 3000

    run(body)
    assert site.state.site_requests == 2, "a paced request reached the site"


def test_429_sets_the_limit_from_retry_after(site: FakeSite):
    site.state.limit = 0

    async def body(client: httpx.AsyncClient) -> None:
        for header, expected in (("120", 120), (None, OSU_LIMIT_DEFAULT)):
            source = osu(client, site)
            site.state.retry_after = header
            before = time.time()
            with pytest.raises(SourceLimited) as caught:
                await tail(source, 1)
            assert before + expected - 1 <= caught.value.until <= time.time() + expected + 1
            assert caught.value.errno == errno.EIO
            # The site rests until then: nothing more is sent, however often it is asked.
            assert source.allowance.free_at() == pytest.approx(caught.value.until, abs=1)
            with pytest.raises(SourceLimited, match="answered 429"):
                await tail(source, 2)

    run(body)
    assert site.state.limited == 2


def test_parse_retry_after():
    now = 1_700_000_000.0
    assert parse_retry_after("30", 60, now) == now + 30
    assert parse_retry_after(None, 60, now) == now + 60
    assert parse_retry_after("soon", 60, now) == now + 60
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(date, 60, now) == now + 90
    assert parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), 60, now) == now
    assert parse_retry_after("99999999999", 60, now) == now + RETRY_AFTER_CAP


# retries and deadlines


def test_server_errors_are_retried_then_served(site: FakeSite):
    site.state.server_errors[3] = RETRIES

    async def body(client: httpx.AsyncClient) -> None:
        source = TemplateSource(client, site.mirror_template)
        source.retry_delay = 0.01
        remote, _ = await tail(source, 3)
        assert remote is not None

    run(body)
    assert len(site.state.mirror_requests) == RETRIES + 1


def test_server_errors_give_up_after_the_retries(site: FakeSite):
    site.state.server_errors[3] = RETRIES + 1

    async def body(client: httpx.AsyncClient) -> None:
        source = TemplateSource(client, site.mirror_template)
        source.retry_delay = 0.01
        with pytest.raises(OsufsError) as caught:
            await tail(source, 3)
        assert caught.value.errno == errno.EIO
        assert f"tried {RETRIES + 1} times" in str(caught.value)

    run(body)
    assert len(site.state.mirror_requests) == RETRIES + 1


def test_connection_errors_are_retried_within_the_deadline():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused

        async def body(client: httpx.AsyncClient) -> None:
            source = TemplateSource(client, f"http://127.0.0.1:{port}/d/{{id}}")
            source.retry_delay = 0.01
            with pytest.raises(OsufsError) as caught:
                await tail(source, 1)
            assert f"tried {RETRIES + 1} times" in str(caught.value)
            # A retry that would outlast the caller's deadline is not begun.
            source.retry_delay = 60.0
            with trio.move_on_after(5) as scope, pytest.raises(OsufsError) as caught:
                await tail(source, 1)
            assert not scope.cancelled_caught
            assert "no time left to retry" in str(caught.value)

        run(body)


# only good archives


@pytest.mark.parametrize("ranges", [True, False])
@pytest.mark.parametrize("mode", ["truncate", "html"])
def test_broken_bodies_are_refused(site: FakeSite, mode: str, ranges: bool):
    site.state.modes[2] = mode
    site.state.ranges = ranges

    async def body(client: httpx.AsyncClient) -> None:
        with pytest.raises(OsufsError) as caught:
            await tail(TemplateSource(client, site.mirror_template), 2)
        assert caught.value.errno == errno.EIO

    run(body)


def test_hexide_whole_downloads_are_checked_against_the_set_info(site: FakeSite):
    expected = ARCHIVES[3].read_bytes()

    async def body(client: httpx.AsyncClient) -> None:
        source = HexideSource(client, site.hexide_url)
        remote, data = await tail(source, 3)
        assert remote is None and data == expected
        site.state.wrong_hashes.add(3)
        source = HexideSource(client, site.hexide_url)
        with pytest.raises(OsufsError) as caught:
            await tail(source, 3)
        assert "hash_md5" in str(caught.value)
        # The set info hashes the full archive; the one without video cannot be checked by it.
        remote, data = await tail(HexideSource(client, site.hexide_url, no_video=True), 3)
        assert data == expected

    run(body)


# naming sources


def test_url_template_no_video_variants():
    client = httpx.AsyncClient()
    template = "https://m.example/{novideo:novideo|full}/{id}{novideo:?nv=1}"
    assert TemplateSource(client, template).download_url(7) == "https://m.example/full/7"
    assert (
        TemplateSource(client, template, no_video=True).download_url(7)
        == "https://m.example/novideo/7?nv=1"
    )
    assert SourceSpec.parse(f"url={template}").url == template
    with pytest.raises(ValueError, match="novideo:TEXT"):
        SourceSpec.parse("url=https://m.example/d/{id}{novideo}")
    with pytest.raises(ValueError, match="id"):
        SourceSpec.parse("url=https://m.example/d/")
    source = OsuSiteSource(client, "https://osu.example", None, no_video=True)
    assert source.download_url(7) == "https://osu.example/beatmapsets/7/download?noVideo=1"
    hexide = HexideSource(client, "https://h.example/", no_video=True)
    assert hexide.download_url(7) == "https://h.example/beatmaps/7/download/novid"


def test_cookie_file_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "cookie"
    path.write_text("Cookie: osu_session=abc\n")
    os.chmod(path, 0o644)
    with pytest.raises(click.UsageError, match="chmod 600"):
        read_cookie(path)
    os.chmod(path, 0o600)
    assert read_cookie(path) == "osu_session=abc"
    monkeypatch.setenv("OSUFS_COOKIE", " osu_session=env ")
    assert read_cookie(None) == "osu_session=env"
    monkeypatch.delenv("OSUFS_COOKIE")
    assert read_cookie(None) is None


def test_a_malformed_set_list_is_an_error_not_a_crash() -> None:
    answers = {
        "garbage": Response(b"<html>oops</html>", media_type="text/html"),
        "object": JSONResponse({"not": "a list"}),
        "mixed": JSONResponse(
            [{"ranked_id": 7, "title": "A - B"}, "junk", {"id": "x"}, {"ranked_id": 8}]
        ),
    }
    app = Starlette(routes=[Route("/{kind}/beatmaps/", lambda r: answers[r.path_params["kind"]])])
    server = ThreadedApp(app)

    async def catalogue(kind: str) -> list[int]:
        async with httpx.AsyncClient() as client:
            source = HexideSource(client, f"{server.url}/{kind}")
            return [entry.set_id for entry in await source.catalogue()]

    try:
        for kind in ("garbage", "object"):
            with pytest.raises(OsufsError):
                trio.run(catalogue, kind)
        assert trio.run(catalogue, "mixed") == [7]
    finally:
        server.stop()
