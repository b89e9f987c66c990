"""Mirrors speaking the Hexide API (as `osufs serve` does): set list, set info, raw .osu."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import httpx

from osufs.errors import OsufsError
from osufs.names import set_folder_name
from osufs.sources.base import (
    MAX_CATALOGUE_JSON,
    MAX_OSU_SIZE,
    MAX_SET_INFO_JSON,
    CatalogueEntry,
    SetInfoCache,
    Source,
    SourceMissing,
    _ArchiveDigest,
    _date_ns,
    _read_body,
)

log = logging.getLogger(__name__)


class HexideSource(Source):
    """A mirror speaking the Hexide API (as `osufs serve` does)."""

    kind = "hexide"

    def download_url(self, set_id: int) -> str:
        suffix = "download/novid" if self.no_video else "download"
        return f"{self.base.rstrip('/')}/beatmaps/{set_id}/{suffix}"

    async def probe(self) -> str:
        """The set info of set 1 (a 404 will do: it is the API's answer, not a web page's)."""
        try:
            _info, said = await self.probe_json(f"{self.base.rstrip('/')}/beatmaps/1")
        except SourceMissing:
            return ""
        return said

    async def catalogue(self) -> list[CatalogueEntry]:
        items = await self.json(f"{self.base.rstrip('/')}/beatmaps/", MAX_CATALOGUE_JSON)
        if not isinstance(items, list):
            raise OsufsError.io(f"{self.label}: the set list is not a list")
        entries = []
        skipped = 0
        for item in items:
            try:
                set_id = int(item.get("ranked_id") or item["id"])
                named = str(item.get("title") or "")
            except (AttributeError, KeyError, TypeError, ValueError):
                skipped += 1
                continue
            if set_id < 1 or not named:
                continue  # no name to show yet; reading the set by its id names it
            artist, _, title = named.partition(" - ")
            entries.append(
                CatalogueEntry(set_id, set_folder_name(set_id, artist, title), _date_ns(item))
            )
        if skipped:
            log.warning("%s: %d malformed entries in the set list ignored", self.label, skipped)
        return entries

    def __init__(self, client: httpx.AsyncClient, base: str, *, no_video: bool = False) -> None:
        super().__init__(client, base, no_video=no_video)
        self._set_infos = SetInfoCache()

    async def set_info(self, set_id: int) -> dict[str, Any]:
        """`/beatmaps/<id>`, kept for the few sets a scan is working through."""
        url = f"{self.base.rstrip('/')}/beatmaps/{set_id}"
        return await self._set_infos.get(
            set_id, lambda: self.json(url, MAX_SET_INFO_JSON), self.label
        )

    async def folder_name(self, set_id: int) -> str | None:
        full = str((await self.set_info(set_id)).get("title") or "")
        if not full:
            return None  # the archive's .osu files will name it
        artist, _, title = full.partition(" - ")
        return set_folder_name(set_id, artist, title)

    async def catalogue_entry(self, set_id: int) -> CatalogueEntry | None:
        folder = await self.folder_name(set_id)
        if folder is None:
            return None
        return CatalogueEntry(set_id, folder, _date_ns(await self.set_info(set_id)))

    async def difficulty_bytes(self, set_id: int, path: str) -> bytes | None:
        """`/metadata/<id>/raw`, checked against the md5 the set info lists."""
        wanted = path.casefold()
        versions = (await self.set_info(set_id)).get("versions")
        for version in versions if isinstance(versions, list) else []:
            try:
                # `path` is osufs serve's extension; plain Hexide names files without `.osu`.
                listed = str(version.get("path") or f"{version.get('name', '')}.osu")
                record = int(version["id"])
                size = min(int(version.get("size") or MAX_OSU_SIZE), MAX_OSU_SIZE)
            except (AttributeError, KeyError, TypeError, ValueError):
                continue  # a malformed record names nothing we can use
            if listed.casefold() != wanted:
                continue
            url = f"{self.base.rstrip('/')}/metadata/{record}/raw"
            async with self.stream("GET", url) as response:
                data = await _read_body(response, size)
            expected = str(version.get("hash_md5") or "")
            if expected and hashlib.md5(data).hexdigest() != expected.lower():
                log.warning("%s: set %d: %s does not match its md5", self.label, set_id, path)
                return None
            return data
        return None

    async def check_whole(self, set_id: int, digest: _ArchiveDigest) -> None:
        """A whole download must match the md5 and sha1 the set info gives for the .osz."""
        if self.no_video:
            return  # the set info hashes the full archive, not the one without video
        try:
            info = await self.set_info(set_id)
        except OsufsError as error:
            log.info(
                "%s: set %d: no set info to check the archive by: %s", self.label, set_id, error
            )
            return
        for field_name, hashed in (("hash_md5", digest.md5), ("hash_sha1", digest.sha1)):
            expected = str(info.get(field_name) or "").lower()
            if expected and expected != hashed.hexdigest():
                self._set_infos.forget(set_id)  # the set may have changed: ask again next time
                raise OsufsError.io(
                    f"{self.label}: set {set_id}: the archive does not match the {field_name} "
                    "of the set info"
                )
