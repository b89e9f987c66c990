"""The preflight at mount (issue 19): before `osufs mount` returns, every source is asked once;
what is wrong is one line per source on the terminal and in the log, and the mount comes up
anyway. Real CLI runs against loopback sources that are down, silent, answer HTML, refuse the
cookie or the OAuth client, ban, or rate-limit; none is provoked into a 429 or a 418."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from tests.fake_api import CLIENT_ID, CLIENT_SECRET, ApiState, api_app
from tests.fake_mino import MinoState, mino_app
from tests.helpers import ThreadedApp, free_port, mounted, osufs_command
from tests.test_api_sources import api_sets
from tests.test_api_sources import archives as archives  # the module's fixture, shared

CAPTIVE_PAGE = "<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>"


@contextmanager
def background_mount(tmp_path: Path, *options: str) -> Iterator[subprocess.CompletedProcess[str]]:
    """`osufs mount` as a user runs it (detached); what it printed; unmounted at the end."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir(exist_ok=True)
    command = osufs_command("mount", str(mountpoint), "--cache-dir", str(tmp_path / "cache"))
    result = subprocess.run(
        [*command, "--fetch-timeout", "20", *options], capture_output=True, text=True, timeout=90
    )
    try:
        yield result
    finally:
        if os.path.ismount(mountpoint):
            subprocess.run(osufs_command("umount", str(mountpoint)), capture_output=True)
        deadline = time.monotonic() + 15
        while os.path.ismount(mountpoint) and time.monotonic() < deadline:
            time.sleep(0.05)


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("mounted "), result.stdout
    return result.stderr.splitlines()


def mount_log() -> str:
    return (platformdirs.user_log_path("osufs") / "mount.log").read_text(errors="replace")


@pytest.fixture
def mino(archives: Path) -> Iterator[tuple[MinoState, str]]:
    state = MinoState(api_sets(archives))
    server = ThreadedApp(mino_app(state))
    try:
        yield state, server.url
    finally:
        server.stop()


@pytest.fixture
def api(archives: Path) -> Iterator[tuple[ApiState, str]]:
    state = ApiState(api_sets(archives))
    server = ThreadedApp(api_app(state))
    try:
        yield state, server.url
    finally:
        server.stop()


def test_sources_that_answer_well_say_nothing(mino: tuple[MinoState, str], tmp_path: Path):
    state, url = mino
    with background_mount(tmp_path, "--source", f"catboy={url}") as result:
        assert lines(result) == []
        assert os.listdir(tmp_path / "mnt")  # the set list came
    assert state.requests["ratelimits"] == 1  # the probe: one request, on the allowance
    assert state.too_many == 0 and state.teapots == 0


def test_sources_that_are_down_or_silent(tmp_path: Path):
    refused = free_port()  # nothing listens there
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections are taken in, never answered
        quiet = silent.getsockname()[1]
        options = ["--source", f"catboy=http://127.0.0.1:{refused}"]
        options += ["--source", f"hexide=http://127.0.0.1:{quiet}"]
        started = time.monotonic()
        with background_mount(tmp_path, *options) as result:
            took = time.monotonic() - started
            said = lines(result)
            assert os.listdir(tmp_path / "mnt") == []  # up, serving what it can: nothing yet
    assert len(said) == 2, said
    assert said[0].startswith(f"osufs: catboy 127.0.0.1:{refused}: unreachable: ")
    assert "check the URL and the network" in said[0]
    assert said[1].startswith(f"osufs: hexide 127.0.0.1:{quiet}: unreachable: ")
    assert "silent" in said[1]
    print(f"a mount over two dead sources came up in {took:.1f} s")
    # The same lines are in the log.
    assert f"preflight: catboy 127.0.0.1:{refused}: unreachable" in mount_log()


def test_an_html_page_where_json_belongs(tmp_path: Path):
    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(CAPTIVE_PAGE)

    portal = ThreadedApp(Starlette(routes=[Route("/{path:path}", page)]))
    try:
        with background_mount(tmp_path, "--source", f"catboy={portal.url}") as result:
            said = lines(result)
    finally:
        portal.stop()
    assert len(said) == 1, said
    assert "/api/ratelimits answered an HTML page where JSON belongs" in said[0]
    assert "check the URL" in said[0]


def test_a_refused_cookie_and_a_refused_client(api: tuple[ApiState, str], tmp_path: Path):
    state, url = api
    cookie = tmp_path / "cookie"
    cookie.write_text("osu_session=expired-long-ago")
    client = tmp_path / "client"
    client.write_text("client_id=1\nclient_secret=not-the-secret\n")
    for path in (cookie, client):
        path.chmod(0o600)
    options = ["--source", f"osu={url}", "--cookie-file", str(cookie)]
    options += ["--source", f"osuapi={url}", "--client-file", str(client)]
    with background_mount(tmp_path, *options) as result:
        said = lines(result)
    assert len(said) == 2, said
    assert "the site refused the session cookie (HTTP 401)" in said[0]
    assert "copy a fresh osu_session cookie" in said[0]
    assert "the client id and secret were refused" in said[1]
    assert "expired-long-ago" not in result.stderr + mount_log()  # the secret stays secret
    assert "not-the-secret" not in result.stderr + mount_log()
    assert state.quota_checks == 1 and state.refused_grants == 1  # asked once each


def test_a_banned_mirror_is_asked_once_and_then_left_alone(
    mino: tuple[MinoState, str], tmp_path: Path
):
    state, url = mino
    state.banned_until = time.time() + 3600  # someone on this address overdid it
    with background_mount(tmp_path, "--source", f"catboy={url}") as result:
        said = lines(result)
        os.listdir(tmp_path / "mnt")
        time.sleep(1)  # the catalogue's sync would have asked by now
    assert len(said) == 1, said
    assert "banned for now (HTTP 418); not asked again until" in said[0]
    assert sum(state.requests.values()) == 1  # the probe only


def test_a_mirror_whose_allowance_is_spent_is_not_asked_before_its_time(
    mino: tuple[MinoState, str], tmp_path: Path
):
    state, url = mino
    state.window_start, state.used = time.time(), state.per_minute  # another client spent it
    with background_mount(tmp_path, "--source", f"catboy={url}") as result:
        said = lines(result)
        os.listdir(tmp_path / "mnt")
        time.sleep(1)  # the catalogue's sync would have asked by now
    assert len(said) == 1, said
    assert "its allowance is spent (0 requests left this minute" in said[0]
    assert "not asked again until" in said[0]
    # The next process on this cache knows it from the index: it does not even probe.
    with background_mount(tmp_path, "--source", f"catboy={url}") as again:
        said = lines(again)
    assert len(said) == 1 and "its rate limit is spent" in said[0], said
    assert "rate limited until" in said[0]
    # Its headers said so before any 429: nothing more was asked, by either mount.
    assert state.too_many == 0 and state.teapots == 0
    assert sum(state.requests.values()) == 1


def test_an_api_that_answers_429_is_not_asked_before_its_retry_after(
    api: tuple[ApiState, str], tmp_path: Path
):
    state, url = api
    state.per_minute, state.window = 5, 60.0
    state.window_start, state.used = time.time(), 5  # another client of this token spent it
    client = tmp_path / "client"
    client.write_text(f"client_id={CLIENT_ID}\nclient_secret={CLIENT_SECRET}\n")
    client.chmod(0o600)
    options = ["--source", f"osuapi={url}", "--client-file", str(client)]
    with background_mount(tmp_path, *options) as result:
        said = lines(result)
        os.listdir(tmp_path / "mnt")
        time.sleep(1)
    assert len(said) == 1, said
    assert "rate limited until" in said[0]
    # The probe's 429 could not be foreseen; nothing was asked after it.
    assert state.limited_api == 1 and state.grants == 0 and state.api_requests == []


def test_the_foreground_prints_them_too(tmp_path: Path):
    dead = free_port()
    log = tmp_path / "mount.log"
    options = ("--source", f"catboy=http://127.0.0.1:{dead}", "--fetch-timeout", "20")
    with mounted(tmp_path / "mnt", tmp_path / "cache", log, *options):
        pass
    assert f"preflight: catboy 127.0.0.1:{dead}: unreachable" in log.read_text()
