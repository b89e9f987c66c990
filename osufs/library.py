"""Fetch coordination: turns sources and the store into set listings and member files.

Each fetch runs once per key in the library's own nursery; callers wait on its event, so a
caller that gives up never cancels a download others are waiting for. A set is reached by
asking a source for the archive's tail: a source that honours ranges then serves members one by
one; one that does not sends the whole archive, which is ingested at once. When no unmetered
archive source is available, a set is first listed provisionally from its difficulties' .osu
files (`/osu/<id>`), and its archive is fetched only for a name that listing lacks.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import trio

from osufs import archive
from osufs.archive import ArchiveError, Limits, MemberError, ZipMember
from osufs.catalogue import Catalogue
from osufs.errors import OsufsError
from osufs.fetch.streaming import Streams
from osufs.flights import Flights, warn_once
from osufs.listing import (
    Pin,
    PinnedFile,
    SetListing,
    build_listing,
    complete_listing,
    provisional_listing,
)
from osufs.names import normalise_path, set_folder_name
from osufs.osufile import difficulty_filename, parse_osu, referenced_files
from osufs.sources import (
    Difficulty,
    RemoteArchive,
    SetDifficulties,
    Source,
    SourceLimited,
    SourceMismatch,
    SourceMissing,
)
from osufs.store import CatalogueRecord, HashingWriter, PendingBlob, Store, fsync_file

log = logging.getLogger(__name__)


NEGATIVE_TTL = 3600.0
# Members larger than this are not held in memory for a ranged read: the whole archive is
# streamed to disk instead (they are most of its bytes anyway).
RANGED_MEMBER_LIMIT = 8 << 20
# Members at least this large (compressed) are streamed when opened cold: reads return as
# their own bytes arrive (osufs/fetch/streaming.py). Smaller ones come in one range, whole.
STREAM_MIN = 1 << 20
# Slack for the local header's name and extra field, read along with a member's data.
LOCAL_HEADER_SLACK = 1024
# The first request for a set asks for this much of the archive's end: enough for the end record
# and the central directory of a typical set (a few dozen members). A longer comment or
# directory costs one more request.
FIRST_TAIL = 16 << 10
# Sets whose .osu files are fetched ahead of a reader scanning the library in order.
READ_AHEAD_SETS = 8
# Sets listed ahead of a reader listing set folders in order (a glob, `find`, a file manager),
# and how many of those listings are asked for at once.
LIST_AHEAD_SETS = 48
LIST_AHEAD_AT_ONCE = 16
# A member refused (bad CRC, cut-off body) is tried again after this many seconds.
BAD_MEMBER_RETRY = 600.0
# .osu files fetched at once (`/osu/<id>`) for provisional listings, across sets.
DIFFICULTY_FETCHES = 16
# .osu bytes kept between attempts at a provisional listing, so one cut short (by the pace of
# `/osu/` or the deadline) goes on where it stopped; the oldest go first past this many.
KEPT_DIFFICULTIES = 2048


class Library:
    """Listings and member files of every set, from the cache or the sources."""

    def __init__(
        self,
        store: Store,
        sources: list[Source],
        nursery: trio.Nursery,
        *,
        limits: Limits,
        fetch_timeout: float = 120.0,
        offline: bool = False,
        read_ahead: int = READ_AHEAD_SETS,
        catalogue_file: Path | None = None,
    ) -> None:
        self.store = store
        self.sources = sources
        self.limits = limits
        self.offline = offline
        self._flights = Flights(nursery, fetch_timeout)
        self.read_ahead = read_ahead
        self._remotes: dict[int, RemoteArchive] = {}
        # For a set whose source holds another copy of its archive than the one it was listed
        # from: listing entry -> that copy's member with the same path, size and CRC.
        self._foreign: dict[int, dict[int, ZipMember] | None] = {}
        self._bad_members: dict[tuple[int, int], tuple[OsufsError, float]] = {}
        self._nursery = nursery
        self._warm_pool = trio.CapacityLimiter(max(1, read_ahead))
        self._warmed: set[int] = set()  # sets read ahead (or being read ahead)
        self._scanned: set[int] = set()  # sets whose .osu a reader opened
        self._open_files: dict[int, int] = {}  # descriptor -> set id
        self._difficulty_pool = trio.CapacityLimiter(DIFFICULTY_FETCHES)
        self._list_pool = trio.CapacityLimiter(LIST_AHEAD_AT_ONCE)
        self._listed_ahead: set[int] = set()  # sets listed ahead (or being listed)
        self._list_window: set[int] = set()  # sets whose readdir moved the window on
        self._last_listed: int | None = None  # the last set whose readdir moved it
        # (beatmap id, md5) -> checked bytes of a listing cut short, for its next attempt; the
        # md5 is in the key so a map updated in between is fetched anew.
        self._kept_difficulties: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self.catalogue = Catalogue(
            store, sources, nursery, offline=offline, catalogue_file=catalogue_file
        )
        self._streams = Streams(
            store,
            nursery,
            commit=self._commit_blob,
            refuse=self._note_bad_member,
            timeout=fetch_timeout,
            limits=limits,
        )

    # the root

    def catalogue_page(self, after: int, limit: int) -> list[tuple[int, CatalogueRecord]]:
        """Up to limit listed sets with ids above after, in id order (see Catalogue.page)."""
        return self.catalogue.page(after, limit)

    def catalogue_stamp(self) -> tuple[int, object]:
        """Equal for as long as catalogue_page answers the same (see Catalogue.stamp)."""
        return self.catalogue.stamp()

    async def resume_catalogue(self) -> None:
        await self.catalogue.resume()

    async def refresh_catalogue(self) -> None:
        await self.catalogue.refresh()

    async def resolve(self, set_id: int) -> CatalogueRecord:
        """The catalogue record of a set, discovering an unlisted one from the sources."""
        record = self.store.catalogue_get(set_id)
        if record is not None:
            return record
        if self.offline or self.store.negative_until(set_id) > time.time():
            raise OsufsError.not_found(f"set {set_id} is not known")
        return await self._flights.run(("name", set_id), lambda: self._discover(set_id))

    async def _discover(self, set_id: int) -> CatalogueRecord:
        folder = None
        for source in self._available_sources():
            try:
                folder = await source.folder_name(set_id)
            except SourceMissing:
                continue
            except OsufsError as error:
                log.info("%s: no metadata for set %d: %s", source.label, set_id, error)
                continue
            if folder:
                break
        listing = await self.listing(set_id)
        if not folder:
            folder = await self._folder_from_archive(set_id, listing)
        record = CatalogueRecord(folder, listing.entries[0].mtime_ns, "archive")
        self.store.catalogue_add([(set_id, record)])
        return self.store.catalogue_get(set_id) or record

    async def _folder_from_archive(self, set_id: int, listing: SetListing) -> str:
        for index in listing.children(0):
            entry = listing.entries[index]
            if entry.is_dir or not entry.name.lower().endswith(".osu"):
                continue
            try:
                path = await self.member_file(set_id, index)
            except OsufsError:
                continue  # a refused .osu (bad CRC, encrypted) must not make the set unreachable
            meta = parse_osu(await trio.Path(path).read_bytes())
            return set_folder_name(set_id, meta.artist, meta.title)
        return set_folder_name(set_id, "", "")  # never the bare id: that is the symlink

    # set listings

    async def listing(self, set_id: int, *, speculative: bool = False) -> SetListing:
        """A set's listing: stored, or provisional when no unmetered archive source is
        available and metadata can list it, or from the archive's directory. Speculative work
        (reading ahead) never spends a metered source's allowance."""
        found = self.store.listing_get(set_id)
        if found is not None:
            return found
        free = next((s for s in self.sources if s.free_difficulties), None)
        if free is not None:
            listed = await self._flights.run(
                ("provisional", set_id),
                lambda: self._list_provisionally(free, set_id, background=speculative),
            )
            if listed is not None:
                return listed
        if self.offline:
            raise OsufsError.io(f"set {set_id} is not cached (offline)")
        source = self._difficulty_source()
        if source is not None:
            listed = await self._flights.run(
                ("provisional", set_id),
                lambda: self._list_provisionally(source, set_id, background=speculative),
            )
            if listed is not None:
                return listed
        if speculative and not self._unmetered_available():
            raise OsufsError.io(f"set {set_id}: not read ahead (only a metered source has it)")
        await self._connect(set_id)
        found = self.store.listing_get(set_id)
        if found is None:
            raise OsufsError.io(f"set {set_id}: no listing")
        return found

    async def read_dir(self, set_id: int) -> SetListing:
        """A set's listing for a reader listing its folder: the next sets in catalogue order
        are listed in the background meanwhile, so a glob or `find` over the root moves at the
        network's pace rather than one round trip at a time. Only a cold set, or one listed
        ahead, moves the window on: reading what was cached before never reaches for the
        network."""
        if self.store.listing_get(set_id) is None or set_id in self._listed_ahead:
            self._list_ahead(set_id)
        return await self.listing(set_id)

    def _list_ahead(self, set_id: int) -> None:
        """List the sets a reader will list next: those after this one in catalogue order,
        or those before it when the reader goes backwards (bash expands `*/*.osu` from the
        last folder to the first); both ways from the first cold folder."""
        if not self.read_ahead or self.offline or set_id in self._list_window:
            return
        self._list_window.add(set_id)
        last, self._last_listed = self._last_listed, set_id
        upcoming: list[int] = []
        if last is None or set_id > last:
            upcoming += [n for n, _record in self.catalogue_page(set_id, LIST_AHEAD_SETS)]
        if last is None or set_id < last:
            upcoming += self.store.catalogue_ids_before(set_id, LIST_AHEAD_SETS)
        for next_id in upcoming:
            if next_id in self._listed_ahead:
                continue
            self._listed_ahead.add(next_id)
            if self.store.listing_get(next_id) is None:
                self._nursery.start_soon(self._list_one_ahead, next_id)

    async def _list_one_ahead(self, set_id: int) -> None:
        async with self._list_pool:
            try:
                # Speculative: never a metered source's allowance, readers' requests first.
                await self.listing(set_id, speculative=True)
            except OsufsError as error:
                log.debug("listing set %d ahead stopped: %s", set_id, error)
                self._listed_ahead.discard(set_id)

    async def lookup(self, set_id: int, parent: int, name: str) -> tuple[SetListing, int]:
        """The listing and entry of `name` in directory `parent` of a set. A name a
        provisional listing lacks (a map's audio, its background) fetches the archive's
        directory first, from any archive source (EIO offline); ENOENT when the set has no
        such name."""
        listing = await self.listing(set_id)
        child = listing.child(parent, name)
        if child is None and listing.provisional and self.offline:
            raise OsufsError.io(f"set {set_id}: its archive is not cached (offline)")
        if child is None and listing.provisional and self._archive_sources():
            listing = await self._complete(set_id)
            child = listing.child(parent, name)
        if child is None:
            raise OsufsError.not_found(f"{name!r} is not in set {set_id}")
        return listing, child

    async def _complete(self, set_id: int) -> SetListing:
        """The set's listing completed by its archive's directory."""
        await self._connect(set_id)
        found = self.store.listing_get(set_id)
        if found is None or found.provisional:
            raise OsufsError.io(f"set {set_id}: its archive did not complete the listing")
        return found

    def _unmetered_available(self) -> bool:
        return any(not s.metered for s in self._available_sources() if s.serves_archives)

    def _difficulty_source(self) -> Source | None:
        """The source that lists sets by their difficulties, when no unmetered archive source
        is available; None when an archive's directory should list them (or nothing can)."""
        if self._unmetered_available():
            return None
        return next(
            (s for s in self.sources if s.serves_difficulties and not s.free_difficulties), None
        )

    def _other_ways(self, free: Source) -> bool:
        """Whether a set can be listed some other way than by `free`'s .osu files at hand."""
        return any(
            s is not free and (s.serves_archives or s.serves_difficulties) for s in self.sources
        )

    async def _list_provisionally(
        self, source: Source, set_id: int, *, background: bool
    ) -> SetListing | None:
        """List a set by its difficulties alone and store their bytes: every .osu is fetched
        and checked by md5 first, so no size is guessed. None when metadata cannot list it
        (the archive is then asked); EIO, storing nothing, when some .osu is not to be had
        right now (paced, failing), so a later look lists it whole."""
        try:
            info = await source.set_difficulties(set_id, background=background)
        except OsufsError as error:
            # Unknown to the API, or no usable client (said once): only the archive lists it.
            if isinstance(error, SourceMissing) or error.errno == errno.EACCES:
                return None
            raise
        if info is None or not info.difficulties or info.updated_ns <= 0:
            log.info("set %d: %s cannot list it without its archive", set_id, source.label)
            return None
        outcomes: dict[int, bytes | OsufsError] = {}
        async with trio.open_nursery() as nursery:
            for difficulty in info.difficulties:
                nursery.start_soon(self._fetch_difficulty, source, difficulty, outcomes, background)
        if source.free_difficulties and self._other_ways(source):
            at_hand = [isinstance(outcomes[d.beatmap_id], bytes) for d in info.difficulties]
            if not all(at_hand):
                # Listing what is at hand would pin a set without those: another way lists it.
                log.debug("set %d: %d .osu files not at hand", set_id, at_hand.count(False))
                return None
        files: list[PinnedFile] = []
        contents: dict[int, bytes] = {}
        passing: list[str] = []
        for difficulty in info.difficulties:
            outcome = outcomes[difficulty.beatmap_id]
            if isinstance(outcome, bytes):
                files.append(_pinned_file(info, difficulty, outcome))
                contents[difficulty.beatmap_id] = outcome
            elif isinstance(outcome, SourceMissing | SourceMismatch):
                log.warning(
                    "set %d: difficulty %d [%s] is not listed until the archive comes: %s",
                    set_id,
                    difficulty.beatmap_id,
                    difficulty.version,
                    outcome,
                )
            else:
                passing.append(str(outcome))
        if passing:
            raise OsufsError.io(
                f"set {set_id}: {len(passing)} of {len(info.difficulties)} .osu files cannot be "
                f"fetched now ({passing[0]}); the set is listed once they can"
            )
        if not files:
            return None
        listing = provisional_listing(files, info.updated_ns)
        return await self._store_provisional(set_id, listing, contents)

    async def _fetch_difficulty(
        self,
        source: Source,
        difficulty: Difficulty,
        outcomes: dict[int, bytes | OsufsError],
        background: bool,
    ) -> None:
        key = (difficulty.beatmap_id, difficulty.md5)
        kept = self._kept_difficulties.get(key)
        if kept is None:
            kept = self.store.osu_bytes(difficulty.md5)  # imported, or fetched before
        if kept is not None:
            outcomes[difficulty.beatmap_id] = kept
            return
        try:
            async with self._difficulty_pool:
                data = await source.beatmap_file(
                    difficulty.beatmap_id, difficulty.md5, background=background
                )
        except OsufsError as error:
            outcomes[difficulty.beatmap_id] = error
            return
        outcomes[difficulty.beatmap_id] = data
        self._kept_difficulties[key] = data
        while len(self._kept_difficulties) > KEPT_DIFFICULTIES:
            self._kept_difficulties.popitem(last=False)

    async def _store_provisional(
        self, set_id: int, listing: SetListing, contents: dict[int, bytes]
    ) -> SetListing:
        """Store a provisional listing and its .osu bytes as its members; the listing that
        stands (another mount's, if it was first: then ours is dropped)."""
        standing = await trio.to_thread.run_sync(self._write_provisional, set_id, listing, contents)
        if standing is listing:
            for pin in listing.pins:
                self._kept_difficulties.pop((pin.beatmap_id, pin.md5), None)
            log.info("set %d: listed before its archive: %d .osu files", set_id, len(listing.pins))
        return standing

    def _write_provisional(
        self, set_id: int, listing: SetListing, contents: dict[int, bytes]
    ) -> SetListing:
        """Write the .osu files, store the listing and index them, in one thread call (a cold
        scan lists thousands of sets this way)."""
        blobs = []
        links = []
        try:
            for index, pin in enumerate(listing.pins, 1):
                digest = self.store.osu_digest(pin.md5)
                if digest is not None:
                    links.append((index, digest))  # stored by md5 already: no copy
                    continue
                data = contents[pin.beatmap_id]
                blobs.append(self._write_member(set_id, index, _reader(data), _loose_member(data)))
            standing = self.store.listing_put(set_id, listing)
        except BaseException:
            for blob in blobs:
                blob.temp_path.unlink(missing_ok=True)
            raise
        if standing is not listing:
            for blob in blobs:
                blob.temp_path.unlink(missing_ok=True)
            return standing
        self.store.commit_blobs(blobs)
        self.store.link_blobs(set_id, links)
        return listing

    async def _connect(self, set_id: int) -> RemoteArchive | None:
        """Reach a set at the first source that has it (one flight per set)."""
        if set_id in self._remotes:
            return self._remotes[set_id]
        if self.store.negative_until(set_id) > time.time():
            raise OsufsError.not_found(f"set {set_id} does not exist at any source")
        return await self._flights.run(("set", set_id), lambda: self._reach(set_id))

    async def _reach(self, set_id: int) -> RemoteArchive | None:
        failures: list[OsufsError] = []
        for source in self.sources:
            note = source.archive_warning(set_id)
            if note:
                warn_once(note)
        if not self._archive_sources():
            raise OsufsError.io(
                f"set {set_id}: no source serves archives (the osu! API gives only names and "
                ".osu files); add a mirror or osu=URL"
            )
        available = [source for source in self._available_sources() if source.serves_archives]
        for source in available:
            spool = self.store.archive_spool()
            try:
                remote = await source.open_archive(set_id, FIRST_TAIL, spool)
                if remote is None:
                    await trio.to_thread.run_sync(self._ingest_archive, set_id, spool)
                    return None
                spool.seek(0)
                tail = spool.read()  # at most FIRST_TAIL bytes, in memory
                stored = self.store.listing_get(set_id)
                if stored is None or stored.provisional:
                    await self._store_listing_from_tail(remote, tail)
                else:
                    members, _offset = await self._read_directory(remote, tail)
                    where = f"set {set_id} at {source.label}"
                    self._foreign[set_id] = _match_members(stored, members, where)
                self._remotes[set_id] = remote
                return remote
            except SourceLimited as error:
                source.limited_until = error.until
                log.info("set %d: %s; trying the next source", set_id, error)
                failures.append(error)
            except ArchiveError as error:
                failures.append(OsufsError.io(f"{source.label}: set {set_id}: {error}"))
            except OsufsError as error:
                failures.append(error)
            finally:
                spool.close()
        raise self._give_up(set_id, failures, skipped=len(self._archive_sources()) - len(available))

    def _give_up(self, set_id: int, failures: list[OsufsError], skipped: int = 0) -> OsufsError:
        """The error for a set no source served; fails at once, never waits for a limit."""
        if not failures:
            soonest = min((s.limited_until for s in self._archive_sources()), default=0.0)
            when = time.strftime("%H:%M:%S", time.localtime(soonest))
            return OsufsError.io(
                f"set {set_id}: every source is rate limited; the first is free again at {when}"
            )
        for error in failures:
            log.info("set %d: %s", set_id, error)
        if skipped:
            # A rate-limited source was not asked, so "missing" is not known yet.
            now = time.time()
            soonest = min(
                (s.limited_until for s in self._archive_sources() if s.limited_until > now),
                default=now,
            )
            when = time.strftime("%H:%M:%S", time.localtime(soonest))
            failures = [*failures, OsufsError.io(f"the others are rate limited until {when}")]
        elif all(isinstance(error, SourceMissing) for error in failures):
            self.store.negative_put(set_id, time.time() + NEGATIVE_TTL)
            return OsufsError.not_found(f"set {set_id} does not exist at any source")
        refused = [error for error in failures if error.errno == errno.EACCES]
        if refused:
            return refused[0]
        reasons = "; ".join(str(error) for error in failures)
        return OsufsError.io(f"set {set_id}: no source could serve it ({reasons})")

    def _available_sources(self) -> list[Source]:
        now = time.time()
        return [source for source in self.sources if source.limited_until <= now]

    def _archive_sources(self) -> list[Source]:
        return [source for source in self.sources if source.serves_archives]

    async def _read_directory(
        self, remote: RemoteArchive, tail: bytes
    ) -> tuple[list[ZipMember], int]:
        """The archive's members and where its central directory starts, from its tail (one
        more request when the end record or the directory lie further back)."""
        try:
            offset, size, _count = archive.find_central_directory(tail, remote.size, self.limits)
        except ArchiveError:
            longest = min(archive.TAIL_BYTES, remote.size)
            if len(tail) >= longest:
                raise
            tail = await remote.read(remote.size - longest, longest - len(tail)) + tail
            offset, size, _count = archive.find_central_directory(tail, remote.size, self.limits)
        tail_start = remote.size - len(tail)
        if offset >= tail_start:
            directory = tail[offset - tail_start : offset - tail_start + size]
        else:
            directory = await remote.read(offset, size)
        members = archive.parse_central_directory(directory, self.limits)
        archive.check_offsets(members, offset)
        return members, offset

    async def _store_listing_from_tail(self, remote: RemoteArchive, tail: bytes) -> None:
        """Read the central directory and store the set's listing.

        When names need a legacy code page, the .osu files decide it; they are fetched for
        that and kept, since a reader will want them next.
        """
        members, _offset = await self._read_directory(remote, tail)
        references: list[str] = []
        fetched: dict[int, bytes] = {}
        if _needs_references(members):
            for number in _osu_members(members):
                try:
                    fetched[number] = await self._read_remote_member(remote, members[number])
                except MemberError:
                    continue  # refused when read; it cannot name files anyway
                references += referenced_files(parse_osu(fetched[number]))
        listing = await trio.to_thread.run_sync(
            self._settle_listing, remote.set_id, members, references
        )
        blobs = [
            await trio.to_thread.run_sync(
                self._write_member,
                remote.set_id,
                index,
                _reader(fetched[entry.member]),
                _stored(listing.members[entry.member]),
            )
            for index, entry in enumerate(listing.entries)
            if entry.member in fetched
        ]
        if blobs:
            await trio.to_thread.run_sync(self.store.commit_blobs, blobs)

    def _settle_listing(
        self, set_id: int, members: list[ZipMember], references: list[str]
    ) -> SetListing:
        """Store the archive's listing, or complete a provisional one with it; returns the
        one that stands. Safe from worker threads."""
        current = self.store.listing_get_uncached(set_id)
        if current is None:
            return self.store.listing_put(set_id, build_listing(members, references, log))
        if not current.provisional:
            return current
        where = f"set {set_id}: "
        completed = complete_listing(current, members, references, log, where)
        log.info("set %d: its archive completed the listing", set_id)
        return self.store.listing_complete(set_id, completed)

    def _ingest_archive(self, set_id: int, file: BinaryIO) -> None:
        """Check a whole downloaded archive and move every member into the store (blocking)."""
        members = archive.read_members(file, self.limits)
        listing = self.store.listing_get_uncached(set_id)
        if listing is None or listing.provisional:
            references: list[str] = []
            if _needs_references(members):
                for number in _osu_members(members):
                    member = members[number]
                    try:
                        data = _inflate(_local_reader(file, member), member, self.limits)
                    except MemberError:
                        continue
                    references += referenced_files(parse_osu(data))
            listing = self._settle_listing(set_id, members, references)
        foreign = _match_members(listing, members, f"set {set_id}: the downloaded archive")
        cached = self.store.cached_entries(set_id)
        pending = []
        for index, entry in enumerate(listing.entries):
            # Pinned files the archive lacks have only their /osu/ copy.
            if entry.member < 0 or index in cached:
                continue
            member = listing.members[entry.member] if foreign is None else foreign.get(index)
            if member is None:
                self._note_bad_member(set_id, index, _absent(listing, index))
                continue
            try:
                pending.append(self._extract_local(set_id, index, file, member))
            except MemberError as error:
                self._note_bad_member(set_id, index, error)
        self.store.commit_blobs(pending)

    def _extract_local(
        self, set_id: int, index: int, file: BinaryIO, member: ZipMember
    ) -> PendingBlob:
        archive.check_member(member, self.limits)
        return self._write_member(set_id, index, _local_reader(file, member), member)

    def _write_member(
        self, set_id: int, index: int, read: Callable[[int], bytes], member: ZipMember
    ) -> PendingBlob:
        path, sink = self.store.new_temp()
        try:
            with sink:
                writer = HashingWriter(sink)
                archive.extract(read, member, writer, self.limits)
                fsync_file(sink)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return PendingBlob(set_id, index, path, writer.hash.digest(), writer.size)

    def _note_bad_member(self, set_id: int, index: int, error: MemberError) -> None:
        log.warning("set %d: member %d refused: %s", set_id, index, error)
        until = time.monotonic() + BAD_MEMBER_RETRY
        self._bad_members[(set_id, index)] = (OsufsError(error.errno, str(error)), until)

    def _bad_member(self, set_id: int, index: int) -> OsufsError | None:
        """A member refused recently; after a while it is tried again (a read may have been
        garbled on the way)."""
        found = self._bad_members.get((set_id, index))
        if found is None:
            return None
        if found[1] <= time.monotonic():
            del self._bad_members[(set_id, index)]
            return None
        return found[0]

    # member files

    def _note_scan(self, set_id: int, index: int) -> None:
        """A reader opened a member: a .osu moves the read-ahead window on to the next sets."""
        if not self.read_ahead or set_id in self._scanned:
            return
        listing = self.store.listing_get(set_id)
        if listing is None or not _is_osu(listing.entries[index].name):
            return
        # Only where ranges work (reading ahead must never download whole archives) and the
        # source has no allowance a guess could waste; or for a provisional set, whose
        # neighbours cost only metadata and .osu requests to list.
        remote = self._remotes.get(set_id)
        if (remote is not None and not remote.source.metered) or listing.provisional:
            # Each set a scan enters moves the window on, so it never drains.
            self._scanned.add(set_id)
            self._start_read_ahead(set_id)

    async def open_file(self, set_id: int, index: int) -> int:
        """A read-only descriptor of a member's content file, its set counted as open (so
        eviction spares it) until close_file. A file evicted by another mount between the index
        lookup and the open is fetched again."""
        usage = self.store.usage
        usage.opened(set_id)
        try:
            path = self.store.blob_path(set_id, index)
            usage.access(set_id, hit=path is not None)
            if path is None:
                handle = await self._open_streaming(set_id, index)
                if handle is not None:
                    self._open_files[handle] = set_id
                    self._note_scan(set_id, index)
                    return handle
                path = self.store.blob_path(set_id, index)  # the whole archive may have come
            for _attempt in range(3):
                path = path or await self.member_file(set_id, index)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    await trio.to_thread.run_sync(self.store.drop_missing, set_id, index, path)
                    path = None
                    continue
                self._open_files[fd] = set_id
                self._note_scan(set_id, index)
                return fd
            raise OsufsError.io(f"set {set_id}: member {index}: its cached file keeps vanishing")
        except BaseException:
            usage.closed(set_id)
            raise

    def close_file(self, fd: int) -> None:
        set_id = self._open_files.pop(fd, None)
        if not self._streams.close(fd):
            os.close(fd)
        if set_id is not None:
            self.store.usage.closed(set_id)

    async def read(self, fd: int, offset: int, size: int) -> bytes:
        """Bytes of an open member: from its content file, or as its stream brings them."""
        stream = self._streams.of(fd)
        if stream is None:
            return os.pread(fd, size, offset)
        return await stream.read(offset, size)

    def streaming(self, fd: int) -> bool:
        """Whether the descriptor reads a member still arriving (and so not yet checked)."""
        return self._streams.of(fd) is not None

    async def _open_streaming(self, set_id: int, index: int) -> int | None:
        """A handle on a cold member's stream, started if need be; None when the member is
        small, pinned, or its set's source does not serve ranges (then it is fetched whole)."""
        if self.offline:
            return None
        stream = self._streams.current(set_id, index)
        if stream is None:
            listing = await self.listing(set_id)
            member = listing.member(index)
            if listing.pin(index) is not None or member is None:
                return None
            if max(member.compressed_size, member.size) < STREAM_MIN:
                return None
            bad = self._bad_member(set_id, index)
            if bad is not None:
                raise bad
            remote = await self._connect(set_id)
            if remote is None:
                return None  # the source sent the whole archive, now ingested
            foreign = self._foreign.get(set_id)
            if foreign is not None:
                if index not in foreign:
                    raise OsufsError.io(str(_absent(listing, index)))
                member = foreign[index]
            stream = self._streams.current(set_id, index)  # another open may have started it
            if stream is None:
                try:
                    stream = self._streams.start(set_id, index, member, remote)
                except MemberError as error:
                    self._note_bad_member(set_id, index, error)
                    raise self._bad_members[(set_id, index)][0] from None
        return self._streams.open(stream)

    async def _commit_blob(self, blob: PendingBlob) -> None:
        await trio.to_thread.run_sync(self.store.commit_blobs, [blob])

    async def member_file(self, set_id: int, index: int) -> Path:
        """The local file holding one member's bytes, fetched if need be."""
        path = self.store.blob_path(set_id, index)
        if path is not None:
            return path
        bad = self._bad_member(set_id, index)
        if bad is not None:
            raise bad
        path = await self._link_pinned(set_id, index)
        if path is not None:
            return path
        if self.offline:
            raise OsufsError.io(f"set {set_id}: member {index} is not cached (offline)")
        listing = await self.listing(set_id)
        member = listing.member(index)
        if listing.pin(index) is not None:
            fetch = functools.partial(self._materialise_pinned, set_id, listing, index)
        elif member is not None:
            try:
                archive.check_member(member, self.limits)
            except MemberError as error:
                self._note_bad_member(set_id, index, error)
                raise self._bad_members[(set_id, index)][0] from None
            fetch = functools.partial(self._materialise, set_id, listing, index, member)
        else:
            raise OsufsError(errno.EISDIR, f"set {set_id}: entry {index} is a directory")
        await self._flights.run(("member", set_id, index), fetch)
        path = self.store.blob_path(set_id, index)
        if path is None:
            raise self._bad_member(set_id, index) or OsufsError.io(
                f"set {set_id}: member {index} unavailable"
            )
        return path

    async def _link_pinned(self, set_id: int, index: int) -> Path | None:
        """A pinned .osu whose bytes are stored by md5 (imported; its blob evicted), indexed
        as the set's again without a request."""
        listing = self.store.listing_get(set_id)
        pin = listing.pin(index) if listing is not None else None
        digest = self.store.osu_digest(pin.md5) if pin is not None else None
        if digest is None:
            return None
        await trio.to_thread.run_sync(self.store.link_blobs, set_id, [(index, digest)])
        return self.store.blob_path(set_id, index)

    async def _materialise(
        self, set_id: int, listing: SetListing, index: int, member: ZipMember
    ) -> None:
        """Fetch one member by the cheapest way a source offers.

        A set already reached by ranges in this session serves its members compressed, in one
        request each. Otherwise a .osu comes from the metadata tier when a source has one, which
        never touches the archive's host (the official site counts every archive it hands out).
        """
        if (
            set_id not in self._remotes
            and _is_osu(listing.entries[index].name)
            and await self._from_metadata_tier(set_id, listing.path(index), index, member)
        ):
            return
        remote = await self._connect(set_id)
        if remote is None:
            return  # the source sent the whole archive, now ingested
        try:
            await self._read_member(remote, index, member)
        except OsufsError as error:
            if error.errno == errno.EACCES or self._remotes.get(set_id) is not remote:
                raise
            # A file host's signed link may have expired: ask the source again, once.
            log.info("set %d: %s; asking %s again", set_id, error, remote.source.label)
            del self._remotes[set_id]
            remote = await self._connect(set_id)
            if remote is not None:
                await self._read_member(remote, index, member)

    async def _materialise_pinned(self, set_id: int, listing: SetListing, index: int) -> None:
        """A pinned .osu again (evicted): its `/osu/` bytes by beatmap id, which must still
        have its md5; else the archive's copy of the same bytes, when the archive has one."""
        pin = listing.pin(index)
        assert pin is not None
        entry = listing.entries[index]
        for source in self._available_sources():
            if not source.serves_difficulties:
                continue
            try:
                data = await source.beatmap_file(pin.beatmap_id, pin.md5)
            except OsufsError as error:
                log.info("set %d: %s: %s", set_id, entry.name, error)
                continue
            blob = await trio.to_thread.run_sync(
                self._write_member, set_id, index, _reader(data), _loose_member(data)
            )
            await trio.to_thread.run_sync(self.store.commit_blobs, [blob])
            return
        member = listing.member(index)
        if member is None:
            raise OsufsError.io(
                f"set {set_id}: {entry.name}: its listed copy (beatmap {pin.beatmap_id}) is not "
                "to be had now, and the archive has no copy of the same bytes"
            )
        await self._materialise(set_id, listing, index, member)

    async def _read_member(self, remote: RemoteArchive, index: int, member: ZipMember) -> None:
        foreign = self._foreign.get(remote.set_id)
        if foreign is not None:
            # The source holds another copy of the set: read the same file at its own place.
            if index not in foreign:
                listing = self.store.listing_get(remote.set_id)
                raise OsufsError.io(str(_absent(listing, index)) if listing else "no listing")
            member = foreign[index]
        if member.compressed_size <= RANGED_MEMBER_LIMIT:
            await self._fetch_member(remote, index, member)
        else:
            await self._flights.run(("archive", remote.set_id), lambda: self._download(remote))

    async def _from_metadata_tier(
        self, set_id: int, path: str, index: int, member: ZipMember
    ) -> bool:
        """Serve a .osu from a source's difficulty endpoint, if its bytes are the archive's."""
        for source in self._available_sources():
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
            blob = await trio.to_thread.run_sync(
                self._write_member, set_id, index, _reader(data), _stored(member)
            )
            await trio.to_thread.run_sync(self.store.commit_blobs, [blob])
            return True
        return False

    async def prefetch(self, set_id: int, *, only_osu: bool) -> bool:
        """Fill the cache with a set (or only its .osu files); False if it was all there."""
        listing = self.store.listing_get(set_id)
        whole = listing is not None and (only_osu or not listing.provisional)
        if whole and not self._missing(set_id, listing, only_osu):
            return False
        await self.resolve(set_id)
        listing = await self.listing(set_id)
        if listing.provisional and not only_osu:
            listing = await self._complete(set_id)
        missing = self._missing(set_id, listing, only_osu)
        if not missing:
            return True
        remote = await self._connect(set_id)
        if remote is None:
            return True  # the whole archive came and was ingested
        if only_osu:
            for index in missing:
                await self.member_file(set_id, index)
        else:
            await self._flights.run(("archive", set_id), lambda: self._download(remote))
        return True

    def _missing(self, set_id: int, listing: SetListing, only_osu: bool) -> list[int]:
        cached = self.store.cached_entries(set_id)
        return [
            index
            for index, entry in enumerate(listing.entries)
            if not entry.is_dir
            and (not only_osu or _is_osu(entry.name))
            and index not in cached
            and self._bad_member(set_id, index) is None
        ]

    def cached_state(self, set_id: int, index: int) -> str:
        """`yes`, `no`, (for a folder) `partly`, or `provisional` (a set listed before its
        archive): whether reading it needs the network."""
        listing = self.store.listing_get(set_id)
        if listing is None:
            return "no"
        if index == 0 and listing.provisional:
            return "provisional"  # only its .osu files are listed: the archive is not known yet
        if not listing.entries[index].is_dir:
            return "yes" if self.store.blob_path(set_id, index) is not None else "no"
        prefix = "" if index == 0 else listing.path(index) + "/"
        files = [
            i
            for i, entry in enumerate(listing.entries)
            if not entry.is_dir and listing.path(i).startswith(prefix)
        ]
        cached = self.store.cached_entries(set_id).intersection(files)
        return "yes" if len(cached) == len(files) else "partly" if cached else "no"

    def _start_read_ahead(self, set_id: int) -> None:
        """Fetch the .osu files of this set and the next few, as a scan will want them."""
        upcoming = [set_id] + [n for n, _ in self.catalogue_page(set_id, self.read_ahead)]
        for next_id in upcoming:
            if next_id not in self._warmed:
                self._warmed.add(next_id)
                self._nursery.start_soon(self._warm, next_id)

    async def _warm(self, set_id: int) -> None:
        async with self._warm_pool:
            try:
                listing = await self.listing(set_id, speculative=True)
            except OsufsError as error:
                log.debug("read-ahead of set %d stopped: %s", set_id, error)
                return
            cached = self.store.cached_entries(set_id)
            wanted = [
                index
                for index in listing.children(0)
                if _is_osu(listing.entries[index].name) and index not in cached
            ]
            remote = self._remotes.get(set_id)
            if remote is None and not self._unmetered_available():
                return  # any member fetched now could spend a metered source's allowance
            if remote is not None:
                # Pinned files the archive lacks have only their /osu/ copy: fetched below.
                in_archive = [index for index in wanted if listing.member(index) is not None]
                await self._fetch_members_together(remote, listing, in_archive)
                wanted = [index for index in wanted if listing.member(index) is None]
            async with trio.open_nursery() as nursery:  # a set's .osu files in parallel
                for index in wanted:
                    nursery.start_soon(self._warm_member, set_id, index)

    async def _fetch_members_together(
        self, remote: RemoteArchive, listing: SetListing, indexes: list[int]
    ) -> None:
        """Fetch several members in as few ranged requests as their places in the archive
        allow, then cut, store and index them in one thread call and one commit (a cold scan's
        round trips, thread hand-offs and fsyncs)."""
        foreign = self._foreign.get(remote.set_id)
        members = {}
        for index in indexes:
            member = listing.members[listing.entries[index].member]
            member = member if foreign is None else foreign.get(index)
            if member is not None and member.compressed_size <= RANGED_MEMBER_LIMIT:
                members[index] = member
        spans: list[tuple[int, bytes, list[int]]] = []
        try:
            for start, end, group in _spans(members):
                spans.append((start, await remote.read(start, end - start), group))
        except OsufsError as error:
            log.debug("read-ahead of set %d: %s", remote.set_id, error)
        await trio.to_thread.run_sync(self._store_spans, remote.set_id, members, spans)

    def _store_spans(
        self, set_id: int, members: dict[int, ZipMember], spans: list[tuple[int, bytes, list[int]]]
    ) -> None:
        """Cut each member out of the span that holds it, store and index them (blocking)."""
        blobs = []
        for start, data, group in spans:
            for index in group:
                blob = self._blob_from_span(set_id, index, members[index], data, start)
                if blob is not None:
                    blobs.append(blob)
        self.store.commit_blobs(blobs)

    def _blob_from_span(
        self, set_id: int, index: int, member: ZipMember, data: bytes, start: int
    ) -> PendingBlob | None:
        """One member cut out of a span of the archive; None if the span missed part of it
        (a long local extra field: an ordinary read will fetch it)."""
        header = member.header_offset - start
        try:
            archive.check_member(member, self.limits)
            first = archive.data_offset(member, data[header : header + archive.LOCAL_HEADER_SIZE])
            compressed = data[first - start : first - start + member.compressed_size]
            if len(compressed) < member.compressed_size:
                return None
            return self._write_member(set_id, index, _reader(compressed), member)
        except MemberError as error:
            self._note_bad_member(set_id, index, error)
            return None

    async def _warm_member(self, set_id: int, index: int) -> None:
        try:
            await self.member_file(set_id, index)
        except OsufsError as error:
            log.debug("read-ahead of set %d, member %d: %s", set_id, index, error)

    async def _fetch_member(self, remote: RemoteArchive, index: int, member: ZipMember) -> None:
        try:
            data = await self._read_remote_compressed(remote, member)
            blob = await trio.to_thread.run_sync(
                self._write_member, remote.set_id, index, _reader(data), member
            )
        except MemberError as error:
            self._note_bad_member(remote.set_id, index, error)
            return
        await trio.to_thread.run_sync(self.store.commit_blobs, [blob])

    async def _read_remote_compressed(self, remote: RemoteArchive, member: ZipMember) -> bytes:
        """The member's compressed bytes, usually in one range request."""
        guess = archive.LOCAL_HEADER_SIZE + len(member.raw_name) + LOCAL_HEADER_SLACK
        data = await remote.read(member.header_offset, guess + member.compressed_size)
        start = archive.data_offset(member, data[: archive.LOCAL_HEADER_SIZE])
        start -= member.header_offset
        end = start + member.compressed_size
        if end > len(data):
            data += await remote.read(member.header_offset + len(data), end - len(data))
        return data[start:end]

    async def _read_remote_member(self, remote: RemoteArchive, member: ZipMember) -> bytes:
        compressed = await self._read_remote_compressed(remote, member)
        return _inflate(_reader(compressed), member, self.limits)

    async def _download(self, remote: RemoteArchive) -> None:
        """Stream a whole archive to disk and ingest it."""
        with self.store.archive_spool() as spool:
            # Checked there: length, HTML, and the source's own hashes when it has them.
            await remote.source.download_whole(remote.set_id, remote.url, spool, remote.size)
            await trio.to_thread.run_sync(self._ingest_archive, remote.set_id, spool)


def _match_members(
    listing: SetListing, members: list[ZipMember], where: str
) -> dict[int, ZipMember] | None:
    """None when `members` are the archive the listing was built from; otherwise, for each
    listed file, the member of this other copy with the same path, size and CRC (mirrors
    repack archives; a no-video copy lacks the video)."""
    if members == listing.members:
        return None
    other = build_listing(members, (), None)
    by_path = {
        other.path(i): other.members[e.member] for i, e in enumerate(other.entries) if not e.is_dir
    }
    matched: dict[int, ZipMember] = {}
    files = 0
    for index in range(len(listing.entries)):
        mine = listing.member(index)
        if mine is None:
            continue  # a directory, or a pinned file served only by its /osu/ copy
        files += 1
        theirs = by_path.get(listing.path(index))
        if theirs is not None and (theirs.size, theirs.crc32) == (mine.size, mine.crc32):
            matched[index] = theirs
    log.info("%s is another copy: %d of its %d listed files match", where, len(matched), files)
    return matched


def _absent(listing: SetListing, index: int) -> MemberError:
    return MemberError(f"{listing.path(index)} is not in this source's copy of the archive")


# Members closer than this in the archive are fetched in one request, gap included.
SPAN_GAP = 64 << 10


def _spans(members: dict[int, ZipMember]) -> list[tuple[int, int, list[int]]]:
    """(start, end, entry indexes) of archive ranges covering the members, neighbours merged."""
    spans: list[tuple[int, int, list[int]]] = []
    for index, member in sorted(members.items(), key=lambda item: item[1].header_offset):
        start = member.header_offset
        end = (
            start
            + archive.LOCAL_HEADER_SIZE
            + len(member.raw_name)
            + LOCAL_HEADER_SLACK
            + member.compressed_size
        )
        if spans and start - spans[-1][1] <= SPAN_GAP and end - spans[-1][0] <= RANGED_MEMBER_LIMIT:
            first, last, group = spans[-1]
            spans[-1] = (first, max(last, end), [*group, index])
        else:
            spans.append((start, end, [index]))
    return spans


def _reader(data: bytes) -> Callable[[int], bytes]:
    view = memoryview(data)
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position : position + n])
        position += len(chunk)
        return chunk

    return read


def _local_reader(file: BinaryIO, member: ZipMember) -> Callable[[int], bytes]:
    """A reader of one member's compressed bytes in a local archive file."""
    file.seek(member.header_offset)
    file.seek(archive.data_offset(member, file.read(archive.LOCAL_HEADER_SIZE)))
    remaining = member.compressed_size

    def read(n: int) -> bytes:
        nonlocal remaining
        data = file.read(min(n, remaining))
        remaining -= len(data)
        return data

    return read


def _inflate(read: Callable[[int], bytes], member: ZipMember, limits: Limits) -> bytes:
    archive.check_member(member, limits)
    out = bytearray()
    archive.extract(read, member, out.extend, limits)
    return bytes(out)


def _is_osu(name: str) -> bool:
    return name.lower().endswith(".osu")


def _pinned_file(info: SetDifficulties, difficulty: Difficulty, data: bytes) -> PinnedFile:
    """A difficulty's file as osu! names it: `Artist - Title (Creator) [Version].osu` from the
    file's own metadata (the set's where the file has none), cleaned as osu! does."""
    path = normalise_path(difficulty.filename) if difficulty.filename else None
    if path is None or "/" in path:
        meta = parse_osu(data)
        name = difficulty_filename(
            meta.artist or info.artist,
            meta.title or info.title,
            meta.creator or info.creator,
            meta.version or difficulty.version,
        )
        path = normalise_path(name)
        assert path is not None  # " - " and the brackets always remain
    return PinnedFile(path, len(data), Pin(difficulty.beatmap_id, difficulty.md5, zlib.crc32(data)))


def _loose_member(data: bytes) -> ZipMember:
    """A stored member for bytes that come from no archive (a pinned .osu), so they are
    written and checked like any member."""
    return ZipMember(b"", True, 0, 0, zlib.crc32(data), len(data), len(data), 0, 0, False)


def _stored(member: ZipMember) -> ZipMember:
    """The member as if stored: for bytes that arrive already inflated."""
    return dataclasses.replace(member, method=0, compressed_size=member.size)


def _needs_references(members: list[ZipMember]) -> bool:
    """Whether some name needs a legacy code page chosen by what the .osu files mention."""
    for member in members:
        if member.utf8:
            continue
        try:
            member.raw_name.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def _osu_members(members: list[ZipMember]) -> list[int]:
    """Indexes of the .osu members worth reading to choose a code page (bounded work)."""
    return [
        number
        for number, m in enumerate(members)
        # The compressed size too: it is read into memory before inflating can refuse it.
        if m.raw_name.lower().endswith(b".osu") and max(m.size, m.compressed_size) <= 4 << 20
    ][:64]
