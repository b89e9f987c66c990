"""The sets reached this session: asking sources for an archive's tail, the RemoteArchive
that then serves members by ranges, and, for a source that holds another copy of the
archive, which of its members are the listed files."""

from __future__ import annotations

import errno
import logging
import time
from typing import BinaryIO

import trio

from osufs import archive
from osufs.allowance import clock
from osufs.archive import ArchiveError, MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.fetch import ingest
from osufs.fetch.context import Context
from osufs.fetch.planner import DOWNLOAD
from osufs.flights import warn_once
from osufs.osufile import parse_osu, referenced_files
from osufs.sources import RemoteArchive, Source, SourceLimited, SourceMissing

log = logging.getLogger(__name__)

NEGATIVE_TTL = 3600.0
# Slack for the local header's name and extra field, read along with a member's data.
LOCAL_HEADER_SLACK = 1024
# The first request for a set asks for this much of the archive's end: enough for the end record
# and the central directory of a typical set (a few dozen members). A longer comment or
# directory costs one more request.
FIRST_TAIL = 16 << 10


class Remotes:
    """Per-session state of the sets reached at a source (one flight per set)."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._reached: dict[int, RemoteArchive] = {}
        # For a set whose source holds another copy of its archive than the one it was listed
        # from: listing entry -> that copy's member with the same path, size and CRC.
        self._foreign: dict[int, dict[int, ZipMember] | None] = {}

    def get(self, set_id: int) -> RemoteArchive | None:
        """The set's archive at the source that served it this session, if any."""
        return self._reached.get(set_id)

    def foreign(self, set_id: int) -> dict[int, ZipMember] | None:
        """Listing entry -> member of the reached source's other copy; None for the same copy."""
        return self._foreign.get(set_id)

    def forget(self, set_id: int) -> None:
        """Reach the set anew next time (a file host's signed link may have expired)."""
        self._reached.pop(set_id, None)

    async def connect(self, set_id: int) -> RemoteArchive | None:
        """Reach a set at the first source that has it (one flight per set); None when the
        source sent the whole archive, now ingested."""
        if set_id in self._reached:
            return self._reached[set_id]
        if self._context.store.negative_until(set_id) > time.time():
            raise OsufsError.not_found(f"set {set_id} does not exist at any source")
        return await self._context.flights.run(("set", set_id), lambda: self._reach(set_id))

    async def _reach(self, set_id: int) -> RemoteArchive | None:
        context = self._context
        planner = context.planner
        failures: list[OsufsError] = []
        for source in planner.sources:
            note = source.archive_warning(set_id)
            if note:
                warn_once(note)
        if not planner.archive_sources():
            raise OsufsError.io(
                f"set {set_id}: no source serves archives (the osu! API gives only names and "
                ".osu files); add a mirror or osu=URL"
            )
        try:
            return await planner.serve(
                planner.archive_sources(),
                DOWNLOAD,
                lambda source: self._open_at(source, set_id),
                what=f"set {set_id}",
                failures=failures,
            )
        except SourceLimited as error:
            raise self._give_up(set_id, failures, limited=error) from None
        except OsufsError:
            raise self._give_up(set_id, failures) from None

    async def _open_at(self, source: Source, set_id: int) -> RemoteArchive | None:
        """The set reached at `source`: its listing stored from the archive's tail (or the
        whole archive, when the source sends it whole, ingested: None)."""
        context = self._context
        spool = context.store.archive_spool()
        try:
            remote = await source.open_archive(set_id, FIRST_TAIL, spool)
            if remote is None:
                await trio.to_thread.run_sync(self._ingest, set_id, spool)
                return None
            spool.seek(0)
            tail = spool.read()  # at most FIRST_TAIL bytes, in memory
            stored = context.store.listing_get(set_id)
            if stored is None or stored.provisional:
                await self._store_listing_from_tail(remote, tail)
            else:
                members, _offset = await self._read_directory(remote, tail)
                where = f"set {set_id} at {source.label}"
                self._foreign[set_id] = ingest.match_members(stored, members, where)
            self._reached[set_id] = remote
            return remote
        except ArchiveError as error:
            raise OsufsError.io(f"{source.label}: set {set_id}: {error}") from None
        finally:
            spool.close()

    def _give_up(
        self, set_id: int, failures: list[OsufsError], limited: SourceLimited | None = None
    ) -> OsufsError:
        """The error for a set no source served: at once, saying when it could be, when the
        sources still to ask are resting past the read's deadline."""
        answers = [error for error in failures if not isinstance(error, SourceLimited)]
        for error in answers:
            log.info("set %d: %s", set_id, error)
        if limited is not None:
            # A resting source was not asked, so "missing" is not known yet.
            others = "; ".join(str(error) for error in answers)
            return OsufsError.io(
                f"set {set_id}: every source is rate limited; the first is free again at "
                f"{clock(limited.until)} ({limited}{'; ' + others if others else ''})"
            )
        if answers and all(isinstance(error, SourceMissing) for error in answers):
            self._context.store.negative_put(set_id, time.time() + NEGATIVE_TTL)
            return OsufsError.not_found(f"set {set_id} does not exist at any source")
        refused = [error for error in answers if error.errno == errno.EACCES]
        if refused:
            return refused[0]
        reasons = "; ".join(str(error) for error in answers or failures)
        return OsufsError.io(f"set {set_id}: no source could serve it ({reasons})")

    async def _read_directory(
        self, remote: RemoteArchive, tail: bytes
    ) -> tuple[list[ZipMember], int]:
        """The archive's members and where its central directory starts, from its tail (one
        more request when the end record or the directory lie further back)."""
        limits = self._context.limits
        try:
            offset, size, _count = archive.find_central_directory(tail, remote.size, limits)
        except ArchiveError:
            longest = min(archive.TAIL_BYTES, remote.size)
            if len(tail) >= longest:
                raise
            tail = await remote.read(remote.size - longest, longest - len(tail)) + tail
            offset, size, _count = archive.find_central_directory(tail, remote.size, limits)
        tail_start = remote.size - len(tail)
        if offset >= tail_start:
            directory = tail[offset - tail_start : offset - tail_start + size]
        else:
            directory = await remote.read(offset, size)
        members = archive.parse_central_directory(directory, limits)
        archive.check_offsets(members, offset)
        return members, offset

    async def _store_listing_from_tail(self, remote: RemoteArchive, tail: bytes) -> None:
        """Read the central directory and store the set's listing.

        When names need a legacy code page, the .osu files decide it; they are fetched for
        that and kept, since a reader will want them next.
        """
        store = self._context.store
        members, _offset = await self._read_directory(remote, tail)
        references: list[str] = []
        fetched: dict[int, bytes] = {}
        if ingest.needs_references(members):
            for number in ingest.osu_members(members):
                try:
                    fetched[number] = await self.read_member(remote, members[number])
                except MemberError:
                    continue  # refused when read; it cannot name files anyway
                references += referenced_files(parse_osu(fetched[number]))
        listing = await trio.to_thread.run_sync(
            ingest.settle_listing, store, remote.set_id, members, references
        )
        items = [
            (
                index,
                ingest.opener(fetched[entry.member]),
                ingest.stored(listing.members[entry.member]),
            )
            for index, entry in enumerate(listing.entries)
            if entry.member in fetched
        ]
        if items:
            await trio.to_thread.run_sync(
                ingest.write_members, store, remote.set_id, items, self._context.limits
            )

    async def read_compressed(self, remote: RemoteArchive, member: ZipMember) -> bytes:
        """The member's compressed bytes, usually in one range request."""
        guess = archive.LOCAL_HEADER_SIZE + len(member.raw_name) + LOCAL_HEADER_SLACK
        data = await remote.read(member.header_offset, guess + member.compressed_size)
        start = archive.data_offset(member, data[: archive.LOCAL_HEADER_SIZE])
        start -= member.header_offset
        end = start + member.compressed_size
        if end > len(data):
            data += await remote.read(member.header_offset + len(data), end - len(data))
        return data[start:end]

    async def read_member(self, remote: RemoteArchive, member: ZipMember) -> bytes:
        """The member's bytes, inflated and checked."""
        compressed = await self.read_compressed(remote, member)
        return ingest.inflate(ingest.reader(compressed), member, self._context.limits)

    async def download(self, remote: RemoteArchive) -> None:
        """Stream a whole archive to disk and ingest it."""
        with self._context.store.archive_spool() as spool:
            # Checked there: length, HTML, and the source's own hashes when it has them.
            await remote.source.download_whole(remote.set_id, remote.url, spool, remote.size)
            await trio.to_thread.run_sync(self._ingest, remote.set_id, spool)

    def _ingest(self, set_id: int, file: BinaryIO) -> None:
        """Ingest a whole archive (blocking)."""
        context = self._context

        def refused(index: int, error: MemberError) -> None:
            context.refused.note(set_id, index, error)

        ingest.ingest_archive(context.store, set_id, file, context.limits, refused)
