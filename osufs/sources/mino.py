"""Mino (catboy.best) and osu.direct: archives, and without login single .osu files and
metadata in the osu! API's shapes, every endpoint on the mirror's one allowance.

Mino allows 60 requests a minute (weighted by cost), says what is left in
`x-ratelimit-remaining`/`x-ratelimit-reset` and `x-daily-remaining`/`x-ratelimit-daily-reset`,
and bans (418) a client that asks again while a 429 told it to wait. So every request to the
mirror, whichever endpoint, costs its weight (`costs`) of the source's one allowance
(osufs/allowance.py: MINO_PER_MINUTE in any minute, MINO_BURST at once, shared by every
process on the cache directory), which holds as spent what the headers say another client
spent; a spent minute or day, a 429 or a 418 rests the mirror until it said, and background
work lets readers go first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any, ClassVar
from urllib.parse import urlencode, urlsplit

import httpx

from osufs.allowance import Shape
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
    SetDifficulties,
    SetInfoCache,
    _origin,
)
from osufs.sources.mirrors import MirrorSource
from osufs.sources.search import SearchPage, sliced_search

# Mino's published limit is 60 a minute (weighted); --mirror-per-minute changes it.
MINO_BURST = 10
MINO_PER_MINUTE = 60
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
    # Mino weighs its requests but does not publish the weights: each counts one until it does.
    costs: ClassVar[dict[str, float]] = {
        "download": 1.0,
        "osu": 1.0,
        "set": 1.0,
        "beatmap": 1.0,
        "md5": 1.0,
        "search": 1.0,
        "request": 1.0,
    }

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
        set_infos: SetInfoCache | None = None,
    ) -> None:
        shape = Shape.per_minute(per_minute, MINO_BURST)
        super().__init__(client, base, name=name, no_video=no_video, shape=shape)
        if catalogue is not None and catalogue not in CATALOGUES:
            raise ValueError(f"unknown catalogue {catalogue!r}; expected one of {list(CATALOGUES)}")
        self._root = base.rstrip("/")
        self._osu_path = OSU_FILE_PATHS[name]
        self.catalogue_filter = catalogue
        self.catalogue_query = query
        # Shared with the other sources of the osu! API's shapes (build_sources): a set's info
        # asked of one is not asked again of another.
        self._set_infos = set_infos if set_infos is not None else SetInfoCache()

    # every request: one allowance

    def request_kind(self, url: str) -> str:
        """Which of `costs` a request to the mirror is."""
        path = urlsplit(url).path
        if path.startswith(("/d/", "/api/d/")):
            return "download"
        if path.startswith(("/osu/", "/api/osu/")):
            return "osu"
        for kind, prefix in (("set", "/s/"), ("beatmap", "/b/"), ("md5", "/md5/")):
            if path.startswith("/api/v2" + prefix):
                return kind
        return "search" if path.startswith("/api/v2/search") else "request"

    async def _open(self, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
        """Take the request's cost first (a reader waits at most PACED_WAIT); while the
        mirror rests (a 429's Retry-After), ask nothing: asking sooner is what Mino bans."""
        if _origin(url) == _origin(self.base):
            self._check_blocked(url)
            cost = self.cost(self.request_kind(url))
            await self._pace(self.allowance, cost=cost, background=_BACKGROUND.get(), what="mirror")
        return await super()._open(method, url, headers)

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
