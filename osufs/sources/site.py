"""The official site: downloads with the session cookie, paced under its hourly allowance,
checked against its own quota count."""

from __future__ import annotations

import errno
import logging
import time
from typing import Any, BinaryIO

import httpx
import trio

from osufs.allowance import Shape
from osufs.errors import OsufsError
from osufs.sources.base import (
    MAX_SMALL_JSON,
    RemoteArchive,
    Source,
    SourceLimited,
    SourceMissing,
    _clock,
    _origin,
)

log = logging.getLogger(__name__)

# BeatmapsetsController::download: the account's downloads in the last hour, 429 past it). The
# production allowance is not published; seed 000 met the 429 after about 190 downloads and
# waited about 30 minutes, which fits a sliding hour. The allowance (osufs/allowance.py) lets
# OSU_BURST through at once, refills at OSU_PER_HOUR and holds at most OSU_BURST + OSU_PER_HOUR
# = 180 in any hour: a browsing burst is never slowed, a long scan settles at one download
# every 30 s, and the user's own browser keeps some room.
OSU_BURST = 60
OSU_PER_HOUR = 120
OSU_SHAPE = Shape(OSU_BURST + OSU_PER_HOUR, 3600.0, OSU_BURST, refill=OSU_PER_HOUR / 3600.0)
# The site's 429 carries no Retry-After; a slot frees when the oldest download of the hour
# ages out, so look again after this long rather than every minute.
OSU_LIMIT_DEFAULT = 600.0
# After a 401 the site is not asked again for this long: the cookie cannot change under a
# running mount, and a scan should not send hundreds of refused requests.
OSU_REFUSED_PAUSE = 600.0
COOKIE_REFUSED = "the osu! session cookie was refused; copy a fresh one from the browser"
COOKIE_MISSING = (
    "the osu! site needs your session cookie: put it in a file only you can read and pass "
    "--cookie-file, or set OSUFS_COOKIE"
)
# The site's own count of downloads in the last hour (`/home/download-quota-check`) is read
# before the first download of a session, then after every QUOTA_CHECK_EVERY downloads or
# QUOTA_CHECK_INTERVAL seconds, whichever comes first; a check never holds a download up for
# more than QUOTA_CHECK_TIMEOUT.
QUOTA_CHECK_EVERY = 10
QUOTA_CHECK_INTERVAL = 600.0
QUOTA_CHECK_TIMEOUT = 5.0


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
        shape: Shape = OSU_SHAPE,
    ) -> None:
        super().__init__(client, base, no_video=no_video, shape=shape)
        self._cookie = cookie
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
        """Read the site's own count of this hour's downloads and make the allowance agree.

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
            if await trio.to_thread.run_sync(self.allowance.agree, used):
                log.info(
                    "%s: the site counts %d downloads in the last hour; pacing from there",
                    self.label,
                    used,
                )

    async def probe(self) -> str:
        """The site's own count of this hour's downloads, which needs the cookie: a refused
        cookie shows here, before any download is tried. No cookie: nothing is sent."""
        if not self._cookie:
            raise OsufsError(errno.EACCES, f"{self.label}: {COOKIE_MISSING}")
        url = f"{self.base.rstrip('/')}/home/download-quota-check"
        info, _said = await self.probe_json(url)
        used = info.get("quota_used") if isinstance(info, dict) else None
        if not isinstance(used, int) or isinstance(used, bool):
            return ""
        await trio.to_thread.run_sync(self.allowance.agree, used)
        self._quota_checked, self._downloads_since_check = time.monotonic(), 0  # a check too
        return f"{used} downloads counted in the last hour"

    async def open_archive(self, set_id: int, tail: int, sink: BinaryIO) -> RemoteArchive | None:
        if self.refused_until > time.time():
            raise self._refused_error()
        self._check_blocked(self.download_url(set_id))  # a rest's reason, not a pacing wait
        await self.check_quota()
        allowance = self.allowance
        until = await trio.to_thread.run_sync(allowance.take, self.cost("download"))
        if until > 0:
            raise SourceLimited(
                f"{self.label}: pacing downloads under the site's hourly allowance; "
                f"the next one can start at {_clock(until)}",
                until,
            )
        try:
            remote = await super().open_archive(set_id, tail, sink)
        except OsufsError as error:
            # The site records a download only when it redirects; a 404 or 401 is not counted.
            # (A 429 has rested the source where the answer was judged.)
            if isinstance(error, SourceMissing) or error.errno == errno.EACCES:
                await trio.to_thread.run_sync(allowance.give_back, self.cost("download"))
            raise
        self._downloads_since_check += 1
        return remote


# `{novideo:TEXT}` is TEXT with --no-video and nothing without; `{novideo:TEXT|ELSE}` is TEXT
# with --no-video and ELSE without.
