"""A stand-in for the official osu! site, its file host and a few mirrors, on loopback.

It runs in a thread with its own trio loop (hypercorn through `osufs.server.serve_app`), so a
test can start it, point a real mount at it and change its behaviour between reads.

- The site (127.0.0.1) speaks the download protocol of seed 000 and osu-web: `GET
  /beatmapsets/<id>/download[?noVideo=1]` needs the session cookie (else 401 and a login
  page) and a Referer on the site (else a redirect to the set's page); a missing set is 404;
  past `limit` granted downloads it answers 429 (with `Retry-After` when `retry_after` is set).
  A granted download answers 302 to a signed URL on the file host and sets a cookie, as the
  real site does.
- The file host (127.0.0.2 by default: another origin, as on the real site) serves archives
  with ranges. Any Cookie header it sees is recorded in `violations`.
- A plain mirror at `/d/<id>` (`/d/<id>n` without video), for `url=` sources.
- A Hexide mirror at `/hexide` (set list, set info with the archive's md5 and sha1, whole
  downloads without ranges), whose hashes can be made wrong with `wrong_hashes`.

`server_errors[set_id]` answers that many 503s (no Retry-After) before serving the set.
`modes[set_id]` makes the file host and the plain mirror (not the Hexide mirror, which can
be the good fallback) misbehave for one set: `hang` (never answers), `stall` (headers and
half the body, then nothing), `truncate` (the connection ends halfway through a body whose
length was announced), `html` (a 200 page), `garbage` (random bytes of the right length,
ranges honoured), `drip` (a few bytes a second).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from osufs.server import RangeNotSatisfiable, parse_range, serve_app

MODES = ("ok", "hang", "stall", "truncate", "html", "garbage", "drip")
SESSION = "osu_session"
LOGIN_PAGE = "<!DOCTYPE html><html><body><h1>Please sign in to continue</h1></body></html>"
STARTUP = 30.0


def _not_a_deliberate_truncation(record: logging.LogRecord) -> bool:
    """hypercorn logs the body `truncate` cuts short as an error; it is the point here."""
    error = record.exc_info[1] if record.exc_info else None
    return "Too little data for declared Content-Length" not in str(error)


logging.getLogger("hypercorn.error").addFilter(_not_a_deliberate_truncation)


@dataclass
class SiteState:
    """What the fake site serves and how; and what it saw. Tests read and change it freely."""

    archives: dict[int, Path]
    cookie: str
    limit: int | None = None
    retry_after: str | None = "3600"
    ranges: bool = True
    modes: dict[int, str] = field(default_factory=dict)
    wrong_hashes: set[int] = field(default_factory=set)
    server_errors: Counter[int] = field(default_factory=Counter)  # 503s to send before bodies
    # What it saw.
    violations: list[str] = field(default_factory=list)
    granted: Counter[int] = field(default_factory=Counter)  # 302s to the file host
    site_requests: int = 0  # download requests at the site, whatever the answer
    refused: int = 0  # 401s
    limited: int = 0  # 429s
    file_requests: Counter[int] = field(default_factory=Counter)
    mirror_requests: list[str] = field(default_factory=list)
    novideo: list[int] = field(default_factory=list)

    def data(self, set_id: int) -> bytes | None:
        path = self.archives.get(set_id)
        return path.read_bytes() if path is not None else None


class FakeSite:
    """Both servers in one background thread; `with FakeSite(...) as site:` runs them."""

    def __init__(
        self, archives: dict[int, Path], *, cookie: str, file_host: str = "127.0.0.2"
    ) -> None:
        self.state = SiteState(dict(archives), cookie)
        self.file_host = file_host
        self.url = ""
        self.files_url = ""
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="fake-site", daemon=True)

    @property
    def mirror_template(self) -> str:
        """A `url=` template for the plain mirror, with the no-video variant."""
        return f"{self.url}/d/{{id}}{{novideo:n}}"

    @property
    def hexide_url(self) -> str:
        return f"{self.url}/hexide"

    def __enter__(self) -> FakeSite:
        self._thread.start()
        if not self._ready.wait(STARTUP) or self._failure is not None:
            self.stop()
            raise RuntimeError(f"the fake site did not start: {self._failure!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._token is not None and self._cancel is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._cancel.cancel, trio_token=self._token)
        self._thread.join(15)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:  # reported to the starting thread
            self._failure = error
            self._ready.set()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._token = trio.lowlevel.current_trio_token()
            self._cancel = nursery.cancel_scope
            files_port = await nursery.start(serve_app, _files_app(self.state), self.file_host, 0)
            self.files_url = f"http://{self.file_host}:{files_port}"
            site_port = await nursery.start(serve_app, _site_app(self), "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{site_port}"
            self._ready.set()


# The site


def _site_app(site: FakeSite) -> Starlette:
    state = site.state

    async def download(request: Request) -> Response:
        set_id = int(request.path_params["set_id"])
        state.site_requests += 1
        if request.headers.get("referer") != f"{site.url}/beatmapsets/{set_id}":
            # osu-web sends a download without the site as Referer to the set's page.
            return RedirectResponse(f"/beatmapsets/{set_id}", status_code=302)
        if request.cookies.get(SESSION) != _session_value(state.cookie):
            state.refused += 1
            return HTMLResponse(LOGIN_PAGE, status_code=401)
        if set_id not in state.archives:
            return HTMLResponse("<!DOCTYPE html><html>Page Missing</html>", status_code=404)
        if state.limit is not None and sum(state.granted.values()) >= state.limit:
            state.limited += 1
            headers = {"retry-after": state.retry_after} if state.retry_after else {}
            return HTMLResponse("Slow down, play more.", status_code=429, headers=headers)
        state.granted[set_id] += 1
        novideo = request.query_params.get("noVideo") == "1"
        if novideo:
            state.novideo.append(set_id)
        signed = f"{site.files_url}/files/{set_id}.osz?sig={random.getrandbits(64):x}"
        response = RedirectResponse(signed + ("&novideo=1" if novideo else ""), status_code=302)
        # The real site refreshes its session cookie on every answer; none may reach the host.
        response.set_cookie(SESSION, "rotated-" + _session_value(state.cookie))
        return response

    async def set_page(request: Request) -> Response:
        return HTMLResponse(f"<!DOCTYPE html><html>set {request.path_params['set_id']}</html>")

    async def mirror(request: Request) -> Response:
        ident = request.path_params["ident"]
        state.mirror_requests.append(request.url.path)
        novideo = ident.endswith("n")
        set_id = int(ident.removesuffix("n"))
        if novideo:
            state.novideo.append(set_id)
        return _body(request, state, set_id)

    async def hexide_list(request: Request) -> Response:
        return JSONResponse([_hexide_summary(state, set_id) for set_id in sorted(state.archives)])

    async def hexide_info(request: Request) -> Response:
        set_id = int(request.path_params["set_id"])
        data = state.data(set_id)
        if data is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        md5, sha1 = hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest()
        if set_id in state.wrong_hashes:
            md5, sha1 = md5[::-1], sha1[::-1]
        info = {**_hexide_summary(state, set_id), "hash_md5": md5, "hash_sha1": sha1}
        return JSONResponse({**info, "versions": []})

    async def hexide_download(request: Request) -> Response:
        set_id = int(request.path_params["set_id"])
        return _body(request, state, set_id, ranges=False, mode="ok")

    number = "{set_id:int}"
    return Starlette(
        routes=[
            Route(f"/beatmapsets/{number}/download", download),
            Route(f"/beatmapsets/{number}", set_page),
            Route("/d/{ident}", mirror),
            Route("/hexide/beatmaps/", hexide_list),
            Route(f"/hexide/beatmaps/{number}", hexide_info),
            Route(f"/hexide/beatmaps/{number}/download", hexide_download),
            Route(f"/hexide/beatmaps/{number}/download/novid", hexide_download),
        ]
    )


def _session_value(cookie: str) -> str:
    """The osu_session value in a Cookie header as a browser copies it."""
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION:
            return value
    return ""


def _hexide_summary(state: SiteState, set_id: int) -> dict[str, Any]:
    return {
        "id": set_id,
        "ranked_id": set_id,
        "name": str(set_id),
        "title": "",
        "type": "osz",
        "size": state.archives[set_id].stat().st_size,
        "date": "2020-01-01 00:00:00",
    }


# The file host


def _files_app(state: SiteState) -> Starlette:
    async def archive(request: Request) -> Response:
        set_id = int(request.path_params["set_id"])
        state.file_requests[set_id] += 1
        if "cookie" in request.headers:
            state.violations.append(f"the file host got a Cookie header for set {set_id}")
        if "sig" not in request.query_params:
            state.violations.append(f"the file host got an unsigned request for set {set_id}")
        return _body(request, state, set_id)

    return Starlette(routes=[Route("/files/{set_id:int}.osz", archive)])


# Bodies, well and badly served


def _body(
    request: Request,
    state: SiteState,
    set_id: int,
    *,
    ranges: bool | None = None,
    mode: str | None = None,
) -> Response:
    data = state.data(set_id)
    if data is None:
        return Response("not found", status_code=404)
    if state.server_errors[set_id] > 0:
        state.server_errors[set_id] -= 1
        return Response("busy", status_code=503)
    mode = mode or state.modes.get(set_id, "ok")
    if mode == "html":
        return HTMLResponse(LOGIN_PAGE)
    if mode == "garbage":
        data = random.Random(set_id).randbytes(len(data))
    ranges = state.ranges if ranges is None else ranges
    status, first, last = 200, 0, len(data) - 1
    headers = {"content-type": "application/octet-stream"}
    if ranges:
        headers["accept-ranges"] = "bytes"
        try:
            chosen = parse_range(request.headers.get("range"), len(data))
        except RangeNotSatisfiable:
            return Response(status_code=416, headers={"content-range": f"bytes */{len(data)}"})
        if chosen is not None:
            status, (first, last) = 206, chosen
            headers["content-range"] = f"bytes {first}-{last}/{len(data)}"
    return _Misbehaving(status, headers, data[first : last + 1], mode)


class _Misbehaving(Response):
    """Sends a body the way `mode` says, with its full length announced."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, mode: str) -> None:
        self.status_code = status
        self.mode = mode
        self.payload = body
        self.background = None
        self.body = b""
        self.init_headers({**headers, "content-length": str(len(body))})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.mode == "hang":
            await anyio.sleep_forever()
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = self.payload
        if self.mode in ("stall", "truncate"):
            half = body[: len(body) // 2]
            await send({"type": "http.response.body", "body": half, "more_body": True})
            if self.mode == "stall":
                await anyio.sleep_forever()
            # Ending the body short of its Content-Length: the server closes the connection.
            await send({"type": "http.response.body", "body": b""})
            return
        if self.mode == "drip":
            for start in range(0, len(body), 16):
                await send(
                    {
                        "type": "http.response.body",
                        "body": body[start : start + 16],
                        "more_body": True,
                    }
                )
                await anyio.sleep(0.25)
        else:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def serve_archives(folder: Path) -> dict[int, Path]:
    """`<id>.osz` files in folder, by id."""
    return {int(path.stem): path for path in folder.glob("*.osz")}


__all__ = ["MODES", "FakeSite", "SiteState", "serve_archives"]
