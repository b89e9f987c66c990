"""The osu! API v2: OAuth client credentials, set info, the catalogue, /osu/<id> files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

import httpx
import trio

from osufs.allowance import Shape
from osufs.errors import OsufsError
from osufs.names import clean_filename, set_folder_name
from osufs.osufile import difficulty_filename
from osufs.sources.base import (
    MAX_OSU_SIZE,
    MAX_SEARCH_JSON,
    MAX_SET_INFO_JSON,
    MAX_SMALL_JSON,
    PACED_WAIT,
    CatalogueEntry,
    Difficulty,
    RemoteArchive,
    SetDifficulties,
    SetInfoCache,
    Source,
    SourceLimited,
    SourceMismatch,
    _describe,
    _hop_timeout,
    _judge,
    _origin,
    _read_body,
    _ServerError,
)
from osufs.sources.search import SearchPage, sliced_search
from osufs.sources.site import OSU_REFUSED_PAUSE

log = logging.getLogger(__name__)

# The osu! API: its documentation asks for at most 60 requests a minute. The source's one
# allowance (osufs/allowance.py) lets API_PER_MINUTE through in any minute, API_BURST at once.
# Single .osu files (`/osu/<beatmap id>`) are a page of the site, not of the API, and their
# limit is not published: they are counted on the same allowance (the emulation counts them
# so too). Background work (the catalogue, naming listed sets) leaves the allowance's reserve
# to readers, who wait at most PACED_WAIT (Source._pace). `--api-per-minute` changes the
# limit, for a service that allows more.
API_BURST = 10
API_PER_MINUTE = 60
# A token is renewed this long before the site says it expires (at most a tenth of its life).
TOKEN_MARGIN = 60.0
# The API's search answers 50 sets a page; one sync reads at most this many pages (about
# 100,000 sets, some 40 minutes at the background rate) and the next refresh goes on from its
# resume point (a date slice and a cursor in it: sources/search.py).
CATALOGUE_MAX_PAGES = 2000
# --catalogue: the API's `s=` status filter (osu-web BeatmapsetSearchRequestParams) and a sort
# under which sets that appear later come last, so a saved cursor finds them on the next sync.
CATALOGUES: dict[str, tuple[str, str]] = {
    "ranked": ("ranked", "ranked_asc"),  # ranked and approved
    "loved": ("loved", "ranked_asc"),
    "all": ("any", "updated_asc"),  # every status, graveyard included
}
OSU_SITE = "https://osu.ppy.sh"
_MD5 = re.compile(r"[0-9a-f]{32}")
CLIENT_MISSING = (
    "the osu! API needs an OAuth client (create one under Settings > OAuth on the site): put "
    "client_id=... and client_secret=... in a file only you can read and pass --client-file, "
    "or set OSUFS_CLIENT_ID and OSUFS_CLIENT_SECRET"
)
CLIENT_REFUSED = "the osu! API refused the client id and secret; check the --client-file"


class _TokenRefused(OsufsError):
    """The API refused the access token (401): it expired early or was revoked."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)


class OsuApiSource(Source):
    """The osu! API v2 with a client-credentials token, and the site's single .osu files.

    It names sets (`/api/v2/beatmapsets/<id>`), lists the catalogue (`/beatmapsets/search`,
    paged by `cursor_string`), and serves a set's .osu files by beatmap id from `/osu/<id>`,
    checked against the md5 the API gives. It serves no archives: the library never asks it
    for one. Every request is paced on one allowance (API_BURST, API_PER_MINUTE).
    The token goes only to `/api/` on the source's own origin.
    """

    kind = "osuapi"
    serves_archives = False
    serves_difficulties = True
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
        per_minute: float = API_PER_MINUTE,
        set_infos: SetInfoCache | None = None,
    ) -> None:
        shape = Shape.per_minute(per_minute, API_BURST)
        super().__init__(client, base, no_video=no_video, shape=shape)
        if catalogue is not None and catalogue not in CATALOGUES:
            raise ValueError(f"unknown catalogue {catalogue!r}; expected one of {list(CATALOGUES)}")
        self._credentials = credentials
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = trio.Lock()
        self._refusal_told = False
        self.refused_until = 0.0
        self.catalogue_filter = catalogue
        self.catalogue_query = query
        # Shared with the other sources of the osu! API's shapes (build_sources): a set's info
        # asked of one is not asked again of another.
        self._set_infos = set_infos if set_infos is not None else SetInfoCache()
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
            await self._pace(self.allowance, what="API")
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
                self._learn(response)
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

    async def probe(self) -> str:
        """A token for the client (paced like any API request, and kept for what follows): a
        refused client id or secret shows here. No client: nothing is sent."""
        if self._credentials is None:
            raise OsufsError(errno.EACCES, f"{self.label}: {CLIENT_MISSING}")
        await self._authorize()
        return ""

    async def _api(self, url: str, limit: int, *, background: bool = False) -> Any:
        """An API answer, with a token; a refused token is renewed once."""
        for attempt in range(2):
            await self._authorize()
            await self._pace(self.allowance, background=background, what="API")
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
        """`/api/v2/beatmapsets/search`, page after page from `resume`, in the background, in
        date slices that each stay under the search's cap (sources/search.py)."""
        if self.catalogue_filter is None:
            return
        status, sort = CATALOGUES[self.catalogue_filter]

        async def page(since: str, cursor: str | None) -> SearchPage:
            params = {"s": status, "sort": sort, "nsfw": "true"}
            query = " ".join(part for part in (self.catalogue_query, since) if part)
            if query:
                params["q"] = query
            if cursor:
                params["cursor_string"] = cursor
            url = f"{self._root}/api/v2/beatmapsets/search?{urlencode(params)}"
            answer = await self._api(url, MAX_SEARCH_JSON, background=True)
            items = answer.get("beatmapsets") if isinstance(answer, dict) else None
            if not isinstance(items, list):
                raise OsufsError.io(f"{self.label}: the search answer holds no set list")
            following = answer.get("cursor_string")
            return SearchPage(items, (following or None) if isinstance(following, str) else None)

        keyword = sort.partition("_")[0]
        pages = sliced_search(page, keyword, resume, self.label, CATALOGUE_MAX_PAGES)
        async with contextlib.aclosing(pages) as stream:
            async for items, position, done in stream:
                yield catalogue_entries(items), position, done

    # single .osu files

    async def set_difficulties(self, set_id: int, *, background: bool = False) -> SetDifficulties:
        return set_difficulties_of(await self.set_info(set_id, background=background))

    async def beatmap_file(
        self, beatmap_id: int, md5: str, *, background: bool = False, longest: float = math.inf
    ) -> bytes:
        """`/osu/<beatmap id>`, paced (waiting up to `longest`, within the caller's deadline;
        in the background, behind readers) and checked against md5 when one is given."""
        cost = self.cost("osu")
        await self._pace(
            self.allowance, cost=cost, background=background, longest=longest, what=".osu file"
        )
        return await checked_osu(self, f"{self._root}/osu/{beatmap_id}", md5)

    async def difficulty_bytes(self, set_id: int, path: str) -> bytes | None:
        """`/osu/<beatmap id>` for the difficulty the file name names, checked by its md5."""
        if "/" in path or not path.lower().endswith(".osu"):
            return None  # only a set's top-level .osu files are difficulties
        try:
            info = await self.set_info(set_id)
            beatmap = _beatmap_for(info, path)
            if beatmap is None:
                return None
            checksum = str(beatmap.get("checksum") or "")
            return await self.beatmap_file(int(beatmap["id"]), checksum, longest=PACED_WAIT)
        except SourceMismatch:
            log.warning("%s: set %d: %s does not match its md5", self.label, set_id, path)
            return None
        except OsufsError as error:
            if not isinstance(error, SourceLimited) and error.errno != errno.EACCES:
                raise
            # Paced, or no usable client (said once already): the archive's copy will do.
            log.debug("%s: set %d: %s: %s", self.label, set_id, path, error)
            return None


def set_difficulties_of(info: dict[str, Any]) -> SetDifficulties:
    """A set info's beatmaps that have an id and an md5, and its `last_updated` (the osu! API's
    shape, which the mirrors copy)."""
    difficulties = []
    for beatmap in info.get("beatmaps") or ():
        if not isinstance(beatmap, dict):
            continue
        md5 = str(beatmap.get("checksum") or "").lower()
        try:
            beatmap_id = int(beatmap["id"])
        except (KeyError, TypeError, ValueError):
            continue
        if beatmap_id > 0 and _MD5.fullmatch(md5):
            difficulties.append(Difficulty(beatmap_id, md5, str(beatmap.get("version") or "")))
    return SetDifficulties(
        _iso_ns(info.get("last_updated")),
        str(info.get("artist") or ""),
        str(info.get("title") or ""),
        str(info.get("creator") or ""),
        difficulties,
    )


async def checked_osu(source: Source, url: str, md5: str) -> bytes:
    """A single .osu file at `url`, checked against md5 when one is given (SourceMismatch)."""
    async with source.stream("GET", url) as response:
        data = await _read_body(response, MAX_OSU_SIZE)
    if md5 and hashlib.md5(data).hexdigest() != md5.lower():
        raise SourceMismatch(f"{source.label}: {urlsplit(url).path} does not match its md5")
    return data


def catalogue_entries(items: list[Any]) -> list[CatalogueEntry]:
    """The listable sets of a search answer in the osu! API's shape (the API's, the mirrors')."""
    entries = []
    for item in items:
        try:
            set_id = int(item["id"])
        except (KeyError, TypeError, ValueError):
            continue
        folder = _api_folder(set_id, item) if isinstance(item, dict) else None
        if set_id > 0 and folder:
            entries.append(CatalogueEntry(set_id, folder, _iso_ns(item.get("last_updated"))))
    return entries


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
