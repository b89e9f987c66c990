"""The shared tier seen from the fetch modules: a set's listing and members from the bucket
before any source is asked, and what this mount fetched and checked offered back to it.

A listing is built from the bucket's copy of the archive's directory by the code that builds
one from a source's (ingest.settle_listing), after the same checks; when its names need the
.osu files to choose a code page, those come from the bucket too, or the set is left to the
sources. A member from the bucket is checked there (hash, CRC, size) and again by the write
protocol. Uploads run in the background, a few sets at a time, after the set's fetches settle.
Called from the trio thread only.
"""

from __future__ import annotations

import logging

import trio

from osufs.archive import ArchiveError, MemberError, ZipMember
from osufs.fetch import ingest
from osufs.fetch.context import Context
from osufs.listing import SetListing
from osufs.osufile import parse_osu, referenced_files
from osufs.tier import directory
from osufs.tier.shared import SharedTier

log = logging.getLogger(__name__)

# A set's uploads start this long after its last fetch: members read together go together.
OFFER_DELAY = 1.0
UPLOADS_AT_ONCE = 2
# At unmount, uploads still to do get this long to finish (the bucket's own wait bounds each
# request); what is left is offered again by the next mount that fetches the set.
DRAIN = 20.0


class Shared:
    """The library's view of the shared tier; every call is a no-op without one."""

    def __init__(self, context: Context, tier: SharedTier | None) -> None:
        self._context = context
        self.tier = tier
        self._uploads = trio.CapacityLimiter(UPLOADS_AT_ONCE)
        self._pending: set[int] = set()  # sets with an upload scheduled or running
        self._again: set[int] = set()  # sets fetched into while their upload ran
        self._hurry = trio.Event()  # set at unmount: pending uploads start at once
        self._idle = trio.Event()  # set while no upload is pending
        self._idle.set()

    def usable(self) -> bool:
        return self.tier is not None and not self._context.offline and self.tier.available()

    async def listing(self, set_id: int) -> SetListing | None:
        """The set's listing from the bucket, stored as one from a source is; None when the
        bucket has no usable directory of it (or is down)."""
        if not self.usable():
            return None
        return await self._context.flights.run(
            ("shared listing", set_id), lambda: self._listing(set_id)
        )

    async def _listing(self, set_id: int) -> SetListing | None:
        assert self.tier is not None
        context = self._context
        for key, data in await self.tier.directories(set_id):
            try:
                members = directory.decode(data, context.limits)
            except ArchiveError as error:
                self.tier.refuse(key, f"set {set_id}: {error}")
                continue
            fetched: dict[int, bytes] = {}
            references: list[str] = []
            if ingest.needs_references(members):
                for number in ingest.osu_members(members):
                    data = await self._member_bytes(set_id, members[number])
                    if data is None:
                        return None  # the names would hang on what is missing: ask a source
                    fetched[number] = data
                    references += referenced_files(parse_osu(data))
            listing = await trio.to_thread.run_sync(
                ingest.settle_listing, context.store, set_id, members, references
            )
            items = [
                (index, ingest.opener(fetched[e.member]), ingest.stored(listing.members[e.member]))
                for index, e in enumerate(listing.entries)
                if e.member in fetched
            ]
            if items:
                await trio.to_thread.run_sync(
                    ingest.write_members, context.store, set_id, items, context.limits
                )
            log.info("set %d: listed from the shared tier", set_id)
            return listing
        return None

    async def holds(self, set_id: int, member: ZipMember) -> bool:
        """Whether the bucket lists the member (without reading it)."""
        if not self.usable():
            return False
        assert self.tier is not None
        return await self.tier.has_member(set_id, member.crc32, member.size)

    async def member(self, set_id: int, index: int, member: ZipMember) -> bool:
        """Store one member from the bucket; False when it has no good copy (or is down)."""
        if not self.usable():
            return False
        assert self.tier is not None
        context = self._context
        with context.store.archive_spool() as spool:
            if not await self.tier.member(set_id, member.crc32, member.size, spool.write):
                return False
            spool.seek(0)
            items = [(index, lambda: spool.read, ingest.stored(member))]
            try:
                await trio.to_thread.run_sync(
                    ingest.write_members, context.store, set_id, items, context.limits
                )
            except MemberError as error:  # checked in the tier already: a bug if it happens
                log.warning("set %d: member %d from the shared tier: %s", set_id, index, error)
                return False
        return True

    async def _member_bytes(self, set_id: int, member: ZipMember) -> bytes | None:
        assert self.tier is not None
        out = bytearray()
        if not await self.tier.member(set_id, member.crc32, member.size, out.extend):
            return None
        return bytes(out)

    # offering back

    def offer(self, set_id: int) -> None:
        """Upload, soon, whatever the store holds of the set and the bucket lacks."""
        if self.tier is None or self._context.offline:
            return
        if set_id in self._pending:
            self._again.add(set_id)
            return
        self._pending.add(set_id)
        self._idle = trio.Event()
        self._context.nursery.start_soon(self._upload_soon, set_id)

    async def drain(self) -> None:
        """Finish the uploads still to do, within DRAIN seconds (at unmount)."""
        self._hurry.set()
        with trio.move_on_after(DRAIN) as scope:
            await self._idle.wait()
        if scope.cancelled_caught:
            log.info("shared tier: %d sets left to upload at the end", len(self._pending))

    async def _upload_soon(self, set_id: int) -> None:
        try:
            while True:
                with trio.move_on_after(OFFER_DELAY):
                    await self._hurry.wait()
                self._again.discard(set_id)
                async with self._uploads:
                    await self._upload(set_id)
                if set_id not in self._again:
                    return
        finally:
            self._pending.discard(set_id)
            if not self._pending:
                self._idle.set()

    async def _upload(self, set_id: int) -> None:
        """The set's .osu files, then its directory, then the rest: a reader that finds the
        directory usually finds what its names need."""
        assert self.tier is not None
        store = self._context.store
        listing = store.listing_get(set_id)
        if listing is None or listing.provisional or not self.tier.available():
            return
        cached = sorted(
            store.cached_entries(set_id),
            key=lambda index: not ingest.is_osu(listing.entries[index].name),
        )
        directory_sent = False
        for index in cached:
            entry = listing.entries[index]
            if not directory_sent and not ingest.is_osu(entry.name):
                directory_sent = await self._upload_directory(set_id, listing)
            path = store.blob_path(set_id, index)
            if entry.member < 0 or path is None:
                continue  # a pinned .osu the archive lacks, or evicted meanwhile
            member = listing.members[entry.member]
            sent = await self.tier.put_member(set_id, member.crc32, member.size, path.name, path)
            if not sent and not self.tier.available():
                return
        if not directory_sent:
            await self._upload_directory(set_id, listing)

    async def _upload_directory(self, set_id: int, listing: SetListing) -> bool:
        assert self.tier is not None
        try:
            data = directory.encode(listing.members)
        except directory.DirectoryTooLarge as error:
            log.info("set %d: not shared: %s", set_id, error)
            return True
        return await self.tier.put_directory(set_id, data)

