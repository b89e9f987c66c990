"""Sources as the user names them (`kind=URL`, or a mirror's name) and building them in order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from osufs.allowance import Ledger
from osufs.sources.api import API_PER_MINUTE, CLIENT_MISSING, OSU_SITE, OsuApiSource
from osufs.sources.base import SetInfoCache, Source
from osufs.sources.hexide import HexideSource
from osufs.sources.mino import MINO_PER_MINUTE, OSU_FILE_PATHS, MinoSource
from osufs.sources.mirrors import _NOVIDEO, MIRRORS, MirrorSource, TemplateSource
from osufs.sources.onlinedb import ONLINE_DB_URL, OnlineDbSource, lazer_data_folder
from osufs.sources.site import COOKIE_MISSING, OsuSiteSource

log = logging.getLogger(__name__)

DEFAULT_URLS: dict[str, str] = {
    "onlinedb": "",  # lazer's own copy, else ONLINE_DB_URL (resolved when the mount starts)
    "osu": OSU_SITE,
    "osuapi": OSU_SITE,
    **{name: base for name, (base, _path) in MIRRORS.items()},
}


SOURCE_KINDS: dict[str, type[Source]] = {
    "hexide": HexideSource,
    "osu": OsuSiteSource,
    "osuapi": OsuApiSource,
    "onlinedb": OnlineDbSource,
    "url": TemplateSource,
    **dict.fromkeys(MIRRORS, MirrorSource),
    **dict.fromkeys(OSU_FILE_PATHS, MinoSource),
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
                "onlinedb[=PATH|URL]"
                if k == "onlinedb"
                else f"{k}[=URL]"
                if k in DEFAULT_URLS
                else f"{k}=URL"
                for k in SOURCE_KINDS
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
    cache_dir: Path
    # Optional (getattr): client_id, client_secret, catalogue, catalogue_query, catalogue_file,
    # api_per_minute, mirror_per_minute, offline.


def onlinedb_location(spec: SourceSpec) -> str:
    """Where `onlinedb` reads: the PATH or URL given; else lazer's own copy, else the URL."""
    if spec.url:
        return spec.url
    lazer = lazer_data_folder() / "online.db"
    return str(lazer) if lazer.is_file() else ONLINE_DB_URL


def build_sources(
    client: httpx.AsyncClient,
    settings: _SourceSettings,
    local: Callable[[str], bytes | None] = lambda md5: None,
    ledger: Ledger | None = None,
) -> list[Source]:
    """Sources in the order the user gave them; `local` is the cache's .osu files by md5, and
    `ledger` (the store) keeps their allowances, shared with other processes. One
    source lists the catalogue: online.db when it is there, else the osu! API, else the first
    mirror with Mino's search; a catalogue file is the list unless --catalogue asks for more
    (the sources then name its sets one by one)."""
    built: list[Source] = []
    # The set infos of every source answering in the osu! API's shapes (the API, Mino,
    # osu.direct): whichever answered first, no other is asked for the same set.
    api_shaped = SetInfoCache()
    offline = bool(getattr(settings, "offline", False))
    with_onlinedb = any(spec.kind == "onlinedb" for spec in settings.sources)
    chosen = "none" if with_onlinedb else getattr(settings, "catalogue", None)
    chosen = chosen or ("none" if getattr(settings, "catalogue_file", None) else "ranked")
    catalogue: str | None = None if chosen == "none" else chosen
    lister = next((spec for spec in settings.sources if spec.kind == "osuapi"), None) or next(
        (spec for spec in settings.sources if spec.kind in OSU_FILE_PATHS), None
    )
    for spec in settings.sources:
        if spec.kind == "onlinedb":
            built.append(
                OnlineDbSource(
                    client,
                    onlinedb_location(spec),
                    cache_dir=settings.cache_dir,
                    local=local,
                    catalogue=getattr(settings, "catalogue", None),
                    offline=offline,
                )
            )
        elif offline:
            continue  # every other source is the network
        elif spec.kind == "osu":
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
            built.append(
                OsuApiSource(
                    client,
                    spec.url,
                    (client_id, secret) if client_id and secret else None,
                    no_video=settings.no_video,
                    catalogue=catalogue if spec is lister else None,
                    query=getattr(settings, "catalogue_query", None) or "",
                    per_minute=getattr(settings, "api_per_minute", None) or API_PER_MINUTE,
                    set_infos=api_shaped,
                )
            )
        elif spec.kind in OSU_FILE_PATHS:
            built.append(
                MinoSource(
                    client,
                    spec.url,
                    name=spec.kind,
                    no_video=settings.no_video,
                    catalogue=catalogue if spec is lister else None,
                    query=getattr(settings, "catalogue_query", None) or "",
                    per_minute=getattr(settings, "mirror_per_minute", None) or MINO_PER_MINUTE,
                    set_infos=api_shaped,
                )
            )
        elif spec.kind in MIRRORS:
            built.append(MirrorSource(client, spec.url, name=spec.kind, no_video=settings.no_video))
        else:
            if spec.kind == "url" and settings.no_video and not _NOVIDEO.search(spec.url):
                log.info("%s has no {novideo:...} part; its archives may hold video", spec.url)
            built.append(SOURCE_KINDS[spec.kind](client, spec.url, no_video=settings.no_video))
    if ledger is not None:
        for source in built:
            source.share_allowance(ledger)
    return built
