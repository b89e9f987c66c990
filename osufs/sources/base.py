"""The common ground of every source: the Source class, how answers are judged, pacing (on
the source's one `Allowance`, osufs/allowance.py), ranged reads of a remote archive, and the
small HTTP helpers they share."""

from __future__ import annotations

import calendar
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
from typing import Any, BinaryIO, ClassVar
from urllib.parse import urljoin, urlsplit

import httpx
import trio

from osufs.allowance import BAN_REST, LONGEST_REST, Allowance, Ledger, Shape, reset_time
from osufs.allowance import clock as _clock
from osufs.allowance import retry_after as parse_retry_after
from osufs.errors import OsufsError

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
RETRY_AFTER_CAP = LONGEST_REST
# The official site counts every download it grants against an hourly allowance (osu-web
# Archive requests ask for the bytes as stored: a compressed transfer would break ranges and
# the length checks, and a zip does not compress anyway.
ARCHIVE_HEADERS = {"Accept-Encoding": "identity"}
SET_INFO_CACHE = 256
# Caps on metadata bodies: a set list of a million sets is about 150 MB.
MAX_CATALOGUE_JSON = 256 << 20
MAX_SET_INFO_JSON = 4 << 20
MAX_OSU_SIZE = 4 << 20
MAX_SEARCH_JSON = 16 << 20
MAX_SMALL_JSON = 64 << 10
# A paced source (Source._pace): background work (the catalogue, naming listed sets, reading
# ahead) leaves the allowance's reserve to readers (osufs/allowance.py), so a reader waiting
# on the source is always served first. A reader waits at most PACED_WAIT for its turn; past
# that the request fails over to the next source.
PACED_WAIT = 10.0


class SourceMissing(OsufsError):
    """This source does not have the set (404); another source may."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOENT, message)


class SourceMismatch(OsufsError):
    """The source's bytes are not the ones its own metadata describes (another md5)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class SourceLimited(OsufsError):
    """This source refuses requests until `until` (unix time)."""

    def __init__(self, message: str, until: float) -> None:
        # EIO, not EAGAIN: readers of regular files do not expect EAGAIN and some spin on it.
        super().__init__(errno.EIO, message)
        self.until = until


class NotJson(OsufsError):
    """A source answered something else (usually an HTML page) where its JSON belongs."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


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
class Difficulty:
    """One beatmap of a set, as metadata describes it."""

    beatmap_id: int
    md5: str  # of its .osu file, lower-case hex
    version: str
    filename: str = ""  # the .osu file's name, when metadata has it (online.db)


@dataclass(frozen=True, slots=True)
class SetDifficulties:
    """What metadata says of a set's difficulties, enough to list them without the archive."""

    updated_ns: int  # the set's last update
    artist: str
    title: str
    creator: str
    difficulties: list[Difficulty]


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
        parts = bytearray()
        async with self.chunks(start, length) as chunks:
            async for chunk in chunks:
                parts += chunk
        if len(parts) != end - start + 1:
            raise OsufsError.io(f"{self.source.label}: set {self.set_id}: short range body")
        return bytes(parts)

    @asynccontextmanager
    async def chunks(self, start: int, length: int) -> AsyncIterator[AsyncIterator[bytes]]:
        """The bytes of one range as they arrive (a short body just ends early: the caller
        knows how much it asked for); more than asked for, or another range, is an error."""
        end = min(start + length, self.size) - 1
        headers = {"Range": f"bytes={start}-{max(end, start)}", **ARCHIVE_HEADERS}
        async with self.source.stream("GET", self.url, headers=headers) as response:
            if response.status_code != 206 or _content_range(response)[0] != start:
                raise OsufsError.io(f"{self.source.label}: set {self.set_id}: range not honoured")
            yield _Bounded(response, end - start + 1)


class Source:
    """A place that serves beatmap archives; subclasses know its URLs."""

    kind = "url"
    # Seconds a 429 without Retry-After keeps this source aside.
    limit_default = LIMIT_DEFAULT
    # Whether every set reached spends a scarce allowance (then nothing is fetched speculatively).
    metered = False
    # Whether it serves archives at all (the osu! API serves only metadata and .osu files).
    serves_archives = True
    # Whether it describes a set's difficulties and serves each .osu by beatmap id
    # (`set_difficulties`, `beatmap_file`): then a set can be listed without its archive.
    serves_difficulties = False
    # Whether its listings cost nothing (local metadata and .osu bytes already at hand): then
    # they are used even where an archive source could list the set.
    free_difficulties = False
    # Whether its set list comes in pages over time (then the library syncs it in the
    # background and keeps a cursor), rather than in one answer.
    catalogue_paged = False
    # What each kind of request costs of the allowance ("request": metadata, "download": an
    # archive, "osu": one .osu file; a source weighing its requests says so). The planner
    # weighs them; the source only describes them.
    costs: ClassVar[dict[str, float]] = {"request": 1.0, "download": 1.0, "osu": 1.0}

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        *,
        no_video: bool = False,
        shape: Shape | None = None,
    ) -> None:
        self.client = client
        self.base = base
        self.no_video = no_video
        # What the source allows and what was spent of it, by every process on the cache
        # directory once `share_allowance` has given it the store (until then, this one's).
        # Unmetered (no shape), it still records the rests 429s and 418s begin.
        self.allowance = Allowance(
            f"{type(self).__name__} {'://'.join(_origin(base))}",
            shape,
            label=self.label,
            default_rest=self.limit_default,
        )
        self._limited_here = 0.0
        self.retries = RETRIES
        self.retry_delay = RETRY_BASE_DELAY
        self.bytes_received = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r})"

    @property
    def label(self) -> str:
        return f"{self.kind} {urlsplit(self.base).netloc or self.base}"

    def share_allowance(self, ledger: Ledger) -> None:
        """Keep the allowance in `ledger` (the store's index), shared with other processes."""
        self.allowance.ledger = ledger
        self.allowance.label = self.label

    def cost(self, kind: str) -> float:
        """What a request of `kind` costs of the allowance."""
        return self.costs.get(kind, 1.0)

    def free_at(self, kind: str, *, background: bool = False) -> float:
        """When a request of `kind` could be sent here (unix time; <= now: now), for choosing
        and waiting; the source itself takes the cost when it sends the request."""
        return self.allowance.free_at(self.cost(kind), background=background)

    @property
    def limited_until(self) -> float:
        """Until when this source is not to be asked: its rest (shared), or a wait this process
        was told of (a pacing wait, a file host's 429)."""
        return max(self._limited_here, self.allowance.rested_until)

    @limited_until.setter
    def limited_until(self, until: float) -> None:
        self._limited_here = until

    @property
    def blocked_until(self) -> float:
        """Until when nothing is sent to the source's own origin (its rest)."""
        return self.allowance.rested_until

    def download_url(self, set_id: int) -> str:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Make ready before the mount starts (open local files); a clear error if it cannot."""

    def close(self) -> None:
        """Let go of what `prepare` opened."""

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

    def listed_sets(self) -> list[int] | None:
        """Ids of the sets the root lists, when this source knows which but names none itself
        (online.db): the catalogue names them from sources' metadata. None: no such list."""
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

    async def set_difficulties(
        self, set_id: int, *, background: bool = False
    ) -> SetDifficulties | None:
        """The set's difficulties from metadata (with `serves_difficulties`); None otherwise.
        Background work (reading ahead) lets readers go first."""
        return None

    async def beatmap_file(self, beatmap_id: int, md5: str, *, background: bool = False) -> bytes:
        """A difficulty's .osu bytes by beatmap id, checked against md5 (SourceMismatch)."""
        raise OsufsError.io(f"{self.label}: serves no .osu files by beatmap id")

    # the preflight (osufs/preflight.py)

    async def probe(self) -> str:
        """Ask the source once, cheaply, whether it can serve: what it said of its allowance
        ("" when nothing), or an OsufsError saying what is wrong. The request goes the way of
        any other (paced, counted, never sent while the source is resting). A plain mirror has
        only its downloads, so its front page is asked for, and any answer but a refusal will do.
        """
        root = "{}://{}/".format(*_origin(self.base))
        try:
            async with self.stream("HEAD", root) as response:
                return allowance_said(response.headers)
        except SourceMissing:
            return ""

    async def probe_json(self, url: str, headers: dict[str, str] | None = None) -> tuple[Any, str]:
        """A small JSON answer for a probe, and what its headers said of the allowance; an
        HTML page there (a login page, a wrong URL) is NotJson."""
        sent = {"Accept": "application/json", **(headers or {})}
        async with self.stream("GET", url, headers=sent) as response:
            body = await _read_body(response, MAX_SMALL_JSON)
            said = allowance_said(response.headers)
            html = "text/html" in response.headers.get("content-type", "")
        if html or _looks_like_html(body):
            raise NotJson(f"{self.label}: {urlsplit(url).path} answered an HTML page, not JSON")
        try:
            return json.loads(body), said
        except ValueError:
            raise NotJson(f"{self.label}: {urlsplit(url).path} did not answer JSON") from None

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
            self._learn(response)
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
        until = self.allowance.rested_until
        if until > time.time() and _origin(url) == _origin(self.base):
            why = self.allowance.rest_reason
            raise SourceLimited(f"{self.label}: {why}; not asked until {_clock(until)}", until)

    def rest(self, until: float, why: str, *, warn: bool = False) -> None:
        """Send nothing to the source until `until` (every process on the cache directory);
        said in the log once per rest."""
        self.allowance.rest(until, why, warn=warn)

    def _learn(self, response: httpx.Response) -> None:
        """What an answer of the source's own origin says of its allowance (a file host's
        budget is not the source's)."""
        if _origin(str(response.url)) == _origin(self.base):
            self.allowance.learn(response.headers, response.status_code)

    def banned(self, response: httpx.Response) -> SourceLimited:
        """The error for a 418: the mirror has banned this address for now; leave it alone."""
        until = self.allowance.rested_until
        if until < time.time() + BAN_REST / 2:
            # Another host of the source (a redirect's target) banned us: rest the source too.
            until = self.allowance.learn(response.headers, 418)
        return SourceLimited(f"{self.label}: banned for now (HTTP 418)", until)

    async def _pace(
        self,
        allowance: Allowance,
        *,
        cost: float = 1.0,
        background: bool = False,
        longest: float = PACED_WAIT,
        what: str = "its",
    ) -> None:
        """Take `cost` of `allowance` (in a worker thread: the store's write lock may be held
        by another process for a moment). Background work waits as long as it takes and lets
        readers go first; a reader waits at most `longest` (and within its deadline), then the
        request fails over with SourceLimited."""
        while (
            free := await trio.to_thread.run_sync(
                lambda: allowance.take(cost, background=background)
            )
        ) > 0:
            wait = max(free - time.time(), 0.01)
            if not background and (
                wait > longest or trio.current_time() + wait >= trio.current_effective_deadline()
            ):
                raise SourceLimited(
                    f"{self.label}: pacing {what} requests; the next can start at {_clock(free)}",
                    free,
                )
            await trio.sleep(wait)

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


def allowance_said(headers: httpx.Headers) -> str:
    """What rate-limit headers say is left ("57 of 60 requests left until 13:58:00, 99000
    today"); "" when they say nothing."""
    left = headers.get("x-ratelimit-remaining", "").strip()
    if not left:
        return ""
    limit = headers.get("x-ratelimit-limit", "").strip()
    said = f"{left} of {limit} requests left" if limit else f"{left} requests left"
    reset = headers.get("x-ratelimit-reset", "").strip()
    if reset:
        said += f" until {_clock(reset_time(reset, LIMIT_DEFAULT))}"
    daily = headers.get("x-daily-remaining", "").strip()
    return f"{said}, {daily} today" if daily else said


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


class _Bounded:
    """A body's chunks as they come; a server sending more than `limit` bytes is lying. (An
    iterator class, not an async generator, so a reader may stop early without one left to
    finalise.)"""

    def __init__(self, response: httpx.Response, limit: int) -> None:
        self._response = response
        self._chunks = response.aiter_raw(CHUNK)
        self._left = limit

    def __aiter__(self) -> _Bounded:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        self._left -= len(chunk)
        if self._left < 0:
            raise OsufsError.io(f"{self._response.url.host} sent more than it was asked for")
        return chunk


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
