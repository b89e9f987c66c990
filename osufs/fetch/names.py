"""A set's catalogue record (its folder name and time), discovering a set the catalogue does
not list from the sources' metadata, or from its archive's .osu files."""

from __future__ import annotations

import logging
import time

import trio

from osufs.errors import OsufsError
from osufs.fetch.context import Context
from osufs.fetch.listings import Listings
from osufs.fetch.members import Members
from osufs.listing import SetListing
from osufs.names import set_folder_name
from osufs.osufile import parse_osu
from osufs.sources import SourceMissing
from osufs.store import CatalogueRecord

log = logging.getLogger(__name__)


class Names:
    """Catalogue records, one discovery flight per unlisted set."""

    def __init__(self, context: Context, listings: Listings, members: Members) -> None:
        self._context = context
        self._listings = listings
        self._members = members

    async def resolve(self, set_id: int) -> CatalogueRecord:
        """The catalogue record of a set, discovering an unlisted one from the sources."""
        context = self._context
        record = context.store.catalogue_get(set_id)
        if record is not None:
            return record
        if context.offline or context.store.negative_until(set_id) > time.time():
            raise OsufsError.not_found(f"set {set_id} is not known")
        return await context.flights.run(("name", set_id), lambda: self._discover(set_id))

    async def _discover(self, set_id: int) -> CatalogueRecord:
        folder = None
        for source in self._context.planner.available():
            try:
                folder = await source.folder_name(set_id)
            except SourceMissing:
                continue
            except OsufsError as error:
                log.info("%s: no metadata for set %d: %s", source.label, set_id, error)
                continue
            if folder:
                break
        listing = await self._listings.listing(set_id)
        if not folder:
            folder = await self._folder_from_archive(set_id, listing)
        record = CatalogueRecord(folder, listing.entries[0].mtime_ns, "archive")
        self._context.store.catalogue_add([(set_id, record)])
        return self._context.store.catalogue_get(set_id) or record

    async def _folder_from_archive(self, set_id: int, listing: SetListing) -> str:
        for index in listing.children(0):
            entry = listing.entries[index]
            if entry.is_dir or not entry.name.lower().endswith(".osu"):
                continue
            try:
                path = await self._members.member_file(set_id, index)
            except OsufsError:
                continue  # a refused .osu (bad CRC, encrypted) must not make the set unreachable
            meta = parse_osu(await trio.Path(path).read_bytes())
            return set_folder_name(set_id, meta.artist, meta.title)
        return set_folder_name(set_id, "", "")  # never the bare id: that is the symlink
