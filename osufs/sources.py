"""Where bytes come from: Hexide mirrors, the official site, the osu! API, download mirrors.

Every HTTP answer is judged in one place (`_judge`), so a status means the same thing for every
source. Redirects are followed by hand: a secret header (the site's cookie, the API's token) goes
only to the origin it belongs to, never to the host a redirect points at. Rate-limit headers
(`x-ratelimit-remaining`, `x-ratelimit-reset`) are read from every answer, so a source that says
its budget is spent is rested before it has to answer 429. docs/sources.md describes every kind.
"""

from __future__ import annotations

import calendar
import email.utils
import errno
import hashlib
import json
import logging
import math
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

import httpx
import trio

from osufs.errors import OsufsError
from osufs.names import clean_filename, set_folder_name
from osufs.osufile import difficulty_filename

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Within a read's deadline, a request that sees no byte for half the time left, and at most
# STALL_TIMEOUT, is abandoned so the next source still has time; never less than MIN_STALL
# (a short deadline is then the only bound). Connecting gets at most CONNECT_TIMEOUT.
STALL_TIMEOUT = 30.0
MIN_STALL = 1.0
CONNECT_TIMEOUT = 10.0
# Connection errors and 5xx answers are retried this many times, after 0.5, 1 and 2 s (each
# times a jitter of 0.5 to 1.5); a retry that would outlast the read's deadline is not started.
RETRIES = 3
RETRY_BASE_DELAY = 0.5
CHUNK = 1 << 16
# Without a Retry-After, a rate-limited source is left alone this long; a Retry-After further
# out than RETRY_AFTER_CAP is read as the cap (a typo on the server should not shelve it for
# a year).
LIMIT_DEFAULT = 60.0
RETRY_AFTER_CAP = 86400.0
# The official site counts every download it grants against an hourly allowance (osu-web
# BeatmapsetsController::download: the account's downloads in the last hour, 429 past it). The
# production allowance is not published; seed 000 met the 429 after about 190 downloads and
# waited about 30 minutes, which fits a sliding hour. A bucket of OSU_BURST downloads that
# refills at OSU_PER_HOUR lets at most OSU_BURST + OSU_PER_HOUR = 180 through in any hour: a
# browsing burst is never slowed, a long scan settles at one download every 30 s, and the
# user's own browser keeps some room.
OSU_BURST = 60
OSU_PER_HOUR = 120
# The site's 429 carries no Retry-After; a slot frees when the oldest download of the hour
# ages out, so look again after this long rather than every minute.
OSU_LIMIT_DEFAULT = 600.0
# After a 401 the site is not asked again for this long: the cookie cannot change under a
# running mount, and a scan should not send hundreds of refused requests.
OSU_REFUSED_PAUSE = 600.0
# Archive requests ask for the bytes as stored: a compressed transfer would break ranges and
# the length checks, and a zip does not compress anyway.
ARCHIVE_HEADERS = {"Accept-Encoding": "identity"}
COOKIE_REFUSED = "the osu! session cookie was refused; copy a fresh one from the browser"
COOKIE_MISSING = (
    "the osu! site needs your session cookie: put it in a file only you can read and pass "
    "--cookie-file, or set OSUFS_COOKIE"
)
SET_INFO_CACHE = 256
# Caps on metadata bodies: a set list of a million sets is about 150 MB.
MAX_CATALOGUE_JSON = 256 << 20
MAX_SET_INFO_JSON = 4 << 20
MAX_OSU_SIZE = 4 << 20
MAX_SEARCH_JSON = 16 << 20
MAX_SMALL_JSON = 64 << 10
# The site's own count of downloads in the last hour (`/home/download-quota-check`) is read
# before the first download of a session, then after every QUOTA_CHECK_EVERY downloads or
# QUOTA_CHECK_INTERVAL seconds, whichever comes first; a check never holds a download up for
# more than QUOTA_CHECK_TIMEOUT.
QUOTA_CHECK_EVERY = 10
QUOTA_CHECK_INTERVAL = 600.0
QUOTA_CHECK_TIMEOUT = 5.0
# A mirror that answers 418 has banned this address. Mino (catboy.best) does so past its limit
# and does not say for how long; an hour leaves it alone long enough not to prolong the ban,
# while the other sources carry on. A longer Retry-After wins.
MIRROR_BAN_PAUSE = 3600.0
# The osu! API: its documentation asks for at most 60 requests a minute. A bucket of API_BURST
# that refills at API_PER_MINUTE never lets more than 60 through in any minute. Background
# work (the catalogue, naming listed sets) takes a token only while CATALOGUE_RESERVE stay in
# the bucket, so a reader waiting on the API is always served first. A reader waits at most
# API_WAIT for a token; past that the request fails over to the next source.
API_BURST = 10
API_PER_MINUTE = 50
CATALOGUE_RESERVE = 5
API_WAIT = 10.0
# Single .osu files (`/osu/<beatmap id>`) are a page of the site, not of the API, and their
# limit is not published; they get a bucket of their own of the same shape: 60 in any minute.
FILES_BURST = 10
FILES_PER_MINUTE = 50
# A token is renewed this long before the site says it expires (at most a tenth of its life).
TOKEN_MARGIN = 60.0
# The API's search answers 50 sets a page; one sync reads at most this many pages (about
# 100,000 sets, some 40 minutes at the background rate) and the next refresh goes on from its
# cursor.
CATALOGUE_MAX_PAGES = 2000
# --catalogue: the API's `s=` status filter (osu-web BeatmapsetSearchRequestParams) and a sort
# under which sets that appear later come last, so a saved cursor finds them on the next sync.
CATALOGUES: dict[str, tuple[str, str]] = {
    "ranked": ("ranked", "ranked_asc"),  # ranked and approved
    "loved": ("loved", "ranked_asc"),
    "all": ("any", "updated_asc"),  # every status, graveyard included
}
OSU_SITE = "https://osu.ppy.sh"
# Mirrors by name: their default base and the path after it, in the `url=` template syntax
# ({id}; {novideo:TEXT|ELSE}). `--source NAME` uses the default base; `--source NAME=URL` keeps
# the path on another base (a regional host, a test server).
MIRRORS: dict[str, tuple[str, str]] = {
    "catboy": ("https://catboy.best", "/d/{id}{novideo:n}"),
    "nerinyan": ("https://api.nerinyan.moe", "/d/{id}{novideo:?noVideo=1}"),
    "osudirect": ("https://osu.direct", "/api/d/{id}{novideo:?noVideo=1}"),
    "sayobot": ("https://dl.sayobot.cn", "/beatmaps/download/{novideo:novideo|full}/{id}"),
}
# Kinds that need no URL: `--source catboy` is `--source catboy=https://catboy.best`.
DEFAULT_URLS: dict[str, str] = {
    "osu": OSU_SITE,
    "osuapi": OSU_SITE,
    **{name: base for name, (base, _path) in MIRRORS.items()},
}
CLIENT_MISSING = (
    "the osu! API needs an OAuth client (create one under Settings > OAuth on the site): put "
    "client_id=... and client_secret=... in a file only you can read and pass --client-file, "
    "or set OSUFS_CLIENT_ID and OSUFS_CLIENT_SECRET"
)
CLIENT_REFUSED = "the osu! API refused the client id and secret; check the --client-file"


class SourceMissing(OsufsError):
    """This source does not have the set (404); another source may."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOENT, message)


class SourceLimited(OsufsError):
    """This source refuses requests until `until` (unix time)."""

    def __init__(self, message: str, until: float) -> None:
        # EIO, not EAGAIN: readers of regular files do not expect EAGAIN and some spin on it.
        super().__init__(errno.EIO, message)
        self.until = until


class Pacer:
    """A token bucket: `burst` requests at once, then `per_hour` an hour.

    Times come from `clock` (monotonic seconds), so tests can drive it."""

    def __init__(
        self, burst: int, per_hour: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.interval = 3600.0 / per_hour
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) / self.interval)
        self._stamp = now

    def take(self, reserve: float = 0.0) -> float:
        """Take a token: 0.0 when one was free, else the seconds until one will be.

        With `reserve`, a token is taken only while that many more stay in the bucket:
        background work leaves them to readers, who then always go first."""
        self._refill()
        need = 1.0 + min(reserve, self.burst - 1.0)
        if self._tokens >= need:
            self._tokens -= 1.0
            return 0.0
        return (need - self._tokens) * self.interval

    def give_back(self) -> None:
        """Return a token for a request the server did not count."""
        self._refill()
        self._tokens = min(float(self.burst), self._tokens + 1.0)

    def drain(self) -> None:
        """The server says the allowance is spent, whatever the bucket thought."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)

    def agree(self, used: int) -> bool:
        """The server counts `used` requests in its window: keep no more than `burst - used`
        tokens, and at worst owe one burst (a wait of at most `burst` intervals). Never adds
        tokens. True when the bucket had to give some up."""
        self._refill()
        target = float(max(self.burst - used, -self.burst))
        if target < self._tokens:
            self._tokens = target
            return True
        return False


class _ArchiveDigest:
    """Size and hashes of a whole archive as it is written."""

    def __init__(self) -> None:
        self.size = 0
        self.md5 = hashlib.md5()
        self.sha1 = hashlib.sha1()

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.md5.update(chunk)
        self.sha1.update(chunk)


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    set_id: int
    folder: str
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class RemoteArchive:
    """An archive a source serves by byte ranges."""

    source: Source
    set_id: int
    url: str
    size: int

    async def read(self, start: int, length: int) -> bytes:
        end = min(start + length, self.size) - 1
        if end < start:
            return b""
        headers = {"Range": f"bytes={start}-{end}", **ARCHIVE_HEADERS}
        async with self.source.stream("GET", self.url, headers=headers) as response:
            if response.status_code != 206:
                raise OsufsError.io(f"{self.source.label}: set {self.set_id}: range not honoured")
            data = await _read_body(response, end - start + 1)
        if len(data) != end - start + 1:
            raise OsufsError.io(f"{self.source.label}: set {self.set_id}: short range body")
        return data


class Source:
    """A place that serves beatmap archives; subclasses know its URLs."""

    kind = "url"
    # Seconds a 429 without Retry-After keeps this source aside.
    limit_default = LIMIT_DEFAULT
    # Whether every set reached spends a scarce allowance (then nothing is fetched speculatively).
    metered = False
    # Whether it serves archives at all (the osu! API serves only metadata and .osu files).
    serves_archives = True
    # Whether its set list comes in pages over time (then the library syncs it in the
    # background and keeps a cursor), rather than in one answer.
    catalogue_paged = False

    def __init__(self, client: httpx.AsyncClient, base: str, *, no_video: bool = False) -> None:
        self.client = client
        self.base = base
        self.no_video = no_video
        self.limited_until = 0.0
        # Until then nothing is sent to the source's own origin: its headers said its budget was
        # spent, or it banned us (418). Unlike a 429, this is known before anything is refused.
        self.blocked_until = 0.0
        self._blocked_why = ""
        self.retries = RETRIES
        self.retry_delay = RETRY_BASE_DELAY
        self.bytes_received = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"

    @property
    def label(self) -> str:
        return f"{self.kind} {urlsplit(self.base).netloc or self.base}"

    def download_url(self, set_id: int) -> str:
        raise NotImplementedError

    def secret_headers(self) -> dict[str, str]:
        """Headers for the source's own origin only."""
        return {}

    def secret_headers_for(self, url: str) -> dict[str, str]:
        """The secret headers a request to `url` may carry: none off the source's origin."""
        return self.secret_headers() if _origin(url) == _origin(self.base) else {}

    def download_headers(self, set_id: int) -> dict[str, str]:
        return {}

    def refusal(self, response: httpx.Response) -> OsufsError:
        """The error for a 401."""
        return OsufsError(errno.EACCES, f"{self.label}: authorization refused (HTTP 401)")

    async def check_whole(self, set_id: int, digest: _ArchiveDigest) -> None:
        """Refuse a whole downloaded archive that is not the one the source describes."""

    async def catalogue(self) -> list[CatalogueEntry]:
        """The sets this source lists; empty when it has no list."""
        return []

    @property
    def catalogue_key(self) -> str | None:
        """What a saved catalogue cursor belongs to; None when the list is not paged."""
        return None

    async def catalogue_pages(
        self, resume: str | None
    ) -> AsyncIterator[tuple[list[CatalogueEntry], str | None, bool]]:
        """The set list as (entries, cursor to resume after them, whether that was the end).

        One page holding the whole list, unless the source pages it (`catalogue_paged`)."""
        yield await self.catalogue(), None, True

    async def folder_name(self, set_id: int) -> str | None:
        """The set's folder name from the source's metadata, if it has any."""
        return None

    async def catalogue_entry(self, set_id: int) -> CatalogueEntry | None:
        """A set's name and time from the source's metadata, for listing it without its
        archive; None when the source has no metadata. May wait: it is background work."""
        return None

    def archive_warning(self, set_id: int) -> str | None:
        """What the source already knows against the set's archive (no request is made)."""
        return None

    async def json(self, url: str, limit: int, headers: dict[str, str] | None = None) -> Any:
        """A JSON document of at most `limit` bytes; anything else is the source's fault."""
        async with self.stream("GET", url, headers=headers) as response:
            body = await _read_body(response, limit)
        try:
            return json.loads(body)
        except ValueError:
            raise OsufsError.io(f"{self.label}: {url} did not answer JSON") from None

    async def difficulty_bytes(self, set_id: int, path: str) -> bytes | None:
        """A .osu file's bytes without its archive (the metadata tier), if the source has it."""
        return None

    @asynccontextmanager
    async def stream(
        self, method: str, url: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """Send a request and yield its judged, streaming response; errors become OsufsError."""
        response = await self._open(method, url, headers or {})
        try:
            yield response
        except httpx.HTTPError as error:
            raise OsufsError.io(f"{self.label}: {_describe(error)}") from None
        finally:
            self.bytes_received += response.num_bytes_downloaded
            await response.aclose()

    async def _open(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        """Follow redirects by hand and judge the answer.

        Connection errors and 5xx answers are retried with backoff and jitter, at the hop that
        failed: a file host's hiccup must not cost another download from the site."""
        attempt = 0
        redirects = 0
        redirected = False
        while True:
            if not redirected:
                # A rest begun by this very answer does not cut off the redirect it sent.
                self._check_blocked(url)
            redirected = False
            try:
                response = await self._send(method, url, headers)
            except httpx.TimeoutException as error:
                # A server that stays silent would stay silent again: the next source may not.
                raise OsufsError.io(
                    f"{self.label}: the server went silent ({type(error).__name__})"
                ) from None
            except httpx.TransportError as error:
                await self._backoff(attempt, error)
                attempt += 1
                continue
            self._note_rate_headers(response)
            if response.is_redirect and "location" in response.headers:
                await response.aclose()
                redirects += 1
                if redirects > MAX_REDIRECTS:
                    raise OsufsError.io(f"{self.label}: too many redirects")
                url = urljoin(url, response.headers["location"])
                redirected = True
                continue
            try:
                _judge(self, response)
            except _ServerError as error:
                await response.aclose()
                await self._backoff(attempt, error)
                attempt += 1
                continue
            except BaseException:
                await response.aclose()
                raise
            return response

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        sent = dict(headers)
        sent.update(self.secret_headers_for(url))
        request = self.client.build_request(method, url, headers=sent, timeout=_hop_timeout())
        if not any(name.lower() == "cookie" for name in sent):
            # The client's jar keeps whatever Set-Cookie any server sent and would hand it to
            # any host it matches (a cookie for .ppy.sh reaches every file host there). The only
            # cookie osufs sends is the one it adds itself, to its own origin.
            request.headers.pop("cookie", None)
        return await self.client.send(request, stream=True)

    def _check_blocked(self, url: str) -> None:
        """Refuse, without sending, a request to the source's origin while it is rested."""
        if self.blocked_until > time.time() and _origin(url) == _origin(self.base):
            raise SourceLimited(
                f"{self.label}: {self._blocked_why}; not asked until {_clock(self.blocked_until)}",
                self.blocked_until,
            )

    def rest(self, until: float, why: str, *, warn: bool = False) -> None:
        """Send nothing to the source until `until`; said in the log once per rest."""
        if until <= self.blocked_until:
            return
        fresh = self.blocked_until <= time.time()
        self.blocked_until = until
        self._blocked_why = why
        self.limited_until = max(self.limited_until, until)
        if fresh:
            log.log(
                logging.WARNING if warn else logging.INFO,
                "%s: %s; not asked again until %s",
                self.label,
                why,
                _clock(until),
            )

    def _note_rate_headers(self, response: httpx.Response) -> None:
        """A source whose headers say no request is left is rested until their reset."""
        if _origin(str(response.url)) != _origin(self.base):
            return  # a file host's budget is not the source's
        remaining = response.headers.get("x-ratelimit-remaining", "").strip()
        try:
            left = float(remaining)
        except ValueError:
            return
        if left >= 1:
            return
        until = _reset_time(response.headers.get("x-ratelimit-reset"), self.limit_default)
        self.rest(until, "its rate limit is spent (x-ratelimit-remaining: 0)")

    def banned(self, response: httpx.Response) -> SourceLimited:
        """The error for a 418: the mirror has banned this address for now; leave it alone."""
        now = time.time()
        until = max(
            parse_retry_after(response.headers.get("retry-after"), MIRROR_BAN_PAUSE, now),
            now + MIRROR_BAN_PAUSE,
        )
        self.rest(
            until,
            "answered 418: it has banned this address for now, usually for asking too often",
            warn=True,
        )
        return SourceLimited(f"{self.label}: banned for now (HTTP 418)", until)

    async def _backoff(self, attempt: int, error: Exception) -> None:
        """Sleep before retry `attempt + 1`, or raise when none is left or time is short."""
        reason = _describe(error)
        if attempt >= self.retries:
            raise OsufsError.io(f"{self.label}: {reason} (tried {attempt + 1} times)") from None
        delay = self.retry_delay * 2**attempt * (0.5 + random.random())
        if trio.current_time() + delay >= trio.current_effective_deadline():
            raise OsufsError.io(f"{self.label}: {reason} (no time left to retry)") from None
        log.info("%s: %s; retrying in %.1f s", self.label, reason, delay)
        await trio.sleep(delay)

    async def open_archive(self, set_id: int, tail: int, sink: BinaryIO) -> RemoteArchive | None:
        """Ask for the archive's last `tail` bytes.

        Returns a RemoteArchive when the source honours ranges (the tail is written to sink);
        otherwise writes the whole, checked body to sink and returns None.
        """
        url = self.download_url(set_id)
        headers = {"Range": f"bytes=-{tail}", **ARCHIVE_HEADERS, **self.download_headers(set_id)}
        async with self.stream("GET", url, headers=headers) as response:
            _refuse_html(self, set_id, response)
            if response.status_code == 206:
                first, last, size = _content_range(response)
                if last != size - 1 or last - first + 1 > tail:
                    raise OsufsError.io(
                        f"{self.label}: set {set_id}: asked for the last {tail} bytes, "
                        f"got bytes {first}-{last} of {size}"
                    )
                data = await _read_body(response, last - first + 1)
                if len(data) != last - first + 1:
                    raise OsufsError.io(
                        f"{self.label}: set {set_id}: the archive's end was cut short "
                        f"({len(data)} of {last - first + 1} bytes)"
                    )
                sink.write(data)
                return RemoteArchive(self, set_id, str(response.url), size)
            await self._save_whole(set_id, response, sink, None)
            return None

    async def download_whole(self, set_id: int, url: str, sink: BinaryIO, size: int) -> None:
        """Write the whole archive at `url` (already resolved, so not paced) to sink, checked."""
        headers = {**ARCHIVE_HEADERS, **self.download_headers(set_id)}
        async with self.stream("GET", url, headers=headers) as response:
            _refuse_html(self, set_id, response)
            if response.status_code != 200:
                raise OsufsError.io(f"{self.label}: set {set_id}: HTTP {response.status_code}")
            await self._save_whole(set_id, response, sink, size)

    async def _save_whole(
        self, set_id: int, response: httpx.Response, sink: BinaryIO, size: int | None
    ) -> None:
        """Stream a whole archive to sink; refuse a short, long, HTML or mismatching body."""
        declared = response.headers.get("content-length", "")
        expected = int(declared) if declared.isdigit() else size
        digest = _ArchiveDigest()
        async for chunk in response.aiter_raw(CHUNK):
            if digest.size == 0 and _looks_like_html(chunk):
                raise OsufsError.io(f"{self.label}: set {set_id}: got an HTML page, not an archive")
            sink.write(chunk)
            digest.update(chunk)
            if expected is not None and digest.size > expected:
                raise OsufsError.io(f"{self.label}: set {set_id}: body longer than announced")
        if expected is not None and digest.size != expected:
            raise OsufsError.io(
                f"{self.label}: set {set_id}: body ended after {digest.size} of {expected} bytes"
            )
        if size is not None and digest.size != size:
            raise OsufsError.io(
                f"{self.label}: set {set_id}: archive is {digest.size} bytes, expected {size}"
            )
        await self.check_whole(set_id, digest)


class SetInfoCache:
    """The set infos of the few sets a scan is working through (an LRU)."""

    def __init__(self) -> None:
        self._infos: OrderedDict[int, dict[str, Any]] = OrderedDict()

    async def get(
        self, set_id: int, fetch: Callable[[], Awaitable[Any]], label: str
    ) -> dict[str, Any]:
        if set_id in self._infos:
            self._infos.move_to_end(set_id)
            return self._infos[set_id]
        info = await fetch()
        if not isinstance(info, dict):
            raise OsufsError.io(f"{label}: set {set_id}: set info is not an object")
        self._infos[set_id] = info
        if len(self._infos) > SET_INFO_CACHE:
            self._infos.popitem(last=False)
        return info

    def peek(self, set_id: int) -> dict[str, Any] | None:
        return self._infos.get(set_id)

    def forget(self, set_id: int) -> None:
        self._infos.pop(set_id, None)


class HexideSource(Source):
    """A mirror speaking the Hexide API (as `osufs serve` does)."""

    kind = "hexide"

    def download_url(self, set_id: int) -> str:
        suffix = "download/novid" if self.no_video else "download"
        return f"{self.base.rstrip('/')}/beatmaps/{set_id}/{suffix}"

    async def catalogue(self) -> list[CatalogueEntry]:
        items = await self.json(f"{self.base.rstrip('/')}/beatmaps/", MAX_CATALOGUE_JSON)
        if not isinstance(items, list):
            raise OsufsError.io(f"{self.label}: the set list is not a list")
        entries = []
        skipped = 0
        for item in items:
            try:
                set_id = int(item.get("ranked_id") or item["id"])
                named = str(item.get("title") or "")
            except (AttributeError, KeyError, TypeError, ValueError):
                skipped += 1
                continue
            if set_id < 1 or not named:
                continue  # no name to show yet; reading the set by its id names it
            artist, _, title = named.partition(" - ")
            entries.append(
                CatalogueEntry(set_id, set_folder_name(set_id, artist, title), _date_ns(item))
            )
        if skipped:
            log.warning("%s: %d malformed entries in the set list ignored", self.label, skipped)
        return entries

    def __init__(self, client: httpx.AsyncClient, base: str, *, no_video: bool = False) -> None:
        super().__init__(client, base, no_video=no_video)
        self._set_infos = SetInfoCache()

    async def set_info(self, set_id: int) -> dict[str, Any]:
        """`/beatmaps/<id>`, kept for the few sets a scan is working through."""
        url = f"{self.base.rstrip('/')}/beatmaps/{set_id}"
        return await self._set_infos.get(
            set_id, lambda: self.json(url, MAX_SET_INFO_JSON), self.label
        )

    async def folder_name(self, set_id: int) -> str | None:
        full = str((await self.set_info(set_id)).get("title") or "")
        if not full:
            return None  # the archive's .osu files will name it
        artist, _, title = full.partition(" - ")
        return set_folder_name(set_id, artist, title)

    async def catalogue_entry(self, set_id: int) -> CatalogueEntry | None:
        folder = await self.folder_name(set_id)
        if folder is None:
            return None
        return CatalogueEntry(set_id, folder, _date_ns(await self.set_info(set_id)))

    async def difficulty_bytes(self, set_id: int, path: str) -> bytes | None:
        """`/metadata/<id>/raw`, checked against the md5 the set info lists."""
        wanted = path.casefold()
        versions = (await self.set_info(set_id)).get("versions")
        for version in versions if isinstance(versions, list) else []:
            try:
                # `path` is osufs serve's extension; plain Hexide names files without `.osu`.
                listed = str(version.get("path") or f"{version.get('name', '')}.osu")
                record = int(version["id"])
                size = min(int(version.get("size") or MAX_OSU_SIZE), MAX_OSU_SIZE)
            except (AttributeError, KeyError, TypeError, ValueError):
                continue  # a malformed record names nothing we can use
            if listed.casefold() != wanted:
                continue
            url = f"{self.base.rstrip('/')}/metadata/{record}/raw"
            async with self.stream("GET", url) as response:
                data = await _read_body(response, size)
            expected = str(version.get("hash_md5") or "")
            if expected and hashlib.md5(data).hexdigest() != expected.lower():
                log.warning("%s: set %d: %s does not match its md5", self.label, set_id, path)
                return None
            return data
        return None

    async def check_whole(self, set_id: int, digest: _ArchiveDigest) -> None:
        """A whole download must match the md5 and sha1 the set info gives for the .osz."""
        if self.no_video:
            return  # the set info hashes the full archive, not the one without video
        try:
            info = await self.set_info(set_id)
        except OsufsError as error:
            log.info(
                "%s: set %d: no set info to check the archive by: %s", self.label, set_id, error
            )
            return
        for field_name, hashed in (("hash_md5", digest.md5), ("hash_sha1", digest.sha1)):
            expected = str(info.get(field_name) or "").lower()
            if expected and expected != hashed.hexdigest():
                self._set_infos.forget(set_id)  # the set may have changed: ask again next time
                raise OsufsError.io(
                    f"{self.label}: set {set_id}: the archive does not match the {field_name} "
                    "of the set info"
                )


class OsuSiteSource(Source):
    """The official site: downloads need the user's session cookie and a Referer.

    A download answers 302 to a signed URL on a file host, which gets neither the cookie nor
    anything else from the site. Downloads (first hops only; ranged reads of the file host's
    URL are free) are paced to stay under the site's hourly allowance, and a refused cookie is
    reported once and then not offered again for a while.
    """

    kind = "osu"
    metered = True
    limit_default = OSU_LIMIT_DEFAULT

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        cookie: str | None,
        *,
        no_video: bool = False,
        pacer: Pacer | None = None,
    ) -> None:
        super().__init__(client, base, no_video=no_video)
        self._cookie = cookie
        self.pacer = pacer or Pacer(OSU_BURST, OSU_PER_HOUR)
        self.refused_until = 0.0
        self._refusal_told = False
        self._quota_lock = trio.Lock()
        self._quota_checked: float | None = None  # monotonic time of the last check
        self._downloads_since_check = 0
        self._quota_unsupported = False

    def secret_headers(self) -> dict[str, str]:
        return {"Cookie": self._cookie} if self._cookie else {}

    def download_headers(self, set_id: int) -> dict[str, str]:
        return {"Referer": f"{self.base.rstrip('/')}/beatmapsets/{set_id}"}

    def download_url(self, set_id: int) -> str:
        query = "?noVideo=1" if self.no_video else ""
        return f"{self.base.rstrip('/')}/beatmapsets/{set_id}/download{query}"

    def refusal(self, response: httpx.Response) -> OsufsError:
        if _origin(str(response.url)) != _origin(self.base):
            return super().refusal(response)  # the file host's, not the cookie's
        self.refused_until = time.time() + OSU_REFUSED_PAUSE
        if not self._refusal_told:
            self._refusal_told = True
            log.warning("%s", COOKIE_REFUSED if self._cookie else COOKIE_MISSING)
        return self._refused_error()

    def _refused_error(self) -> OsufsError:
        what = "refused the session cookie" if self._cookie else "needs a session cookie"
        return OsufsError(errno.EACCES, f"{self.label}: the site {what} (HTTP 401)")

    async def check_quota(self) -> None:
        """Read the site's own count of this hour's downloads and make the pacer agree.

        Asked before the first download, then every QUOTA_CHECK_EVERY downloads or
        QUOTA_CHECK_INTERVAL seconds; one check at a time, and never for long. A refused cookie
        is reported (and raised) here, before any download is tried."""
        if self._quota_unsupported or self._quota_lock.locked():
            return
        now = time.monotonic()
        if (
            self._quota_checked is not None
            and self._downloads_since_check < QUOTA_CHECK_EVERY
            and now - self._quota_checked < QUOTA_CHECK_INTERVAL
        ):
            return
        async with self._quota_lock:
            self._quota_checked = now
            self._downloads_since_check = 0
            url = f"{self.base.rstrip('/')}/home/download-quota-check"
            info: Any = None
            try:
                with trio.move_on_after(QUOTA_CHECK_TIMEOUT):
                    info = await self.json(url, MAX_SMALL_JSON, {"Accept": "application/json"})
            except SourceMissing:
                self._quota_unsupported = True
                log.debug("%s: no download quota check here", self.label)
                return
            except SourceLimited:
                raise
            except OsufsError as error:
                if error.errno == errno.EACCES:
                    raise
                log.debug("%s: download quota check failed: %s", self.label, error)
                return
            used = info.get("quota_used") if isinstance(info, dict) else None
            if not isinstance(used, int) or isinstance(used, bool):
                log.debug("%s: the download quota check said %r", self.label, info)
                return
            if self.pacer.agree(used):
                log.info(
                    "%s: the site counts %d downloads in the last hour; pacing from there",
                    self.label,
                    used,
                )

    async def open_archive(self, set_id: int, tail: int, sink: BinaryIO) -> RemoteArchive | None:
        if self.refused_until > time.time():
            raise self._refused_error()
        try:
            await self.check_quota()
        except SourceLimited:
            self.pacer.drain()
            raise
        wait = self.pacer.take()
        if wait > 0:
            until = time.time() + wait
            raise SourceLimited(
                f"{self.label}: pacing downloads under the site's hourly allowance; "
                f"the next one can start at {_clock(until)}",
                until,
            )
        try:
            remote = await super().open_archive(set_id, tail, sink)
        except SourceLimited:
            self.pacer.drain()
            raise
        except OsufsError as error:
            # The site records a download only when it redirects; a 404 or 401 is not counted.
            if isinstance(error, SourceMissing) or error.errno == errno.EACCES:
                self.pacer.give_back()
            raise
        self._downloads_since_check += 1
        return remote


# `{novideo:TEXT}` is TEXT with --no-video and nothing without; `{novideo:TEXT|ELSE}` is TEXT
# with --no-video and ELSE without.
_NOVIDEO = re.compile(r"\{novideo:([^{}|]*)(?:\|([^{}]*))?\}")


class TemplateSource(Source):
    """A plain download mirror: one URL template with `{id}` and optionally `{novideo:...}`."""

    kind = "url"

    def download_url(self, set_id: int) -> str:
        url = _NOVIDEO.sub(lambda m: m.group(1) if self.no_video else m.group(2) or "", self.base)
        return url.replace("{id}", str(set_id))


class MirrorSource(TemplateSource):
    """A download mirror known by name (MIRRORS): its URL shape on its own base or another."""

    def __init__(
        self, client: httpx.AsyncClient, base: str, *, name: str, no_video: bool = False
    ) -> None:
        super().__init__(client, base.rstrip("/") + MIRRORS[name][1], no_video=no_video)
        self.kind = name


class _TokenRefused(OsufsError):
    """The API refused the access token (401): it expired early or was revoked."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


class OsuApiSource(Source):
    """The osu! API v2 with a client-credentials token, and the site's single .osu files.

    It names sets (`/api/v2/beatmapsets/<id>`), lists the catalogue (`/beatmapsets/search`,
    paged by `cursor_string`), and serves a set's .osu files by beatmap id from `/osu/<id>`,
    checked against the md5 the API gives. It serves no archives: the library never asks it
    for one. API requests are paced (API_BURST, API_PER_MINUTE); `/osu/` has its own bucket.
    The token goes only to `/api/` on the source's own origin.
    """

    kind = "osuapi"
    serves_archives = False
    catalogue_paged = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        credentials: tuple[str, str] | None,
        *,
        no_video: bool = False,
        catalogue: str | None = "ranked",
        query: str = "",
        pacer: Pacer | None = None,
        files_pacer: Pacer | None = None,
    ) -> None:
        super().__init__(client, base, no_video=no_video)
        if catalogue is not None and catalogue not in CATALOGUES:
            raise ValueError(f"unknown catalogue {catalogue!r}; expected one of {list(CATALOGUES)}")
        self._credentials = credentials
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = trio.Lock()
        self._refusal_told = False
        self.refused_until = 0.0
        self.pacer = pacer or Pacer(API_BURST, API_PER_MINUTE * 60)
        self.files_pacer = files_pacer or Pacer(FILES_BURST, FILES_PER_MINUTE * 60)
        self.catalogue_filter = catalogue
        self.catalogue_query = query
        self._set_infos = SetInfoCache()
        self.grants = 0  # tokens obtained

    @property
    def _root(self) -> str:
        return self.base.rstrip("/")

    def download_url(self, set_id: int) -> str:
        raise OsufsError.io(f"{self.label}: the API serves no archives")

    async def open_archive(self, set_id: int, tail: int, sink: BinaryIO) -> RemoteArchive | None:
        raise OsufsError.io(f"{self.label}: the API serves no archives")

    # the token

    def secret_headers_for(self, url: str) -> dict[str, str]:
        parts = urlsplit(url)
        if self._token is None or (parts.scheme, parts.netloc) != _origin(self.base):
            return {}
        if not parts.path.startswith("/api/"):
            return {}  # /osu/<id> and the rest of the site need no token
        return {"Authorization": f"Bearer {self._token}"}

    def refusal(self, response: httpx.Response) -> OsufsError:
        if _origin(str(response.url)) == _origin(self.base) and response.url.path.startswith(
            "/api/"
        ):
            return _TokenRefused(f"{self.label}: the API refused the access token (HTTP 401)")
        return super().refusal(response)

    def _credentials_refused(self) -> OsufsError:
        if self._credentials is None:
            return OsufsError(errno.EACCES, f"{self.label}: no client id and secret")
        return OsufsError(errno.EACCES, f"{self.label}: the client id and secret were refused")

    async def _authorize(self) -> None:
        """Have a token that has not expired: reuse it, or ask `/oauth/token` for one."""
        if self._token is not None and time.time() < self._token_expires:
            return
        async with self._token_lock:
            if self._token is not None and time.time() < self._token_expires:
                return
            self._token = None
            if self._credentials is None or self.refused_until > time.time():
                raise self._credentials_refused()
            await self._pace(self.pacer)
            client_id, secret = self._credentials
            form = {
                "client_id": client_id,
                "client_secret": secret,
                "grant_type": "client_credentials",
                "scope": "public",
            }
            url = f"{self._root}/oauth/token"
            self._check_blocked(url)
            request = self.client.build_request(
                "POST",
                url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=_hop_timeout(),
            )
            request.headers.pop("cookie", None)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.HTTPError as error:
                raise OsufsError.io(f"{self.label}: no token: {_describe(error)}") from None
            try:
                self._note_rate_headers(response)
                if response.status_code in (400, 401):
                    # invalid_client: a wrong id or secret will not become right by asking again.
                    self.refused_until = time.time() + OSU_REFUSED_PAUSE
                    if not self._refusal_told:
                        self._refusal_told = True
                        log.warning("%s", CLIENT_REFUSED)
                    raise self._credentials_refused()
                try:
                    _judge(self, response)
                except _ServerError as error:
                    raise OsufsError.io(f"{self.label}: no token: {error}") from None
                body = await _read_body(response, MAX_SMALL_JSON)
            except httpx.HTTPError as error:
                raise OsufsError.io(f"{self.label}: no token: {_describe(error)}") from None
            finally:
                await response.aclose()
            try:
                grant = json.loads(body)
                token = str(grant["access_token"])
                lifetime = float(grant.get("expires_in") or 3600)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise OsufsError.io(f"{self.label}: the token answer is not a token") from None
            self._token = token
            self._token_expires = time.time() + lifetime - min(TOKEN_MARGIN, lifetime / 10)
            self.grants += 1

    async def _pace(self, pacer: Pacer, *, background: bool = False, what: str = "API") -> None:
        """Wait for a token of `pacer`. Background work waits as long as it takes and lets
        readers go first; a reader waits at most API_WAIT (and within its deadline), then the
        request fails over with SourceLimited."""
        reserve = CATALOGUE_RESERVE if background else 0.0
        while (wait := pacer.take(reserve)) > 0:
            if not background and (
                wait > API_WAIT or trio.current_time() + wait >= trio.current_effective_deadline()
            ):
                until = time.time() + wait
                raise SourceLimited(
                    f"{self.label}: pacing {what} requests; the next can start at {_clock(until)}",
                    until,
                )
            await trio.sleep(wait)

    async def _api(self, url: str, limit: int, *, background: bool = False) -> Any:
        """An API answer, with a token; a refused token is renewed once."""
        for attempt in range(2):
            await self._authorize()
            await self._pace(self.pacer, background=background)
            token = self._token
            try:
                return await self.json(url, limit, {"Accept": "application/json"})
            except _TokenRefused:
                if self._token == token:
                    self._token = None
                if attempt:
                    raise OsufsError(
                        errno.EACCES, f"{self.label}: the API refused a fresh token (HTTP 401)"
                    ) from None
                log.info("%s: the access token was refused; asking for a new one", self.label)
            except SourceLimited as error:
                if error.until > time.time():
                    self.rest(error.until, "the API says it is rate limited (HTTP 429)")
                raise
        raise AssertionError("unreachable")

    # set info and names

    async def set_info(self, set_id: int, *, background: bool = False) -> dict[str, Any]:
        """`/api/v2/beatmapsets/<id>`, kept for the few sets a scan is working through."""
        url = f"{self._root}/api/v2/beatmapsets/{set_id}"
        return await self._set_infos.get(
            set_id,
            lambda: self._api(url, MAX_SET_INFO_JSON, background=background),
            self.label,
        )

    async def folder_name(self, set_id: int) -> str | None:
        return _api_folder(set_id, await self.set_info(set_id))

    async def catalogue_entry(self, set_id: int) -> CatalogueEntry | None:
        info = await self.set_info(set_id, background=True)
        folder = _api_folder(set_id, info)
        return CatalogueEntry(set_id, folder, _iso_ns(info.get("last_updated"))) if folder else None

    def archive_warning(self, set_id: int) -> str | None:
        info = self._set_infos.peek(set_id)
        availability = info.get("availability") if info else None
        if not isinstance(availability, dict) or not availability.get("download_disabled"):
            return None
        more = str(availability.get("more_information") or "").strip()
        reason = f" ({more})" if more else ""
        return (
            f"set {set_id}: osu! has disabled its download{reason}; only a mirror that kept a "
            "copy can serve it"
        )

    # the catalogue

    @property
    def catalogue_key(self) -> str | None:
        if self.catalogue_filter is None:
            return None
        status, sort = CATALOGUES[self.catalogue_filter]
        return f"{self._root} s={status} sort={sort} q={self.catalogue_query}"

    async def catalogue_pages(
        self, resume: str | None
    ) -> AsyncIterator[tuple[list[CatalogueEntry], str | None, bool]]:
        """`/api/v2/beatmapsets/search`, page after page from `resume`, in the background."""
        if self.catalogue_filter is None:
            return
        status, sort = CATALOGUES[self.catalogue_filter]
        cursor = resume
        for _page in range(CATALOGUE_MAX_PAGES):
            params = {"s": status, "sort": sort, "nsfw": "true"}
            if self.catalogue_query:
                params["q"] = self.catalogue_query
            if cursor:
                params["cursor_string"] = cursor
            url = f"{self._root}/api/v2/beatmapsets/search?{urlencode(params)}"
            page = await self._api(url, MAX_SEARCH_JSON, background=True)
            items = page.get("beatmapsets") if isinstance(page, dict) else None
            if not isinstance(items, list):
                raise OsufsError.io(f"{self.label}: the search answer holds no set list")
            entries = []
            for item in items:
                try:
                    set_id = int(item["id"])
                except (KeyError, TypeError, ValueError):
                    continue
                folder = _api_folder(set_id, item) if isinstance(item, dict) else None
                if set_id > 0 and folder:
                    entries.append(
                        CatalogueEntry(set_id, folder, _iso_ns(item.get("last_updated")))
                    )
            following = page.get("cursor_string")
            following = following if isinstance(following, str) and following else None
            # At the end, keep the cursor of the last page: the next sync reads it again and
            # whatever came after it since.
            yield entries, following or cursor, following is None
            if following is None:
                return
            cursor = following

    # single .osu files

    async def difficulty_bytes(self, set_id: int, path: str) -> bytes | None:
        """`/osu/<beatmap id>` for the difficulty the file name names, checked by its md5."""
        if "/" in path or not path.lower().endswith(".osu"):
            return None  # only a set's top-level .osu files are difficulties
        try:
            info = await self.set_info(set_id)
            beatmap = _beatmap_for(info, path)
            if beatmap is None:
                return None
            await self._pace(self.files_pacer, what=".osu file")
        except OsufsError as error:
            if not isinstance(error, SourceLimited) and error.errno != errno.EACCES:
                raise
            # Paced, or no usable client (said once already): the archive's copy will do.
            log.debug("%s: set %d: %s: %s", self.label, set_id, path, error)
            return None
        async with self.stream("GET", f"{self._root}/osu/{int(beatmap['id'])}") as response:
            data = await _read_body(response, MAX_OSU_SIZE)
        expected = str(beatmap.get("checksum") or "").lower()
        if expected and hashlib.md5(data).hexdigest() != expected:
            log.warning("%s: set %d: %s does not match its md5", self.label, set_id, path)
            return None
        return data


def _api_folder(set_id: int, info: dict[str, Any]) -> str | None:
    """The folder name from the API's romanised artist and title (as the site names downloads)."""
    artist = str(info.get("artist") or "")
    title = str(info.get("title") or "")
    return set_folder_name(set_id, artist, title) if artist or title else None


def _beatmap_for(info: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The beatmap a difficulty file name stands for: `Artist - Title (Creator) [Version].osu`
    from the set info, compared case-insensitively, where Creator is the set's creator or one
    of the beatmap's `owners` (guest difficulties); failing that (a renamed creator, edited
    metadata), the one beatmap whose `[Version].osu` ends the name. Its bytes are checked
    against the archive's size and CRC anyway, so a wrong guess costs a request, not data."""
    beatmaps = info.get("beatmaps")
    if not isinstance(beatmaps, list):
        return None
    artist = str(info.get("artist") or "")
    title = str(info.get("title") or "")
    creator = str(info.get("creator") or "")
    wanted = path.casefold()
    by_version = []
    for beatmap in beatmaps:
        if not isinstance(beatmap, dict):
            continue
        try:
            int(beatmap["id"])
        except (KeyError, TypeError, ValueError):
            continue
        version = str(beatmap.get("version") or "")
        owners = beatmap.get("owners")
        names = [creator] + [
            str(owner.get("username") or "")
            for owner in (owners if isinstance(owners, list) else [])
            if isinstance(owner, dict)
        ]
        for name in names:
            if difficulty_filename(artist, title, name, version).casefold() == wanted:
                return beatmap
        if version and wanted.endswith(clean_filename(f" [{version}].osu").casefold()):
            by_version.append(beatmap)
    return by_version[0] if len(by_version) == 1 else None


def _iso_ns(value: object) -> int:
    """An ISO 8601 time (the API's `last_updated`) in nanoseconds; 0 when there is none."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return 0
    if parsed.tzinfo is None:
        return 0
    return int(parsed.timestamp()) * 1_000_000_000


class _ServerError(Exception):
    """A 5xx answer: transient, retried."""


def _hop_timeout() -> Any:  # httpx.Timeout or httpx.USE_CLIENT_DEFAULT
    """Timeouts for one request, from the caller's deadline.

    A source that sends nothing for half the time left (at most STALL_TIMEOUT) is given up
    on, so a silent first source leaves time for the next; the deadline itself is enforced
    by the caller. Without a deadline, the client's own timeouts apply."""
    deadline = trio.current_effective_deadline()
    if deadline == math.inf:
        return httpx.USE_CLIENT_DEFAULT
    left = max(deadline - trio.current_time(), 0.1)
    stall = min(STALL_TIMEOUT, left / 2) if left > 2 * MIN_STALL else left
    return httpx.Timeout(stall, connect=min(CONNECT_TIMEOUT, stall))


def _judge(source: Source, response: httpx.Response) -> None:
    """Turn an HTTP status into the domain's meaning."""
    status = response.status_code
    if status in (200, 206):
        return
    if status == 401:
        raise source.refusal(response)
    if status == 404:
        raise SourceMissing(f"{source.label}: no such set")
    if status == 418:
        raise source.banned(response)
    if status == 429 or (status == 503 and "retry-after" in response.headers):
        until = parse_retry_after(response.headers.get("retry-after"), source.limit_default)
        raise SourceLimited(f"{source.label}: rate limited until {_clock(until)}", until)
    if status >= 500:
        raise _ServerError(f"HTTP {status}")
    raise OsufsError.io(f"{source.label}: unexpected HTTP {status}")


def _refuse_html(source: Source, set_id: int, response: httpx.Response) -> None:
    if "text/html" in response.headers.get("content-type", ""):
        raise OsufsError.io(
            f"{source.label}: set {set_id}: got an HTML page ({response.url.path}), not an archive"
        )


def _looks_like_html(data: bytes) -> bool:
    head = data[:64].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def parse_retry_after(value: str | None, default: float, now: float | None = None) -> float:
    """The unix time a Retry-After header (seconds or an HTTP date) names.

    Absent or unreadable: `default` seconds from now. Never before now, never past the cap."""
    now = time.time() if now is None else now
    value = (value or "").strip()
    if value.isdigit():
        until = now + int(value)
    else:
        parsed = email.utils.parsedate_tz(value) if value else None
        until = float(email.utils.mktime_tz(parsed)) if parsed is not None else now + default
    return min(max(until, now), now + RETRY_AFTER_CAP)


def _reset_time(value: str | None, default: float, now: float | None = None) -> float:
    """The unix time an `x-ratelimit-reset` header names: seconds from now, or (when it is
    larger than any wait) a unix time; an HTTP date like Retry-After. Capped like it."""
    now = time.time() if now is None else now
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        return parse_retry_after(text or None, default, now)
    until = number if number > 1e9 else now + number
    return min(max(until, now), now + RETRY_AFTER_CAP)


def _clock(when: float) -> str:
    """A unix time as the local wall clock, with the date when it is not today."""
    local = time.localtime(when)
    if time.strftime("%Y-%m-%d", local) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", local)
    return time.strftime("%Y-%m-%d %H:%M:%S", local)


def _content_range(response: httpx.Response) -> tuple[int, int, int]:
    """(first, last, total) of a 206's Content-Range."""
    header = response.headers.get("content-range", "")
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", header.strip())
    if not match:
        raise OsufsError.io(f"bad Content-Range from {response.url.host}")
    first, last, total = (int(group) for group in match.groups())
    if first > last or last >= total:
        raise OsufsError.io(f"bad Content-Range from {response.url.host}: {header}")
    return first, last, total


async def _read_body(response: httpx.Response, limit: int) -> bytes:
    """Read at most limit bytes; a server sending more is lying."""
    parts = bytearray()
    async for chunk in response.aiter_raw(CHUNK):
        parts += chunk
        if len(parts) > limit:
            raise OsufsError.io(f"{response.url.host} sent more than it was asked for")
    return bytes(parts)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _date_ns(item: dict[str, object]) -> int:
    try:
        parsed = time.strptime(str(item.get("date")), "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return 0
    return calendar.timegm(parsed) * 1_000_000_000


def _describe(error: Exception) -> str:
    return str(error) or type(error).__name__


SOURCE_KINDS: dict[str, type[Source]] = {
    "hexide": HexideSource,
    "osu": OsuSiteSource,
    "osuapi": OsuApiSource,
    "url": TemplateSource,
    **dict.fromkeys(MIRRORS, MirrorSource),
}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A source as the user names it: `kind=URL`."""

    kind: str
    url: str

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        kind, sep, url = text.partition("=")
        if not sep and kind in DEFAULT_URLS:
            url = DEFAULT_URLS[kind]
        elif not sep or kind not in SOURCE_KINDS or not url:
            known = ", ".join(
                f"{k}[=URL]" if k in DEFAULT_URLS else f"{k}=URL" for k in SOURCE_KINDS
            )
            raise ValueError(f"unknown source {text!r}; expected one of {known}")
        if kind == "url" and "{id}" not in url:
            raise ValueError(f"url source {url!r} needs an {{id}} placeholder")
        if kind == "url" and "{novideo" in _NOVIDEO.sub("", url):
            raise ValueError(
                f"url source {url!r}: write {{novideo:TEXT}} or {{novideo:TEXT|ELSE}} "
                "(TEXT is used with --no-video, ELSE without)"
            )
        return cls(kind, url)


class _SourceSettings(Protocol):
    sources: list[SourceSpec]
    cookie: str | None
    no_video: bool
    # Optional (getattr): client_id, client_secret, catalogue, catalogue_query, catalogue_file.


def build_sources(client: httpx.AsyncClient, settings: _SourceSettings) -> list[Source]:
    """Sources in the order the user gave them."""
    built: list[Source] = []
    for spec in settings.sources:
        if spec.kind == "osu":
            if not settings.cookie:
                log.warning("%s", COOKIE_MISSING)
            built.append(
                OsuSiteSource(client, spec.url, settings.cookie, no_video=settings.no_video)
            )
        elif spec.kind == "osuapi":
            client_id = getattr(settings, "client_id", None)
            secret = getattr(settings, "client_secret", None)
            if not (client_id and secret):
                log.warning("%s", CLIENT_MISSING)
            # With a catalogue file, that file is the list; the API names its sets one by one.
            catalogue = getattr(settings, "catalogue", None) or (
                "none" if getattr(settings, "catalogue_file", None) else "ranked"
            )
            built.append(
                OsuApiSource(
                    client,
                    spec.url,
                    (client_id, secret) if client_id and secret else None,
                    no_video=settings.no_video,
                    catalogue=None if catalogue == "none" else catalogue,
                    query=getattr(settings, "catalogue_query", None) or "",
                )
            )
        elif spec.kind in MIRRORS:
            built.append(MirrorSource(client, spec.url, name=spec.kind, no_video=settings.no_video))
        else:
            if spec.kind == "url" and settings.no_video and not _NOVIDEO.search(spec.url):
                log.info("%s has no {novideo:...} part; its archives may hold video", spec.url)
            built.append(SOURCE_KINDS[spec.kind](client, spec.url, no_video=settings.no_video))
    return built
