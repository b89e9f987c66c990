"""Mino (catboy.best) and osu.direct: archives, and without login single .osu files and
metadata in the osu! API's shapes, every endpoint on the mirror's one allowance.

Mino allows 60 requests a minute (weighted by cost), says what is left in
`x-ratelimit-remaining`/`x-ratelimit-reset` and `x-daily-remaining`/`x-ratelimit-daily-reset`,
and bans (418) a client that asks again while a 429 told it to wait. So every request to the
mirror, whichever endpoint, takes a token of one bucket (MINO_BURST, MINO_PER_MINUTE: never
over 60 in any minute), the bucket gives up what the headers say another client spent, a spent
day or a 429 rests the mirror until it said, and background work lets readers go first.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import urlencode

import httpx

from osufs.errors import OsufsError
from osufs.sources.api import (
    CATALOGUES,
    _api_folder,
    _iso_ns,
    catalogue_entries,
    checked_osu,
    set_difficulties_of,
)
from osufs.sources.base import (
    MAX_SEARCH_JSON,
    MAX_SET_INFO_JSON,
    CatalogueEntry,
    Pacer,
    SetDifficulties,
    SetInfoCache,
    SourceLimited,
    _origin,
    _reset_time,
)
from osufs.sources.mirrors import MirrorSource
from osufs.sources.search import SearchPage, sliced_search

MINO_BURST = 10
MINO_PER_MINUTE = 50
# One sync reads at most this many search pages of SEARCH_PAGE sets (the next goes on).
SEARCH_PAGE = 100
SEARCH_MAX_PAGES = 1000
# Where each mirror keeps a single .osu file; both keep the metadata under /api/v2.
OSU_FILE_PATHS = {"catboy": "/osu/{id}", "osudirect": "/api/osu/{id}"}
# Whether the request being sent is background work (it then leaves tokens to readers).
_BACKGROUND: ContextVar[bool] = ContextVar("mino_background", default=False)


@contextlib.contextmanager
def _in_background(background: bool):
    token = _BACKGROUND.set(background)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


class MinoSource(MirrorSource):
    """A mirror with Mino's endpoints (`catboy`, `osudirect`): archives by `/d/<id>`, set infos
    by `/api/v2/s/<id>`, single .osu files by beatmap id, and, when given a catalogue, the set
    list from `/api/v2/search` in date slices. Its allowance is scarce, so it is metered: sets
    are listed from their .osu files rather than from archives."""

    metered = True
    serves_difficulties = True
    catalogue_paged = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        *,
        name: str,
        no_video: bool = False,
        catalogue: str | None = None,
        query: str = "",
        per_minute: float = MINO_PER_MINUTE,
    ) -> None:
        super().__init__(client, base, name=name, no_video=no_video)
        if catalogue is not None and catalogue not in CATALOGUES:
            raise ValueError(f"unknown catalogue {catalogue!r}; expected one of {list(CATALOGUES)}")
        self._root = base.rstrip("/")
        self._osu_path = OSU_FILE_PATHS[name]
        self.pacer = Pacer(MINO_BURST, per_minute * 60)
        self.catalogue_filter = catalogue
        self.catalogue_query = query
        self._set_infos = SetInfoCache()

    # every request: one allowance

    async def _open(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        """Take a token first (a reader waits at most PACED_WAIT); after a 429, ask nothing
        until its Retry-After (asking sooner is what Mino bans)."""
        if _origin(url) == _origin(self.base):
            self._check_blocked(url)
            await self._pace(self.pacer, background=_BACKGROUND.get(), what="mirror")
        try:
            return await super()._open(method, url, headers)
        except SourceLimited as error:
            if error.until > time.time():
                self.rest(error.until, "it answered 429 (rate limited)")
            raise

    def _note_rate_headers(self, response: httpx.Response) -> None:
        """Beside the per-minute rest: the bucket keeps no more tokens than the mirror says
        are left, and a spent day rests the mirror until the daily reset."""
        super()._note_rate_headers(response)
        if _origin(str(response.url)) != _origin(self.base):
            return
        with contextlib.suppress(ValueError):
            left = float(response.headers.get("x-ratelimit-remaining", "").strip())
            self.pacer.agree(math.ceil(self.pacer.burst - left))
        with contextlib.suppress(ValueError):
            if float(response.headers.get("x-daily-remaining", "").strip()) < 1:
                reset = response.headers.get("x-ratelimit-daily-reset")
                self.rest(_reset_time(reset, 3600.0), "its daily allowance is spent")

    async def probe(self) -> str:
        """`/api/ratelimits`: the mirror's own account of the allowance left (one token)."""
        with _in_background(False):
            info, said = await self.probe_json(f"{self._root}/api/ratelimits")
        if isinstance(info, dict) and isinstance(info.get("remaining"), int):
            daily = info.get("daily_remaining")
            today = f", {daily} today" if isinstance(daily, int) else ""
            return f"{info['remaining']} requests left this minute{today}"
        return said

    # metadata

    async def _json(self, path: str, limit: int, *, background: bool) -> Any:
        with _in_background(background):
            return await self.json(f"{self._root}{path}", limit, {"Accept": "application/json"})

    async def set_info(self, set_id: int, *, background: bool = False) -> dict[str, Any]:
        """`/api/v2/s/<id>`, kept for the few sets a scan is working through."""
        return await self._set_infos.get(
            set_id,
            lambda: self._json(f"/api/v2/s/{set_id}", MAX_SET_INFO_JSON, background=background),
            self.label,
        )

    async def folder_name(self, set_id: int) -> str | None:
        return _api_folder(set_id, await self.set_info(set_id))

    async def catalogue_entry(self, set_id: int) -> CatalogueEntry | None:
        info = await self.set_info(set_id, background=True)
        folder = _api_folder(set_id, info)
        return CatalogueEntry(set_id, folder, _iso_ns(info.get("last_updated"))) if folder else None

    async def set_difficulties(self, set_id: int, *, background: bool = False) -> SetDifficulties:
        return set_difficulties_of(await self.set_info(set_id, background=background))

    async def beatmap_file(self, beatmap_id: int, md5: str, *, background: bool = False) -> bytes:
        """`/osu/<beatmap id>` (osu.direct: `/api/osu/`), checked against md5."""
        with _in_background(background):
            url = self._root + self._osu_path.replace("{id}", str(beatmap_id))
            return await checked_osu(self, url, md5)

    # the catalogue

    @property
    def catalogue_key(self) -> str | None:
        if self.catalogue_filter is None:
            return None
        status, sort = CATALOGUES[self.catalogue_filter]
        return f"{self._root}/api/v2/search status={status} sort={sort} q={self.catalogue_query}"

    async def catalogue_pages(
        self, resume: str | None
    ) -> AsyncIterator[tuple[list[CatalogueEntry], str | None, bool]]:
        """`/api/v2/search`, SEARCH_PAGE sets at a time by offset, in date slices that each
        stay under the search's cap (sources/search.py), in the background."""
        if self.catalogue_filter is None:
            return
        status, sort = CATALOGUES[self.catalogue_filter]

        async def page(since: str, cursor: str | None) -> SearchPage:
            offset = int(cursor) if cursor and cursor.isdigit() else 0
            query = " ".join(part for part in (self.catalogue_query, since) if part)
            params = {"query": query, "limit": SEARCH_PAGE, "offset": offset}
            params.update(status=status, sort=sort)
            items = await self._json(
                f"/api/v2/search?{urlencode(params)}", MAX_SEARCH_JSON, background=True
            )
            if not isinstance(items, list):
                raise OsufsError.io(f"{self.label}: the search answer is not a list of sets")
            following = str(offset + len(items)) if len(items) >= SEARCH_PAGE else None
            return SearchPage(items, following)

        keyword = sort.partition("_")[0]
        pages = sliced_search(page, keyword, resume, self.label, SEARCH_MAX_PAGES)
        async with contextlib.aclosing(pages) as stream:
            async for items, position, done in stream:
                yield catalogue_entries(items), position, done


__all__ = ["MINO_PER_MINUTE", "MinoSource"]
