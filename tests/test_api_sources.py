"""The osu! API source, single .osu files, the site's quota, named mirrors and their limits,
the catalogue file (issue 10): real mounts over the loopback fake of tests/fake_api.py."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import trio

from osufs.allowance import reset_time as _reset_time
from osufs.catalogue import read_catalogue_file
from osufs.cli import _Redact, read_client
from osufs.errors import OsufsError
from osufs.names import set_folder_name
from osufs.samples import build_sample_library
from osufs.sources import (
    COOKIE_REFUSED,
    MIRRORS,
    OSU_BURST,
    OSU_LIMIT_DEFAULT,
    MirrorSource,
    OsuApiSource,
    OsuSiteSource,
    SourceLimited,
    SourceSpec,
)
from osufs.sources.api import _beatmap_for
from tests.fake_api import (
    CLIENT_ID,
    CLIENT_SECRET,
    SESSION_COOKIE,
    ApiSet,
    ApiState,
    api_app,
    api_set,
)
from tests.helpers import REAL_ARCHIVES, ThreadedApp, mounted

# Sample sets 100001-100006 (100003 has Shift-JIS member names), and Renatus as set 1.
SAMPLES = range(100001, 100007)
LEGACY = 100003
ONLY_ON_MIRRORS = 100007  # a set the API does not know
NO_READ_AHEAD = ("--read-ahead", "0")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    build_sample_library(folder, count=7, audio_size=20_000)
    shutil.copy(REAL_ARCHIVES[0], folder / "1.osz")
    return folder


def api_sets(archives: Path) -> dict[int, ApiSet]:
    sets = {set_id: api_set(set_id, archives / f"{set_id}.osz") for set_id in [1, *SAMPLES]}
    sets[100005].status = "loved"
    sets[100006].status = "graveyard"
    return sets


@pytest.fixture
def api(archives: Path) -> Iterator[tuple[ApiState, str]]:
    state = ApiState(api_sets(archives))
    server = ThreadedApp(api_app(state, {ONLY_ON_MIRRORS: archives / f"{ONLY_ON_MIRRORS}.osz"}))
    try:
        yield state, server.url
    finally:
        server.stop()


@pytest.fixture
def client_file(tmp_path: Path) -> Path:
    path = tmp_path / "client"
    path.write_text(
        f"# my osu! OAuth application\nclient_id={CLIENT_ID}\nclient_secret={CLIENT_SECRET}\n"
    )
    path.chmod(0o600)
    return path


def folder(state: ApiState, set_id: int) -> str:
    found = state.sets[set_id]
    return set_folder_name(set_id, found.artist, found.title)


def osu_files(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {
            info.filename: zf.read(info)
            for info in zf.infolist()
            if info.filename.endswith(".osu") and "/" not in info.filename
        }


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll a condition the mount reaches in the background; fail with `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def errno_of(action: Callable[[], object]) -> int:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value.errno


def api_options(url: str, client_file: Path, *extra: str) -> list[str]:
    return ["--source", f"osuapi={url}", "--client-file", str(client_file), *extra]


# the catalogue


def test_the_root_lists_the_catalogue_from_the_api_alone(
    api: tuple[ApiState, str], client_file: Path, tmp_path: Path
):
    state, url = api
    state.page_size = 2
    state.search_limit = 2  # the first session is cut off after two pages, for 3 s
    state.search_rest = 3
    ranked = sorted(set_id for set_id, s in state.sets.items() if s.status == "ranked")
    cache = tmp_path / "cache"
    options = api_options(url, client_file, "--catalogue", "ranked", "--debug")
    with mounted(tmp_path / "mnt", cache, tmp_path / "first.log", *options) as mount:
        first = {folder(state, set_id) for set_id in ranked[:4]}
        wait_for(lambda: set(os.listdir(mount.mountpoint)) == first, "two pages listed")
        wait_for(lambda: "set list unavailable after 2 pages" in mount.log(), "the 429")
    assert [s.get("s") for s in state.searches] == ["ranked"] * 3
    assert "cursor_string" not in state.searches[0] and "cursor_string" in state.searches[1]
    assert state.grants == 1, "the token was not reused"
    assert not state.osu_requests and all("search" in path for path in state.api_requests)

    # The next mount goes on from the saved cursor, not from the start, and lists the rest:
    # ranked sets only (loved and graveyard are not asked for), once the 429's rest is over.
    state.search_limit = None
    asked = len(state.searches)
    with mounted(tmp_path / "mnt", cache, tmp_path / "second.log", *options) as mount:
        every = {folder(state, set_id) for set_id in ranked}
        wait_for(lambda: set(os.listdir(mount.mountpoint)) == every, "every ranked set listed")
        wait_for(lambda: "set list synced" in mount.log(), "the sync's end")
    assert state.searches[asked].get("cursor_string") == state.searches[asked - 1].get(
        "cursor_string"
    ), "the second mount did not resume where the first stopped"
    for log_text in (mount.log(), (tmp_path / "first.log").read_text()):
        assert CLIENT_SECRET not in log_text and "<client secret>" not in log_text


# .osu files by beatmap id


def browse_then_scan(
    api: tuple[ApiState, str], client_file: Path, archives: Path, tmp_path: Path, sets: list[int]
) -> tuple[list[str], str]:
    """A first session lists the sets (their listings come from the mirror's archive ends); a
    second reads every .osu. Returns the mirror requests of the second session and its log."""
    state, url = api
    options = [
        *api_options(url, client_file, "--catalogue", "none"),
        "--source",
        f"nerinyan={url}/nerinyan",
        *NO_READ_AHEAD,
    ]
    cache = tmp_path / "cache"
    with mounted(tmp_path / "mnt", cache, tmp_path / "browse.log", *options) as mount:
        for set_id in sets:
            os.listdir(mount.mountpoint / str(set_id))
    before = len(state.mirror("nerinyan").requests)
    with mounted(tmp_path / "mnt", cache, tmp_path / "scan.log", *options) as mount:
        for set_id in sets:
            for name, data in osu_files(archives / f"{set_id}.osz").items():
                assert (mount.mountpoint / str(set_id) / name).read_bytes() == data, name
    return state.mirror("nerinyan").requests[before:], mount.log()


def test_osu_files_come_from_the_site_without_the_archive(
    api: tuple[ApiState, str], archives: Path, client_file: Path, tmp_path: Path
):
    state, _url = api
    state.sets[100004].disabled = True
    sets = [1, *SAMPLES]
    archive_requests, _log = browse_then_scan(api, client_file, archives, tmp_path, sets)
    assert archive_requests == [], "a .osu file touched an archive"
    for set_id in sets:
        if set_id == LEGACY:
            continue  # its .osu files came by range with the listing, to choose a code page
        for beatmap in state.sets[set_id].beatmaps:
            assert state.osu_requests[beatmap.beatmap_id] == 1, (set_id, beatmap.version)
    assert state.violations == []
    # Set infos were fetched once a session, and one token served each session.
    assert state.grants == 2 and state.refused_tokens == 0
    browse_log = (tmp_path / "browse.log").read_text()
    assert "set 100004: osu! has disabled its download (DMCA takedown)" in browse_log


def test_a_wrong_md5_falls_back_to_the_archive(
    api: tuple[ApiState, str], archives: Path, client_file: Path, tmp_path: Path
):
    state, _url = api
    wrong = state.sets[100004].beatmaps[0]
    state.wrong_osu.add(wrong.beatmap_id)
    archive_requests, log_text = browse_then_scan(
        api, client_file, archives, tmp_path, [100002, 100004]
    )
    assert "does not match its md5" in log_text
    assert archive_requests and all("/d/100004" in path for path in archive_requests)
    assert state.osu_requests[wrong.beatmap_id] == 1


# the token


def test_the_token_is_reused_renewed_on_expiry_and_after_a_401(
    api: tuple[ApiState, str], client_file: Path, tmp_path: Path
):
    state, url = api
    state.token_lifetime = 2
    options = [
        *api_options(url, client_file, "--catalogue", "none"),
        "--source",
        f"nerinyan={url}/nerinyan",
        *NO_READ_AHEAD,
    ]
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        for set_id in (100001, 100002):
            assert os.readlink(mount.mountpoint / str(set_id)) == folder(state, set_id)
        assert state.grants == 1
        time.sleep(2.5)  # the token's life: it is renewed before it is used again
        assert os.readlink(mount.mountpoint / "100004") == folder(state, 100004)
        assert (state.grants, state.refused_tokens) == (2, 0)
        state.token_lifetime = 3600
        state.revoke_tokens()
        assert os.readlink(mount.mountpoint / "100005") == folder(state, 100005)
        assert (state.grants, state.refused_tokens) == (3, 1)
    assert CLIENT_SECRET not in mount.log()


def test_a_refused_client_is_said_once_and_names_come_from_archives(
    api: tuple[ApiState, str], tmp_path: Path
):
    state, url = api
    wrong = tmp_path / "client"
    wrong.write_text(f"client_id={CLIENT_ID}\nclient_secret=not-the-secret-0000\n")
    wrong.chmod(0o600)
    options = [
        *api_options(url, wrong, "--catalogue", "none"),
        "--source",
        f"nerinyan={url}/nerinyan",
        *NO_READ_AHEAD,
    ]
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        for set_id in (100001, 100002):
            assert os.readlink(mount.mountpoint / str(set_id)) == folder(state, set_id)
    assert state.refused_grants == 1, "refused credentials were sent again"
    assert mount.log().count("the osu! API refused the client id and secret") == 1
    assert "not-the-secret" not in mount.log()


# mirrors' limits


def test_the_mirror_headers_slow_osufs_before_any_429(
    api: tuple[ApiState, str], archives: Path, tmp_path: Path
):
    state, url = api
    state.mirror("catboy").limit = 3
    sets = [100001, 100002, 100004, 100005]  # no legacy names
    plain = f"url={url}/catboy/d/{{id}}"  # a plain mirror (catboy by name is Mino: test_mino.py)
    options = ["--source", plain, "--source", f"nerinyan={url}/nerinyan"]
    with mounted(
        tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options, *NO_READ_AHEAD
    ) as mount:
        for set_id in sets:
            os.listdir(mount.mountpoint / str(set_id))
        # Sets reached through catboy are read through nerinyan while catboy rests.
        for set_id in sets:
            for name, data in osu_files(archives / f"{set_id}.osz").items():
                assert (mount.mountpoint / str(set_id) / name).read_bytes() == data
    catboy, nerinyan = state.mirror("catboy"), state.mirror("nerinyan")
    assert catboy.too_many == 0, "osufs went on until the mirror said 429"
    # Naming a set costs its archive's end and one .osu: catboy's three requests were spent on
    # the first two sets; it was not asked again.
    assert catboy.requests == ["/catboy/d/100001"] * 2 + ["/catboy/d/100002"]
    assert {f"/nerinyan/d/{set_id}" for set_id in sets[2:]} <= set(nerinyan.requests)
    assert (
        mount.log().count("its rate limit is spent (x-ratelimit-remaining: 0); not asked again")
        == 1
    )


def test_a_418_sidelines_the_mirror_and_says_so_once(
    api: tuple[ApiState, str], archives: Path, tmp_path: Path
):
    state, url = api
    state.mirror("catboy").banned = True
    plain = f"url={url}/catboy/d/{{id}}{{novideo:n}}"  # catboy by name is Mino: test_mino.py
    options = ["--source", plain, "--source", f"nerinyan={url}/nerinyan"]
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        *options,
        "--no-video",
        *NO_READ_AHEAD,
    ) as mount:
        for set_id in (100001, 100002, 100004):
            for name, data in osu_files(archives / f"{set_id}.osz").items():
                assert (mount.mountpoint / str(set_id) / name).read_bytes() == data
    assert state.mirror("catboy").requests == ["/catboy/d/100001n"], "the banned mirror was asked"
    assert "/nerinyan/d/100002?noVideo=1" in state.mirror("nerinyan").requests
    log_text = mount.log()
    assert log_text.count("usually for asking too often; not asked again until") == 1
    assert "url 127.0.0.1" in log_text


def test_a_mirror_alone_and_resting_fails_fast_and_says_until_when(
    api: tuple[ApiState, str], tmp_path: Path
):
    state, url = api
    state.mirror("sayobot").limit = 1
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"sayobot={url}/sayobot",
        *NO_READ_AHEAD,
    ) as mount:
        os.listdir(mount.mountpoint / "100001")
        assert errno_of(lambda: os.listdir(mount.mountpoint / "100002")) == errno.EIO
    assert state.mirror("sayobot").requests == ["/sayobot/beatmaps/download/full/100001"]
    assert state.mirror("sayobot").too_many == 0
    assert "every source is rate limited; the first is free again at" in mount.log()


# the catalogue file


def test_the_catalogue_file_lists_exactly_its_sets(
    api: tuple[ApiState, str], client_file: Path, tmp_path: Path
):
    state, url = api
    listed = tmp_path / "sets.txt"
    listed.write_text(
        "# sets for the tournament\n"
        "100001\n"
        "100004   # the long one\n"
        f"https://osu.ppy.sh/beatmapsets/100005#osu/{state.sets[100005].beatmaps[0].beatmap_id}\n"
        "\n"
        f"{ONLY_ON_MIRRORS}\n"
    )
    options = [
        # The API's ranked list goes into the index too; the root still lists only the file.
        *api_options(url, client_file, "--catalogue", "ranked"),
        "--source",
        f"nerinyan={url}/nerinyan",
        "--catalogue-file",
        str(listed),
        *NO_READ_AHEAD,
    ]
    with mounted(tmp_path / "mnt", tmp_path / "cache", tmp_path / "mount.log", *options) as mount:
        named = {folder(state, set_id) for set_id in (100001, 100004, 100005)}
        wait_for(lambda: set(os.listdir(mount.mountpoint)) == named, "the file's sets named")
        wait_for(lambda: "set list synced" in mount.log(), "the ranked list synced")
        assert set(os.listdir(mount.mountpoint)) == named
        # No metadata names the last: a lookup by id reaches its archive, which names it.
        target = os.readlink(mount.mountpoint / str(ONLY_ON_MIRRORS))
        assert target.startswith(f"{ONLY_ON_MIRRORS} ")
        assert set(os.listdir(mount.mountpoint)) == named | {target}
    assert "1 wait for a lookup by id" in mount.log()
    assert state.mirror("nerinyan").requests[0] == f"/nerinyan/d/{ONLY_ON_MIRRORS}"


def test_catalogue_file_syntax(tmp_path: Path):
    path = tmp_path / "sets.txt"
    path.write_text("# comment\n 12 \n34 # x\nhttps://osu.ppy.sh/beatmapsets/56#osu/789\n12\n")
    assert read_catalogue_file(path) == [12, 34, 56]
    path.write_text("12\nabc\n")
    with pytest.raises(ValueError, match="line 2"):
        read_catalogue_file(path)


# units: names, pacing, headers, credentials


def test_named_mirrors_keep_their_url_shape_on_any_base():
    client = httpx.AsyncClient()
    expected = {
        "catboy": ("https://catboy.best/d/7", "https://catboy.best/d/7n"),
        "nerinyan": ("https://api.nerinyan.moe/d/7", "https://api.nerinyan.moe/d/7?noVideo=1"),
        "osudirect": ("https://osu.direct/api/d/7", "https://osu.direct/api/d/7?noVideo=1"),
        "sayobot": (
            "https://dl.sayobot.cn/beatmaps/download/full/7",
            "https://dl.sayobot.cn/beatmaps/download/novideo/7",
        ),
    }
    assert expected.keys() == MIRRORS.keys()
    for name, (full, novideo) in expected.items():
        spec = SourceSpec.parse(name)
        assert [
            MirrorSource(client, spec.url, name=name, no_video=nv).download_url(7)
            for nv in (False, True)
        ] == [full, novideo]
    regional = SourceSpec.parse("catboy=https://us.catboy.best/")
    assert MirrorSource(client, regional.url, name="catboy").download_url(7) == (
        "https://us.catboy.best/d/7"
    )
    assert SourceSpec.parse("osuapi").url == "https://osu.ppy.sh"
    with pytest.raises(ValueError, match="catboy"):
        SourceSpec.parse("catbox")


def test_a_spent_budget_rests_the_mirror_but_not_the_redirect_it_sent(
    api: tuple[ApiState, str],
):
    state, url = api
    catboy = state.mirror("catboy")
    catboy.limit, catboy.redirect = 1, True

    async def body(client: httpx.AsyncClient) -> None:
        source = MirrorSource(client, f"{url}/catboy", name="catboy")
        remote = await tail(source, 100001)  # the 302 said "0 left"; its target still came
        assert remote is not None and remote.url.endswith("/catboy/files/100001.osz")
        with pytest.raises(SourceLimited, match="rate limit is spent") as caught:
            await tail(source, 100002)
        assert caught.value.until > time.time() + 3000  # the window's reset
        assert source.limited_until == caught.value.until

    run_site(body)
    assert catboy.requests == ["/catboy/d/100001", "/catboy/files/100001.osz"]
    assert catboy.too_many == 0


def test_rate_limit_reset_header():
    now = 1_700_000_000.0
    assert _reset_time("30", 60, now) == now + 30
    assert _reset_time("2.5", 60, now) == now + 2.5
    assert _reset_time(str(int(now) + 90), 60, now) == now + 90  # a unix time
    assert _reset_time(None, 60, now) == now + 60
    assert _reset_time("soon", 60, now) == now + 60


def test_difficulty_names_map_to_beatmaps():
    info = {
        "artist": "Soleily",
        "title": "Renatus",
        "creator": "Gamu",
        "beatmaps": [
            {"id": 1, "version": "Insane"},
            {"id": 2, "version": "Hard"},
            {"id": 3, "version": "Insane Hard"},
            {"id": "x", "version": "Broken"},
        ],
    }
    assert _beatmap_for(info, "soleily - renatus (gamu) [insane].osu")["id"] == 1
    # The creator renamed since: the version alone picks it, when it is unique.
    assert _beatmap_for(info, "Soleily - Renatus (OldName) [Hard].osu")["id"] == 2
    assert _beatmap_for(info, "Soleily - Renatus (Gamu) [Normal].osu") is None
    assert _beatmap_for(info, "Soleily - Renatus (Gamu) [Broken].osu") is None


def test_client_credentials_come_from_a_private_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "client"
    path.write_text("client_id = 42\nclient_secret='s3cret'\n")
    path.chmod(0o644)
    with pytest.raises(click.UsageError, match="chmod 600"):
        read_client(path)
    path.chmod(0o600)
    assert read_client(path) == ("42", "s3cret")
    path.write_text("client_id=42\n")
    with pytest.raises(click.UsageError, match="client_secret"):
        read_client(path)
    monkeypatch.setenv("OSUFS_CLIENT_ID", "7")
    monkeypatch.setenv("OSUFS_CLIENT_SECRET", "env-secret")
    assert read_client(None) == ("7", "env-secret")
    monkeypatch.delenv("OSUFS_CLIENT_SECRET")
    assert read_client(None) is None
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", ("env-secret",), None)
    _Redact("env-secret", "<client secret>").filter(record)
    assert record.getMessage() == "token <client secret>"


# the official site's quota and 429


def run_site(body: Callable[[httpx.AsyncClient], object]) -> object:
    async def main() -> object:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5.0)) as client:
            with trio.fail_after(20):
                return await body(client)

    return trio.run(main)


async def tail(source: OsuSiteSource | MirrorSource, set_id: int) -> Any:
    return await source.open_archive(set_id, 4096, io.BytesIO())


def test_the_site_quota_check_makes_the_pacer_agree(api: tuple[ApiState, str]):
    state, url = api
    state.quota_used = OSU_BURST - 5  # the user's browser downloaded as well

    async def body(client: httpx.AsyncClient) -> None:
        source = OsuSiteSource(client, url, SESSION_COOKIE)
        assert await tail(source, 100001) is not None
        assert state.quota_checks == 1
        assert source.allowance.free_at(4) <= time.time() < source.allowance.free_at(5)
        for set_id in (100002, 100004, 100005):  # checked again only after 10 downloads
            await tail(source, set_id)
        assert state.quota_checks == 1
        # Another session: the site counts more than a burst; nothing reaches the download.
        state.quota_used = 200
        fresh = OsuSiteSource(client, url, SESSION_COOKIE)
        with pytest.raises(SourceLimited, match="pacing"):
            await tail(fresh, 100006)

    run_site(body)
    assert sum(state.downloads.values()) == 4 and 100006 not in state.downloads


def test_slow_down_play_more_limits_the_site(api: tuple[ApiState, str], caplog):
    state, url = api
    state.download_limit = 0
    caplog.set_level(logging.INFO)

    async def body(client: httpx.AsyncClient) -> None:
        source = OsuSiteSource(client, url, SESSION_COOKIE)
        before = time.time()
        with pytest.raises(SourceLimited) as caught:
            await tail(source, 100001)
        assert (
            before + OSU_LIMIT_DEFAULT - 1 <= caught.value.until <= time.time() + OSU_LIMIT_DEFAULT
        )
        assert source.allowance.free_at() > time.time(), "the allowance did not agree with the 429"
        # A refused cookie is found by the quota check, before any download.
        refused = OsuSiteSource(client, url, "osu_session=stale")
        for set_id in (100002, 100004):
            with pytest.raises(OsufsError) as caught:
                await tail(refused, set_id)
            assert caught.value.errno == errno.EACCES

    run_site(body)
    assert state.limited == 1 and state.quota_checks == 2
    assert caplog.text.count(COOKIE_REFUSED) == 1


def test_the_api_source_serves_no_archives(api: tuple[ApiState, str]):
    state, url = api

    async def body(client: httpx.AsyncClient) -> None:
        source = OsuApiSource(client, url, (CLIENT_ID, CLIENT_SECRET), catalogue=None)
        assert not source.serves_archives
        with pytest.raises(OsufsError):
            await source.open_archive(100001, 4096, io.BytesIO())
        assert await source.folder_name(100001) == folder(state, 100001)
        assert "Authorization" not in source.secret_headers_for(f"{url}/osu/1")
        assert "Authorization" in source.secret_headers_for(f"{url}/api/v2/beatmapsets/1")
        assert source.secret_headers_for("http://elsewhere.example/api/v2/x") == {}

    run_site(body)
