"""Where bytes come from: Hexide mirrors, the official site, plain download mirrors.

Every HTTP answer is judged in one place (`_judge`), so a status means the same thing for every
source. Redirects are followed by hand: a secret header (the site's cookie) goes only to the
origin it belongs to, never to the host a redirect points at.
"""

from __future__ import annotations

import calendar
import email.utils
import errno
import hashlib
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol
from urllib.parse import urljoin, urlsplit

import httpx
import trio

from osufs.errors import OsufsError
from osufs.names import set_folder_name

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
RETRIES = 3
RETRY_BASE_DELAY = 0.5
CHUNK = 1 << 16
SET_INFO_CACHE = 256
MAX_OSU_SIZE = 4 << 20


class SourceMissing(OsufsError):
    """This source does not have the set (404); another source may."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOENT, message)


class SourceLimited(OsufsError):
    """This source refuses requests until `until` (unix time)."""

    def __init__(self, message: str, until: float) -> None:
        super().__init__(errno.EAGAIN, message)
        self.until = until


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
        headers = {"Range": f"bytes={start}-{end}"}
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

    def __init__(self, client: httpx.AsyncClient, base: str, *, no_video: bool = False) -> None:
        self.client = client
        self.base = base
        self.no_video = no_video
        self.limited_until = 0.0

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

    def download_headers(self, set_id: int) -> dict[str, str]:
        return {}

    async def catalogue(self) -> list[CatalogueEntry]:
        """The sets this source lists; empty when it has no list."""
        return []

    async def folder_name(self, set_id: int) -> str | None:
        """The set's folder name from the source's metadata, if it has any."""
        return None

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
            await response.aclose()

    async def _open(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        """Follow redirects and retry transient failures with backoff and jitter."""
        for attempt in range(RETRIES + 1):
            try:
                response = await self._follow(method, url, headers)
                try:
                    _judge(self, response)
                except BaseException:
                    await response.aclose()
                    raise
                return response
            except (httpx.TransportError, _ServerError) as error:
                if attempt == RETRIES:
                    raise OsufsError.io(f"{self.label}: {_describe(error)}") from None
                delay = RETRY_BASE_DELAY * 2**attempt * (0.5 + random.random())
                log.info("%s: %s; retrying in %.1f s", self.label, _describe(error), delay)
                await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _follow(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        origin = _origin(self.base)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if _origin(url) == origin:
                sent.update(self.secret_headers())
            request = self.client.build_request(method, url, headers=sent)
            response = await self.client.send(request, stream=True)
            if not (response.is_redirect and "location" in response.headers):
                return response
            url = urljoin(url, response.headers["location"])
            await response.aclose()
        raise OsufsError.io(f"{self.label}: too many redirects")

    async def open_archive(self, set_id: int, tail: int, sink: BinaryIO) -> RemoteArchive | None:
        """Ask for the archive's last `tail` bytes.

        Returns a RemoteArchive when the source honours ranges (the tail is written to sink);
        otherwise writes the whole body to sink and returns None.
        """
        url = self.download_url(set_id)
        headers = {"Range": f"bytes=-{tail}", **self.download_headers(set_id)}
        async with self.stream("GET", url, headers=headers) as response:
            _refuse_html(self, set_id, response)
            if response.status_code == 206:
                size = _content_range_total(response)
                data = await _read_body(response, tail)
                sink.write(data)
                return RemoteArchive(self, set_id, str(response.url), size)
            expected = int(response.headers.get("content-length", -1))
            written = 0
            async for chunk in response.aiter_raw(CHUNK):
                sink.write(chunk)
                written += len(chunk)
            if expected >= 0 and written != expected:
                raise OsufsError.io(
                    f"{self.label}: set {set_id}: body ended after {written} of {expected} bytes"
                )
            return None


class HexideSource(Source):
    """A mirror speaking the Hexide API (as `osufs serve` does)."""

    kind = "hexide"

    def download_url(self, set_id: int) -> str:
        suffix = "download/novid" if self.no_video else "download"
        return f"{self.base.rstrip('/')}/beatmaps/{set_id}/{suffix}"

    async def catalogue(self) -> list[CatalogueEntry]:
        async with self.stream("GET", f"{self.base.rstrip('/')}/beatmaps/") as response:
            await response.aread()
        entries = []
        for item in response.json():
            set_id = int(item.get("ranked_id") or item["id"])
            artist, _, title = str(item.get("title", "")).partition(" - ")
            entries.append(
                CatalogueEntry(set_id, set_folder_name(set_id, artist, title), _date_ns(item))
            )
        return entries

    def __init__(self, client: httpx.AsyncClient, base: str, *, no_video: bool = False) -> None:
        super().__init__(client, base, no_video=no_video)
        self._set_infos: OrderedDict[int, dict[str, Any]] = OrderedDict()

    async def set_info(self, set_id: int) -> dict[str, Any]:
        """`/beatmaps/<id>`, kept for the few sets a scan is working through."""
        if set_id in self._set_infos:
            self._set_infos.move_to_end(set_id)
            return self._set_infos[set_id]
        async with self.stream("GET", f"{self.base.rstrip('/')}/beatmaps/{set_id}") as response:
            await response.aread()
        info = response.json()
        if not isinstance(info, dict):
            raise OsufsError.io(f"{self.label}: set {set_id}: set info is not an object")
        self._set_infos[set_id] = info
        if len(self._set_infos) > SET_INFO_CACHE:
            self._set_infos.popitem(last=False)
        return info

    async def folder_name(self, set_id: int) -> str | None:
        artist, _, title = str((await self.set_info(set_id)).get("title", "")).partition(" - ")
        return set_folder_name(set_id, artist, title)

    async def difficulty_bytes(self, set_id: int, path: str) -> bytes | None:
        """`/metadata/<id>/raw`, checked against the md5 the set info lists."""
        wanted = path.casefold()
        for version in (await self.set_info(set_id)).get("versions") or []:
            # `path` is osufs serve's extension; plain Hexide names the file without `.osu`.
            listed = str(version.get("path") or f"{version.get('name', '')}.osu")
            if listed.casefold() != wanted:
                continue
            url = f"{self.base.rstrip('/')}/metadata/{int(version['id'])}/raw"
            async with self.stream("GET", url) as response:
                data = await _read_body(response, int(version.get("size") or MAX_OSU_SIZE))
            expected = str(version.get("hash_md5") or "")
            if expected and hashlib.md5(data).hexdigest() != expected.lower():
                log.warning("%s: set %d: %s does not match its md5", self.label, set_id, path)
                return None
            return data
        return None


class OsuSiteSource(Source):
    """The official site: downloads need the user's session cookie and a Referer."""

    kind = "osu"

    def __init__(
        self, client: httpx.AsyncClient, base: str, cookie: str | None, *, no_video: bool = False
    ) -> None:
        super().__init__(client, base, no_video=no_video)
        self._cookie = cookie

    def secret_headers(self) -> dict[str, str]:
        return {"Cookie": self._cookie} if self._cookie else {}

    def download_headers(self, set_id: int) -> dict[str, str]:
        return {"Referer": f"{self.base.rstrip('/')}/beatmapsets/{set_id}"}

    def download_url(self, set_id: int) -> str:
        query = "?noVideo=1" if self.no_video else ""
        return f"{self.base.rstrip('/')}/beatmapsets/{set_id}/download{query}"


class TemplateSource(Source):
    """A plain download mirror: one URL template with `{id}`."""

    kind = "url"

    def download_url(self, set_id: int) -> str:
        return self.base.replace("{id}", str(set_id))


class _ServerError(Exception):
    """A 5xx answer: transient, retried."""


def _judge(source: Source, response: httpx.Response) -> None:
    """Turn an HTTP status into the domain's meaning."""
    status = response.status_code
    if status in (200, 206):
        return
    if status == 401:
        if isinstance(source, OsuSiteSource):
            raise OsufsError(
                errno.EACCES,
                "the osu! session cookie was refused; copy a fresh one from the browser",
            )
        raise OsufsError(errno.EACCES, f"{source.label}: authorization refused")
    if status == 404:
        raise SourceMissing(f"{source.label}: no such set")
    if status in (429, 418, 503) and (status != 503 or "retry-after" in response.headers):
        until = _retry_after(response)
        when = time.strftime("%H:%M:%S", time.localtime(until))
        raise SourceLimited(f"{source.label}: rate limited until {when}", until)
    if status >= 500:
        raise _ServerError(f"HTTP {status}")
    raise OsufsError.io(f"{source.label}: unexpected HTTP {status}")


def _refuse_html(source: Source, set_id: int, response: httpx.Response) -> None:
    if "text/html" in response.headers.get("content-type", ""):
        raise OsufsError.io(f"{source.label}: set {set_id}: got an HTML page, not an archive")


def _retry_after(response: httpx.Response, default: float = 60.0) -> float:
    value = response.headers.get("retry-after", "")
    if value.isdigit():
        return time.time() + int(value)
    parsed = email.utils.parsedate_tz(value) if value else None
    if parsed is not None:
        return float(email.utils.mktime_tz(parsed))
    return time.time() + default


def _content_range_total(response: httpx.Response) -> int:
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("content-range", ""))
    if not match:
        raise OsufsError.io(f"bad Content-Range from {response.url.host}")
    return int(match.group(3))


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
    "url": TemplateSource,
}


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """A source as the user names it: `kind=URL`."""

    kind: str
    url: str

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        kind, sep, url = text.partition("=")
        if not sep or kind not in SOURCE_KINDS or not url:
            known = ", ".join(f"{k}=URL" for k in SOURCE_KINDS)
            raise ValueError(f"unknown source {text!r}; expected one of {known}")
        if kind == "url" and "{id}" not in url:
            raise ValueError(f"url source {url!r} needs an {{id}} placeholder")
        return cls(kind, url)


class _SourceSettings(Protocol):
    sources: list[SourceSpec]
    cookie: str | None
    no_video: bool


def build_sources(client: httpx.AsyncClient, settings: _SourceSettings) -> list[Source]:
    """Sources in the order the user gave them."""
    built: list[Source] = []
    for spec in settings.sources:
        if spec.kind == "osu":
            built.append(
                OsuSiteSource(client, spec.url, settings.cookie, no_video=settings.no_video)
            )
        else:
            built.append(SOURCE_KINDS[spec.kind](client, spec.url, no_video=settings.no_video))
    return built
