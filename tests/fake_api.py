"""A stand-in for the osu! API v2, the site's single .osu files and download quota, and rate-
limited mirrors, on loopback, in one ASGI app (served by `tests.helpers.ThreadedApp`).

- OAuth: `POST /oauth/token` grants client-credentials tokens that expire after
  `token_lifetime` seconds; `revoke_tokens()` makes every token so far invalid (401).
- `GET /api/v2/beatmapsets/<id>`: set info built from the archive's own .osu files (artist,
  title and creator of the first; one beatmap per difficulty with its `id`, `version` and md5
  `checksum`), `availability.download_disabled` from `disabled`.
- `GET /api/v2/beatmapsets/search?s=&sort=&cursor_string=&q=`: `page_size` sets a page,
  filtered by status like osu-web (`ranked` is ranked and approved, `any` is everything, none is
  ranked, approved and loved); `q` matches the title, and its `ranked>=DATE`, `updated<DATE`
  (any of `< <= > >= =`) filters the dates like osu-web's query parser; sorted by `sort`
  (`ranked_asc`, `updated_asc`; else by id); the cursor is opaque base64 JSON; like osu-web's
  Elasticsearch, a query yields at most `search_cap` results (10,000), then the cursor ends;
  past `search_limit` searches it answers 429.
- With `per_minute`, the API (`/oauth/token`, `/api/`, `/osu/`) counts every request against
  that allowance a `window` (fixed, from the first request), sends Laravel's
  `X-RateLimit-Limit`/`-Remaining` and answers 429 with `Retry-After` past it (`limited_api`).
- `GET /osu/<beatmap id>`: the .osu bytes, without login; `wrong_osu` beatmaps get a changed
  byte, `failing_osu` ones answer 503. A request that carries the API token there is a violation.
- The site: `/home/download-quota-check` with the session cookie answers `quota_used`;
  `/beatmapsets/<id>/download` counts against `download_limit` (then 429 "Slow down, play
  more.", with `Retry-After` when `retry_after` is set) and redirects to `/files/<id>.osz`.
- Mirrors at `/<name>/d/<id>[n]` (and `?noVideo=1`), with ranges: each answers
  `x-ratelimit-remaining` and `x-ratelimit-reset` from its `limit` per `window` seconds, 429
  past it (which a well-behaved client never sees), and 418 to everything once `banned`;
  with `redirect`, a download is a 302 to `/<name>/files/<id>.osz` (not counted).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets
import time
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from osufs.osufile import parse_osu
from osufs.server import RangeNotSatisfiable, parse_range

CLIENT_ID = "31337"
CLIENT_SECRET = "fake-client-secret-9f8e7d6c5b4a"
SESSION_COOKIE = "osu_session=fake-api-session-1234"


@dataclass
class Beatmap:
    beatmap_id: int
    version: str
    data: bytes
    owner: str = ""  # the .osu's own Creator: a guest difficulty's mapper


@dataclass
class ApiSet:
    set_id: int
    archive: Path
    artist: str
    title: str
    creator: str
    beatmaps: list[Beatmap]
    status: str = "ranked"
    disabled: bool = False

    @property
    def ranked_date(self) -> str:
        """Half an hour per set id from 2010: dates that grow with ids, a few dozen a day."""
        when = datetime(2010, 1, 1, tzinfo=UTC) + timedelta(minutes=30 * self.set_id)
        return when.isoformat()

    @property
    def last_updated(self) -> str:
        return f"2020-01-{1 + self.set_id % 28:02d}T12:00:00+00:00"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.set_id,
            "artist": self.artist,
            "artist_unicode": self.artist,
            "title": self.title,
            "title_unicode": self.title,
            "creator": self.creator,
            "status": self.status,
            "video": False,
            "last_updated": self.last_updated,
            "ranked_date": self.ranked_date,
            "availability": {
                "download_disabled": self.disabled,
                "more_information": "DMCA takedown" if self.disabled else None,
            },
        }

    def info(self) -> dict[str, Any]:
        beatmaps = [
            {
                "id": b.beatmap_id,
                "beatmapset_id": self.set_id,
                "version": b.version,
                "checksum": hashlib.md5(b.data).hexdigest(),
                "mode": "osu",
                "owners": [{"id": 1000 + n, "username": b.owner or self.creator}],
            }
            for n, b in enumerate(self.beatmaps)
        ]
        return {**self.summary(), "beatmaps": beatmaps}


def api_set(set_id: int, archive: Path, status: str = "ranked") -> ApiSet:
    """What the API says of an archive: taken from its top-level .osu files."""
    beatmaps = []
    first = None
    with zipfile.ZipFile(archive) as zf:
        for number, info in enumerate(zf.infolist()):
            if "/" in info.filename or not info.filename.lower().endswith(".osu"):
                continue
            data = zf.read(info)
            meta = parse_osu(data)
            first = first or meta
            beatmap_id = meta.beatmap_id or set_id * 100 + number
            beatmaps.append(Beatmap(beatmap_id, meta.version, data, meta.creator))
    assert first is not None, archive
    return ApiSet(set_id, archive, first.artist, first.title, first.creator, beatmaps, status)


@dataclass
class MirrorState:
    limit: int | None = None  # requests a window; None: no limit and no headers
    window: float = 3600.0
    banned: bool = False
    redirect: bool = False  # answer downloads with a 302 to /<name>/files/<id>.osz
    used: int = 0
    window_start: float = field(default_factory=time.time)
    requests: list[str] = field(default_factory=list)
    too_many: int = 0  # 429s sent
    teapots: int = 0  # 418s sent


@dataclass
class ApiState:
    sets: dict[int, ApiSet]
    page_size: int = 50
    search_cap: int = 10_000
    search_limit: int | None = None  # searches answered; later ones get 429 (`search_rest`)
    search_rest: int = 3600  # the Retry-After of those 429s
    token_lifetime: int = 86400
    wrong_osu: set[int] = field(default_factory=set)
    failing_osu: set[int] = field(default_factory=set)
    # The site.
    quota_used: int = 0
    download_limit: int | None = None
    retry_after: str | None = None
    mirrors: dict[str, MirrorState] = field(default_factory=dict)
    per_minute: int | None = None  # the API's allowance a window; None: no limit, no headers
    window: float = 60.0
    used: int = 0
    window_start: float = 0.0
    # What it saw.
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry (unix time)
    grants: int = 0
    refused_grants: int = 0
    refused_tokens: int = 0  # 401s on /api/
    api_requests: list[str] = field(default_factory=list)
    searches: list[dict[str, str]] = field(default_factory=list)
    osu_requests: Counter[int] = field(default_factory=Counter)
    quota_checks: int = 0
    downloads: Counter[int] = field(default_factory=Counter)
    limited: int = 0
    limited_api: int = 0  # 429s the API's allowance sent
    violations: list[str] = field(default_factory=list)

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def mirror(self, name: str) -> MirrorState:
        return self.mirrors.setdefault(name, MirrorState())

    def archive_bytes(self, set_id: int) -> bytes | None:
        found = self.sets.get(set_id)
        return found.archive.read_bytes() if found else None


def _cursor(key: tuple[str, int], served: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"key": key, "n": served}).encode()).decode()


def _after(cursor: str | None) -> tuple[tuple[str, int] | None, int]:
    """The sort key a cursor names and how many results the query has served up to it."""
    if not cursor:
        return None, 0
    found = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    return (found["key"][0], found["key"][1]), found["n"]


_FILTER = re.compile(r"(ranked|updated)(<=|>=|<|>|=)(\d{4}-\d{2}-\d{2})")
_COMPARE = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "=": lambda a, b: a == b,
}


def search_sets(sets: dict[int, ApiSet], status: str, sort: str, query: str) -> list[ApiSet]:
    """The sets a search matches, in its order: by status, by title words, by `ranked` and
    `updated` date filters (compared by day, like osu-web's query parser), sorted by `sort`."""
    wanted = STATUSES.get(status, set())
    filters = _FILTER.findall(query)
    words = _FILTER.sub(" ", query).lower().split()

    def dated(found: ApiSet, field: str) -> str:
        return (found.ranked_date if field == "ranked" else found.last_updated)[:10]

    matching = [
        found
        for _set_id, found in sorted(sets.items())
        if found.status in wanted
        and all(word in found.title.lower() for word in words)
        and all(_COMPARE[op](dated(found, field), day) for field, op, day in filters)
    ]
    return sorted(matching, key=lambda found: sort_key(found, sort))


def sort_key(found: ApiSet, sort: str) -> tuple[str, int]:
    if sort.startswith("ranked"):
        return found.ranked_date, found.set_id
    if sort.startswith("updated"):
        return found.last_updated, found.set_id
    return "", found.set_id


STATUSES = {
    "ranked": {"ranked", "approved"},
    "loved": {"loved"},
    "qualified": {"qualified"},
    "graveyard": {"graveyard"},
    "any": {"ranked", "approved", "loved", "qualified", "pending", "wip", "graveyard"},
    "": {"ranked", "approved", "loved"},
}


def api_app(state: ApiState, extra_archives: dict[int, Path] | None = None) -> Starlette:
    """The API, the site and the mirrors; `extra_archives` are sets only the mirrors have."""
    mirror_only = dict(extra_archives or {})
    # The benchmark serves thousands of difficulties: find one by id at once.
    beatmaps = {b.beatmap_id: b for s in state.sets.values() for b in s.beatmaps}

    def metered(handler: Callable[[Request], Awaitable[Response]]):
        """The API's allowance (`per_minute` a `window`) around a handler, with its headers."""

        async def answer(request: Request) -> Response:
            if state.per_minute is None:
                return await handler(request)
            now = time.time()
            if now - state.window_start >= state.window:
                state.window_start, state.used = now, 0
            reset = max(1, math.ceil(state.window_start + state.window - now))
            if state.used >= state.per_minute:
                state.limited_api += 1
                headers = {"retry-after": str(reset), "x-ratelimit-remaining": "0"}
                return JSONResponse({"error": "Too Many Attempts."}, 429, headers=headers)
            state.used += 1
            response = await handler(request)
            response.headers["x-ratelimit-limit"] = str(state.per_minute)
            response.headers["x-ratelimit-remaining"] = str(state.per_minute - state.used)
            return response

        return answer

    def authorised(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip()
        state.api_requests.append(str(request.url.path) + "?" + str(request.url.query))
        if header.startswith("Bearer ") and state.tokens.get(token, 0) > time.time():
            return True
        state.refused_tokens += 1
        return False

    async def token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        good = (
            form.get("client_id") == CLIENT_ID
            and form.get("client_secret") == CLIENT_SECRET
            and form.get("grant_type") == "client_credentials"
            and form.get("scope") == "public"
        )
        if not good:
            state.refused_grants += 1
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        issued = f"tok-{secrets.token_hex(8)}"
        state.tokens[issued] = time.time() + state.token_lifetime
        state.grants += 1
        return JSONResponse(
            {"token_type": "Bearer", "expires_in": state.token_lifetime, "access_token": issued}
        )

    async def set_info(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"authentication": "basic"}, status_code=401)
        found = state.sets.get(int(request.path_params["set_id"]))
        if found is None:
            return JSONResponse({"error": None}, status_code=404)
        return JSONResponse(found.info())

    async def search(request: Request) -> Response:
        if not authorised(request):
            return JSONResponse({"authentication": "basic"}, status_code=401)
        params = dict(request.query_params)
        state.searches.append(params)
        if state.search_limit is not None and len(state.searches) > state.search_limit:
            headers = {"retry-after": str(state.search_rest)}
            return JSONResponse({}, status_code=429, headers=headers)
        matching = search_sets(
            state.sets, params.get("s", ""), params.get("sort", ""), params.get("q", "")
        )
        sort = params.get("sort", "")
        after, served = _after(params.get("cursor_string"))
        rest = [s for s in matching if after is None or sort_key(s, sort) > after]
        page = rest[: max(0, min(state.page_size, state.search_cap - served))]
        served += len(page)
        more = len(rest) > len(page) and served < state.search_cap
        following = _cursor(sort_key(page[-1], sort), served) if more else None
        return JSONResponse(
            {
                "beatmapsets": [{**s.summary(), "beatmaps": []} for s in page],
                "cursor_string": following,
                "total": min(len(matching), state.search_cap),
            }
        )

    async def osu_file(request: Request) -> Response:
        beatmap_id = int(request.path_params["beatmap_id"])
        state.osu_requests[beatmap_id] += 1
        if "authorization" in request.headers:
            state.violations.append(f"/osu/{beatmap_id} got the API token")
        if beatmap_id in state.failing_osu:
            return PlainTextResponse("busy", status_code=503)
        beatmap = beatmaps.get(beatmap_id)
        if beatmap is None:
            return PlainTextResponse("", status_code=404)
        data = beatmap.data
        if beatmap_id in state.wrong_osu:
            data = data[:-1] + bytes([data[-1] ^ 0x20])
        return Response(data, media_type="application/octet-stream")

    def has_session(request: Request) -> bool:
        return request.headers.get("cookie") == SESSION_COOKIE

    async def quota(request: Request) -> Response:
        state.quota_checks += 1
        if not has_session(request):
            return JSONResponse({"authentication": "basic"}, status_code=401)
        return JSONResponse({"quota_used": state.quota_used})

    async def download(request: Request) -> Response:
        set_id = int(request.path_params["set_id"])
        if not has_session(request):
            return PlainTextResponse("login", status_code=401)
        if state.download_limit is not None and sum(state.downloads.values()) >= (
            state.download_limit
        ):
            state.limited += 1
            headers = {"retry-after": state.retry_after} if state.retry_after else {}
            return PlainTextResponse("Slow down, play more.", status_code=429, headers=headers)
        state.downloads[set_id] += 1
        state.quota_used += 1
        return RedirectResponse(f"/files/{set_id}.osz?sig=x", status_code=302)

    async def files(request: Request) -> Response:
        return ranged(request, state.archive_bytes(int(request.path_params["set_id"])))

    async def mirror(request: Request) -> Response:
        name = request.path_params["name"]
        ident = request.path_params["ident"]
        mirror = state.mirror(name)
        mirror.requests.append(
            request.url.path + ("?" + request.url.query if request.url.query else "")
        )
        if mirror.banned:
            mirror.teapots += 1
            return PlainTextResponse("I'm a teapot", status_code=418)
        headers = {}
        if mirror.limit is not None:
            now = time.time()
            if now - mirror.window_start >= mirror.window:
                mirror.window_start, mirror.used = now, 0
            reset = max(1, math.ceil(mirror.window_start + mirror.window - now))
            if mirror.used >= mirror.limit:
                mirror.too_many += 1
                return PlainTextResponse(
                    "rate limited", status_code=429, headers={"retry-after": str(reset)}
                )
            mirror.used += 1
            headers = {
                "x-ratelimit-limit": str(mirror.limit),
                "x-ratelimit-remaining": str(mirror.limit - mirror.used),
                "x-ratelimit-reset": str(reset),
            }
        set_id = int(ident.removesuffix("n"))
        if mirror.redirect:
            return RedirectResponse(f"/{name}/files/{set_id}.osz", status_code=302, headers=headers)
        return ranged(request, mirror_data(set_id), headers)

    def mirror_data(set_id: int) -> bytes | None:
        data = state.archive_bytes(set_id)
        if data is None and set_id in mirror_only:
            data = mirror_only[set_id].read_bytes()
        return data

    async def mirror_file(request: Request) -> Response:
        state.mirror(request.path_params["name"]).requests.append(request.url.path)
        return ranged(request, mirror_data(int(request.path_params["set_id"])))

    number = "{set_id:int}"
    return Starlette(
        routes=[
            Route("/oauth/token", metered(token), methods=["POST"]),
            Route("/api/v2/beatmapsets/search", metered(search)),
            Route(f"/api/v2/beatmapsets/{number}", metered(set_info)),
            Route("/osu/{beatmap_id:int}", metered(osu_file)),
            Route("/home/download-quota-check", quota),
            Route(f"/beatmapsets/{number}/download", download),
            Route(f"/files/{number}.osz", files),
            Route("/{name}/d/{ident}", mirror),
            Route(f"/{{name}}/files/{number}.osz", mirror_file),
            Route("/{name}/api/d/{ident}", mirror),  # osu.direct's shape
            Route("/{name}/beatmaps/download/{kind}/{ident}", mirror),  # sayobot's
        ]
    )


def ranged(request: Request, data: bytes | None, headers: dict[str, str] | None = None):
    headers = {"content-type": "application/octet-stream", **(headers or {})}
    if data is None:
        return PlainTextResponse("not found", status_code=404, headers=headers)
    headers["accept-ranges"] = "bytes"
    try:
        chosen = parse_range(request.headers.get("range"), len(data))
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={"content-range": f"bytes */{len(data)}"})
    if chosen is None:
        return Response(data, headers=headers)
    first, last = chosen
    headers["content-range"] = f"bytes {first}-{last}/{len(data)}"
    return Response(data[first : last + 1], status_code=206, headers=headers)


__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "SESSION_COOKIE",
    "ApiSet",
    "ApiState",
    "MirrorState",
    "api_app",
    "api_set",
]
