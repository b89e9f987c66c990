"""A stand-in for Mino (catboy.best) on loopback, one ASGI app (served by
`tests.helpers.ThreadedApp`); with `shape="osudirect"`, osu.direct's paths for the same.

Mino's endpoints (../shared/docs/osu-domain.md), without login:
- `/d/<id>` and `/d/<id>n` (no video): the archive, with ranges unless `ranges` is off;
- `/osu/<beatmap id>`: one .osu file;
- `/api/v2/s/<set id>`, `/api/v2/b/<beatmap id>`, `/api/v2/md5/<md5>`: a set (with its
  beatmaps) and a beatmap (with its set) in the osu! API v2's shapes;
- `/api/v2/search?query=&limit=&offset=[&status=&sort=]`: a JSON list of sets, matched like
  tests/fake_api.py's search (status names, title words, `ranked>=DAY` filters), at most
  `search_cap` (10,000) results a query, however far `offset` goes;
- `/api/ratelimits`: the allowance left, as JSON.
osu.direct's shape: `/api/d/<id>[?noVideo=1]`, `/api/osu/<beatmap id>`, the same `/api/v2/...`.

Every request costs its kind's weight (`weights`) from one allowance of `per_minute` a `window`
(a fixed window from the first request after the last one ended; short in tests) and of `daily`
a `day`. Every answer carries `x-ratelimit-remaining`, `x-ratelimit-reset`, `x-daily-remaining`
and `x-ratelimit-daily-reset` (seconds). A request the allowance cannot pay for gets 429 with
`Retry-After`; any request before that time has passed is a client ignoring it, and gets 418,
as does everything from then on for `ban` seconds. `requests` counts the requests by kind,
`too_many` the 429s and `teapots` the 418s, so a test can assert that none was provoked.
`overloaded` paths are answered once with 429 and that Retry-After (seconds) whatever is
left, as a busy mirror may (counted in `held`, not `too_many`); requests already on their way
then (arriving within GRACE) get the same 429; asking again later, before the Retry-After has
passed, is ignoring it, and is banned like any other.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.fake_api import ApiSet, ranged, search_sets

# What each kind of request costs; Mino's own weights are not published.
WEIGHTS = {
    "download": 1,
    "osu": 1,
    "set": 1,
    "beatmap": 1,
    "md5": 1,
    "search": 1,
    "ratelimits": 0,
}
SEARCH_LIMIT = 100  # results a search page at most (its `limit`)
GRACE = 0.25  # seconds after an `overloaded` 429 in which requests were already on their way


@dataclass
class MinoState:
    sets: dict[int, ApiSet]
    per_minute: int = 60
    window: float = 60.0
    daily: int = 100_000
    day: float = 86400.0
    weights: dict[str, int] = field(default_factory=lambda: dict(WEIGHTS))
    search_cap: int = 10_000
    ranges: bool = True
    ban: float = 3600.0
    overloaded: dict[str, int] = field(default_factory=dict)  # path -> Retry-After, once
    # The allowance as spent.
    used: int = 0
    window_start: float = 0.0
    used_today: int = 0
    day_start: float = 0.0
    told_until: float = 0.0  # the last 429's Retry-After, as a unix time
    banned_until: float = 0.0
    # What it saw.
    requests: Counter[str] = field(default_factory=Counter)
    paths: list[str] = field(default_factory=list)
    too_many: int = 0  # 429s sent
    teapots: int = 0  # 418s sent
    held: int = 0  # 429s sent for `overloaded` paths
    grace_until: float = 0.0

    def beatmaps(self) -> dict[int, tuple[ApiSet, int]]:
        """Each beatmap id's set and index in it."""
        return {
            b.beatmap_id: (s, n) for s in self.sets.values() for n, b in enumerate(s.beatmaps)
        }

    def charge(self, kind: str, now: float) -> tuple[int, dict[str, str]]:
        """Count a request of `kind`: the status it gets (200, 429 or 418) and the headers."""
        self.requests[kind] += 1
        if now < self.banned_until:
            self.teapots += 1
            return 418, {}
        if now < self.told_until:
            self.banned_until = now + self.ban
            self.teapots += 1
            return 418, {}
        if now - self.window_start >= self.window:
            self.window_start, self.used = now, 0
        if now - self.day_start >= self.day:
            self.day_start, self.used_today = now, 0
        reset = max(1, math.ceil(self.window_start + self.window - now))
        daily_reset = max(1, math.ceil(self.day_start + self.day - now))
        cost = self.weights.get(kind, 1)
        status = 200
        if self.used + cost > self.per_minute or self.used_today + cost > self.daily:
            self.too_many += 1
            wait = reset if self.used + cost > self.per_minute else daily_reset
            self.told_until = now + wait
            status = 429
        else:
            self.used += cost
            self.used_today += cost
        headers = {
            "x-ratelimit-limit": str(self.per_minute),
            "x-ratelimit-remaining": str(self.per_minute - self.used),
            "x-ratelimit-reset": str(reset),
            "x-daily-remaining": str(self.daily - self.used_today),
            "x-ratelimit-daily-reset": str(daily_reset),
        }
        if status == 429:
            headers["retry-after"] = str(wait)
        return status, headers


def beatmap_json(found: ApiSet, index: int) -> dict[str, Any]:
    """A beatmap in the osu! API v2's shape, with its set (without the set's beatmaps)."""
    beatmap = found.info()["beatmaps"][index]
    return {**beatmap, "beatmapset": found.summary()}


def mino_app(state: MinoState, shape: str = "mino") -> Starlette:
    """Mino's endpoints (or osu.direct's, with shape="osudirect") over `state`."""
    beatmaps = state.beatmaps()
    by_md5 = {hashlib.md5(s.beatmaps[n].data).hexdigest(): (s, n) for s, n in beatmaps.values()}

    def metered(kind: str, answer: Callable[[Request], Response]):
        async def handler(request: Request) -> Response:
            query = request.url.query
            state.paths.append(request.url.path + (f"?{query}" if query else ""))
            now = time.time()
            wait = state.overloaded.pop(request.url.path, None)
            if wait is not None and now >= max(state.told_until, state.banned_until):
                state.told_until, state.grace_until = now + wait, now + GRACE
            if wait is not None or now < state.grace_until:
                state.requests[kind] += 1
                state.held += 1
                headers = {"retry-after": str(max(1, math.ceil(state.told_until - now)))}
                return JSONResponse({"error": "busy"}, status_code=429, headers=headers)
            status, headers = state.charge(kind, now)
            if status == 418:
                return PlainTextResponse("I'm a teapot", status_code=418, headers=headers)
            if status == 429:
                return JSONResponse({"error": "rate limited"}, status_code=429, headers=headers)
            response = answer(request)
            response.headers.update(headers)
            return response

        return handler

    def not_found() -> Response:
        return JSONResponse({"error": "not found"}, status_code=404)

    def download(request: Request) -> Response:
        ident = request.path_params["ident"]
        try:
            set_id = int(ident.removesuffix("n"))
        except ValueError:
            return not_found()
        found = state.sets.get(set_id)
        if found is None or not found.archive.is_file():
            return not_found()
        data = found.archive.read_bytes()
        if not state.ranges:
            return Response(data, media_type="application/octet-stream")
        return ranged(request, data)

    def osu_file(request: Request) -> Response:
        hit = beatmaps.get(request.path_params["beatmap_id"])
        if hit is None:
            return not_found()
        found, index = hit
        return Response(found.beatmaps[index].data, media_type="application/octet-stream")

    def set_info(request: Request) -> Response:
        found = state.sets.get(request.path_params["set_id"])
        return JSONResponse(found.info()) if found else not_found()

    def beatmap_info(request: Request) -> Response:
        hit = beatmaps.get(request.path_params["beatmap_id"])
        return JSONResponse(beatmap_json(*hit)) if hit else not_found()

    def md5_info(request: Request) -> Response:
        hit = by_md5.get(request.path_params["md5"].lower())
        return JSONResponse(beatmap_json(*hit)) if hit else not_found()

    def search(request: Request) -> Response:
        params = request.query_params
        try:
            limit = min(max(int(params.get("limit", "50")), 1), SEARCH_LIMIT)
            offset = max(int(params.get("offset", "0")), 0)
        except ValueError:
            return JSONResponse({"error": "bad limit or offset"}, status_code=400)
        matching = search_sets(
            state.sets, params.get("status", "any"), params.get("sort", ""), params.get("query", "")
        )
        end = min(offset + limit, state.search_cap)
        return JSONResponse([s.info() for s in matching[offset:end]])

    def ratelimits(request: Request) -> Response:
        return JSONResponse(
            {
                "remaining": state.per_minute - state.used,
                "daily_remaining": state.daily - state.used_today,
            }
        )

    archive = "/api/d/{ident}" if shape == "osudirect" else "/d/{ident}"
    single = "/api/osu/{beatmap_id:int}" if shape == "osudirect" else "/osu/{beatmap_id:int}"
    return Starlette(
        routes=[
            Route(archive, metered("download", download)),
            Route(single, metered("osu", osu_file)),
            Route("/api/v2/s/{set_id:int}", metered("set", set_info)),
            Route("/api/v2/b/{beatmap_id:int}", metered("beatmap", beatmap_info)),
            Route("/api/v2/md5/{md5}", metered("md5", md5_info)),
            Route("/api/v2/search", metered("search", search)),
            Route("/api/ratelimits", metered("ratelimits", ratelimits)),
        ]
    )


__all__ = ["WEIGHTS", "MinoState", "beatmap_json", "mino_app"]
