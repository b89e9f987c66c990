"""A member's bytes in the store: fetched the cheapest way a source offers, one flight per
member, and checked before they are served."""

from __future__ import annotations

import errno
import functools
import logging
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import trio

from osufs import archive
from osufs.archive import MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.fetch import ingest
from osufs.fetch.context import Context, in_background
from osufs.fetch.listings import Listings
from osufs.fetch.planner import DOWNLOAD, OSU, free_at
from osufs.fetch.remote import Remotes
from osufs.fetch.streaming import MemberStream, Streams
from osufs.listing import SetListing
from osufs.sources import RemoteArchive, Source
from osufs.store import PendingBlob

log = logging.getLogger(__name__)

# Members larger than this are not held in memory for a ranged read: the whole archive is
# streamed to disk instead (they are most of its bytes anyway).
RANGED_MEMBER_LIMIT = 8 << 20
# Members at least this large (compressed) are streamed when opened cold: reads return as
# their own bytes arrive (osufs/fetch/streaming.py). Smaller ones come in one range, whole.
STREAM_MIN = 1 << 20


class Members:
    """Member files of every set, from the store or the sources."""

    def __init__(self, context: Context, listings: Listings, remotes: Remotes) -> None:
        self._context = context
        self._listings = listings
        self._remotes = remotes
        # Told of a streamed member refused after some of its bytes were served (fs.py drops
        # them from the kernel's page cache, which keeps them in the no-open mode).
        self.on_stream_refused: Callable[[int, int], None] = lambda set_id, index: None
        self.streams = Streams(
            context.store,
            context.nursery,
            commit=self._commit_streamed,
            refuse=self._refuse_streamed,
            timeout=context.fetch_timeout,
            limits=context.limits,
        )

    def _refuse_streamed(self, set_id: int, index: int, error: MemberError) -> None:
        self._context.refused.note(set_id, index, error)
        self.on_stream_refused(set_id, index)

    async def member_file(self, set_id: int, index: int) -> Path:
        """The local file holding one member's bytes, fetched if need be."""
        context = self._context
        path = context.store.blob_path(set_id, index)
        if path is not None:
            return path
        bad = context.refused.get(set_id, index)
        if bad is not None:
            raise bad
        path = await self._link_pinned(set_id, index)
        if path is not None:
            return path
        if context.offline:
            raise OsufsError.io(f"set {set_id}: member {index} is not cached (offline)")
        listing = await self._listings.listing(set_id)
        member = listing.member(index)
        if listing.pin(index) is not None:
            fetch = functools.partial(self._materialise_pinned, set_id, listing, index)
        elif member is not None:
            try:
                archive.check_member(member, context.limits)
            except MemberError as error:
                raise context.refused.note(set_id, index, error) from None
            fetch = functools.partial(self._materialise, set_id, listing, index, member)
        else:
            raise OsufsError(errno.EISDIR, f"set {set_id}: entry {index} is a directory")
        await context.flights.run(("member", set_id, index), fetch)
        context.shared.offer(set_id)
        path = context.store.blob_path(set_id, index)
        if path is None:
            raise context.refused.get(set_id, index) or OsufsError.io(
                f"set {set_id}: member {index} unavailable"
            )
        return path

    async def _link_pinned(self, set_id: int, index: int) -> Path | None:
        """A pinned .osu whose bytes are stored by md5 (imported; its blob evicted), indexed
        as the set's again without a request."""
        store = self._context.store
        listing = store.listing_get(set_id)
        pin = listing.pin(index) if listing is not None else None
        digest = store.osu_digest(pin.md5) if pin is not None else None
        if digest is None:
            return None
        await trio.to_thread.run_sync(store.link_blobs, set_id, [(index, digest)])
        return store.blob_path(set_id, index)

    async def open_stream(self, set_id: int, index: int) -> MemberStream | None:
        """A cold member's stream, started if need be; None when the member is small, pinned,
        or its set's source does not serve ranges (then it is fetched whole)."""
        context = self._context
        if context.offline:
            return None
        stream = self.streams.current(set_id, index)
        if stream is not None:
            return stream
        listing = await self._listings.listing(set_id)
        member = listing.member(index)
        if listing.pin(index) is not None or member is None:
            return None
        if max(member.compressed_size, member.size) < STREAM_MIN:
            return None
        bad = context.refused.get(set_id, index)
        if bad is not None:
            raise bad
        if await context.shared.holds(set_id, member):
            return None  # whole from the shared tier: no allowance spent
        remote = await self._remotes.connect(set_id)
        if remote is None:
            return None  # the source sent the whole archive, now ingested
        foreign = self._remotes.foreign(set_id)
        if foreign is not None:
            if index not in foreign:
                raise OsufsError.io(str(ingest.absent(listing, index)))
            member = foreign[index]
        stream = self.streams.current(set_id, index)  # another open may have started it
        if stream is None:
            try:
                stream = self.streams.start(set_id, index, member, remote)
            except MemberError as error:
                raise context.refused.note(set_id, index, error) from None
        return stream

    async def _commit_streamed(self, blob: PendingBlob) -> None:
        await trio.to_thread.run_sync(ingest.commit_blobs, self._context.store, [blob])
        self._context.shared.offer(blob.set_id)

    async def download_whole(self, remote: RemoteArchive) -> None:
        """The whole archive, streamed and ingested (one flight per set)."""
        await self._context.flights.run(
            ("archive", remote.set_id), lambda: self._remotes.download(remote)
        )
        self._context.shared.offer(remote.set_id)

    def missing(self, set_id: int, listing: SetListing, only_osu: bool) -> list[int]:
        """Entries of the set (or only its .osu files) not in the store and not refused."""
        cached = self._context.store.cached_entries(set_id)
        return [
            index
            for index, entry in enumerate(listing.entries)
            if not entry.is_dir
            and (not only_osu or ingest.is_osu(entry.name))
            and index not in cached
            and self._context.refused.get(set_id, index) is None
        ]

    def cached_state(self, set_id: int, index: int) -> str:
        """`yes`, `no`, (for a folder) `partly`, or `provisional` (a set listed before its
        archive): whether reading it needs the network."""
        store = self._context.store
        listing = store.listing_get(set_id)
        if listing is None:
            return "no"
        if index == 0 and listing.provisional:
            return "provisional"  # only its .osu files are listed: the archive is not known yet
        if not listing.entries[index].is_dir:
            return "yes" if store.blob_path(set_id, index) is not None else "no"
        prefix = "" if index == 0 else listing.path(index) + "/"
        files = [
            i
            for i, entry in enumerate(listing.entries)
            if not entry.is_dir and listing.path(i).startswith(prefix)
        ]
        cached = store.cached_entries(set_id).intersection(files)
        return "yes" if len(cached) == len(files) else "partly" if cached else "no"

    async def _materialise(
        self, set_id: int, listing: SetListing, index: int, member: ZipMember
    ) -> None:
        """Fetch one member by the cheapest way a source offers.

        A set already reached by ranges in this session serves its members compressed, in one
        request each, while its source is free. Otherwise a .osu comes from the metadata tier
        when a source has one, which never touches the archive's host (the official site counts
        every archive it hands out, a mirror's allowance may be spent). Before either, the
        shared tier, which spends no allowance.
        """
        if await self._context.shared.member(set_id, index, member):
            return
        reached = self._remotes.get(set_id)
        busy = reached is None or free_at(
            reached.source, DOWNLOAD, background=in_background()
        ) > time.time()
        if (
            busy
            and ingest.is_osu(listing.entries[index].name)
            and await self._from_metadata_tier(set_id, listing.path(index), index, member)
        ):
            return
        remote = await self._remotes.connect(set_id)
        if remote is None:
            return  # the source sent the whole archive, now ingested
        try:
            await self._read_member(remote, index, member)
        except OsufsError as error:
            if error.errno == errno.EACCES or self._remotes.get(set_id) is not remote:
                raise
            # A file host's signed link may have expired: ask the source again, once.
            log.info("set %d: %s; asking %s again", set_id, error, remote.source.label)
            self._remotes.forget(set_id)
            remote = await self._remotes.connect(set_id)
            if remote is not None:
                await self._read_member(remote, index, member)

    async def _materialise_pinned(self, set_id: int, listing: SetListing, index: int) -> None:
        """A pinned .osu again (evicted): its `/osu/` bytes by beatmap id, which must still
        have its md5; else the archive's copy of the same bytes, when the archive has one."""
        pin = listing.pin(index)
        assert pin is not None
        entry = listing.entries[index]
        planner = self._context.planner
        sources = [s for s in planner.sources if s.serves_difficulties]
        background = in_background()

        async def fetch(source: Source) -> bytes:
            return await source.beatmap_file(pin.beatmap_id, pin.md5, background=background)

        try:
            what = f"set {set_id}: {entry.name}"
            data = await planner.serve(sources, OSU, fetch, what=what)
        except OsufsError as error:
            member = listing.member(index)
            if member is None:
                raise OsufsError(
                    error.errno,
                    f"set {set_id}: {entry.name}: its listed copy (beatmap {pin.beatmap_id}) "
                    f"is not to be had now ({error}), and the archive has no copy of the same "
                    "bytes",
                ) from None
            log.info("set %d: %s: %s", set_id, entry.name, error)
            await self._materialise(set_id, listing, index, member)
            return
        await self._write(set_id, index, data, ingest.loose_member(data))

    async def _read_member(self, remote: RemoteArchive, index: int, member: ZipMember) -> None:
        foreign = self._remotes.foreign(remote.set_id)
        if foreign is not None:
            # The source holds another copy of the set: read the same file at its own place.
            if index not in foreign:
                listing = self._context.store.listing_get(remote.set_id)
                raise OsufsError.io(str(ingest.absent(listing, index)) if listing else "no listing")
            member = foreign[index]
        if member.compressed_size <= RANGED_MEMBER_LIMIT:
            await self._fetch_member(remote, index, member)
        else:
            await self.download_whole(remote)

    async def _fetch_member(self, remote: RemoteArchive, index: int, member: ZipMember) -> None:
        try:
            data = await self._remotes.read_compressed(remote, member)
        except MemberError as error:
            self._context.refused.note(remote.set_id, index, error)
            return
        await self._write(remote.set_id, index, data, member)

    async def _write(self, set_id: int, index: int, data: bytes, member: ZipMember) -> None:
        """Store one member's bytes as the member stores them; a refusal is noted."""
        context = self._context

        def refused(index: int, error: MemberError) -> None:
            context.refused.note(set_id, index, error)

        items = [(index, ingest.opener(data), member)]
        await trio.to_thread.run_sync(
            functools.partial(
                ingest.write_members, context.store, set_id, items, context.limits, refused=refused
            )
        )

    async def _from_metadata_tier(
        self, set_id: int, path: str, index: int, member: ZipMember
    ) -> bool:
        """Serve a .osu from a source's difficulty endpoint, if its bytes are the archive's."""
        for source in self._context.planner.available():
            try:
                data = await source.difficulty_bytes(set_id, path)
            except OsufsError as error:
                log.info("%s: set %d: %s: %s", source.label, set_id, path, error)
                continue
            if data is None:
                continue
            if len(data) != member.size or zlib.crc32(data) != member.crc32:
                log.warning(
                    "%s: set %d: %s differs from the archive's copy; using the archive",
                    source.label,
                    set_id,
                    path,
                )
                return False
            await self._write(set_id, index, data, ingest.stored(member))
            return True
        return False
