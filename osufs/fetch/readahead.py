"""Read-ahead: when a reader opens a set's .osu, the .osu files of that set and the next few
are fetched, as a scan of the library will want them next; when a reader lists a cold set's
folder, the next sets' listings are fetched, as a glob or `find` will want them next."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable

import trio

from osufs import archive
from osufs.archive import MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.fetch import ingest
from osufs.fetch.context import Context, background
from osufs.fetch.listings import Listings
from osufs.fetch.members import RANGED_MEMBER_LIMIT, Members
from osufs.fetch.remote import LOCAL_HEADER_SLACK, Remotes
from osufs.listing import SetListing
from osufs.sources import RemoteArchive
from osufs.store import CatalogueRecord

log = logging.getLogger(__name__)

# Sets whose .osu files are fetched ahead of a reader scanning the library in order.
READ_AHEAD_SETS = 8
# Sets listed ahead of a reader listing set folders in order (a glob, `find`, a file manager),
# and how many of those listings are asked for at once.
LIST_AHEAD_SETS = 48
LIST_AHEAD_AT_ONCE = 16
# Members closer than this in the archive are fetched in one request, gap included.
SPAN_GAP = 64 << 10

NextSets = Callable[[int, int], list[tuple[int, CatalogueRecord]]]
Span = tuple[int, bytes, list[int]]  # archive offset, its bytes, the entries they hold


class ReadAhead:
    """Background fetches of the .osu files a scan will read next; never a reader's failure."""

    def __init__(
        self,
        context: Context,
        listings: Listings,
        members: Members,
        remotes: Remotes,
        next_sets: NextSets,
        read_ahead: int = READ_AHEAD_SETS,
    ) -> None:
        self._context = context
        self._listings = listings
        self._members = members
        self._remotes = remotes
        self._next_sets = next_sets
        self.read_ahead = read_ahead
        self._pool = trio.CapacityLimiter(max(1, read_ahead))
        self._warmed: set[int] = set()  # sets read ahead (or being read ahead)
        # Sets whose .osu files a read-ahead is fetching now (the reader's own set from the
        # moment its read-ahead is started): a reader of one of them waits for it.
        self._busy: dict[int, trio.Event] = {}
        self._scanned: set[int] = set()  # sets whose .osu a reader opened
        self._list_pool = trio.CapacityLimiter(LIST_AHEAD_AT_ONCE)
        self._listed_ahead: set[int] = set()  # sets listed ahead (or being listed)
        self._list_window: set[int] = set()  # sets whose readdir moved the window on
        self._last_listed: int | None = None  # the last set whose readdir moved it

    def note_listing(self, set_id: int) -> None:
        """A reader lists a set's folder: the next sets in catalogue order are listed in the
        background meanwhile, so a glob or `find` over the root moves at the network's pace
        rather than one round trip at a time. Only a cold set, or one listed ahead, moves the
        window on: reading what was cached before never reaches for the network."""
        if self._context.store.listing_get(set_id) is None or set_id in self._listed_ahead:
            self._list_ahead(set_id)

    def _list_ahead(self, set_id: int) -> None:
        """List the sets a reader will list next: those after this one in catalogue order,
        or those before it when the reader goes backwards (bash expands `*/*.osu` from the
        last folder to the first); both ways from the first cold folder."""
        context = self._context
        if not self.read_ahead or context.offline or set_id in self._list_window:
            return
        self._list_window.add(set_id)
        last, self._last_listed = self._last_listed, set_id
        upcoming: list[int] = []
        if last is None or set_id > last:
            upcoming += [n for n, _record in self._next_sets(set_id, LIST_AHEAD_SETS)]
        if last is None or set_id < last:
            upcoming += context.store.catalogue_ids_before(set_id, LIST_AHEAD_SETS)
        for next_id in upcoming:
            if next_id in self._listed_ahead:
                continue
            self._listed_ahead.add(next_id)
            if context.store.listing_get(next_id) is None:
                context.nursery.start_soon(self._list_one_ahead, next_id)

    async def _list_one_ahead(self, set_id: int) -> None:
        async with self._list_pool:
            try:
                # Background: never a metered source's archives, readers' requests first.
                with background(patient=False):
                    await self._listings.listing(set_id)
            except OsufsError as error:
                log.debug("listing set %d ahead stopped: %s", set_id, error)
                self._listed_ahead.discard(set_id)

    async def before_fetch(self, set_id: int, index: int) -> None:
        """A reader is about to fetch a cold member: the read-ahead window moves on first, so
        the next sets come alongside this one rather than after it, and a .osu that a
        read-ahead is fetching is waited for, not asked for a second time."""
        self.note_open(set_id, index)
        busy = self._busy.get(set_id)
        listing = self._context.store.listing_get(set_id)
        if busy is not None and listing is not None and ingest.is_osu(listing.entries[index].name):
            with trio.move_on_after(self._context.fetch_timeout):
                await busy.wait()

    def note_open(self, set_id: int, index: int) -> None:
        """A reader opened a member: a .osu moves the read-ahead window on to the next sets."""
        if not self.read_ahead or set_id in self._scanned:
            return
        listing = self._context.store.listing_get(set_id)
        if listing is None or not ingest.is_osu(listing.entries[index].name):
            return
        # Only where ranges work (reading ahead must never download whole archives) and the
        # source has no allowance a guess could waste; or for a provisional set, whose
        # neighbours cost only metadata and .osu requests to list.
        remote = self._remotes.get(set_id)
        if (remote is not None and not remote.source.metered) or listing.provisional:
            # Each set a scan enters moves the window on, so it never drains.
            self._scanned.add(set_id)
            self._start(set_id)

    def _start(self, set_id: int) -> None:
        """Fetch the .osu files of this set and the next few, as a scan will want them."""
        upcoming = [set_id] + [n for n, _ in self._next_sets(set_id, self.read_ahead)]
        for next_id in upcoming:
            if next_id not in self._warmed:
                self._warmed.add(next_id)
                if next_id == set_id:
                    # A reader waits for its own set: it takes no place in the pool.
                    self._busy[set_id] = trio.Event()
                    self._context.nursery.start_soon(self._warm, set_id, None)
                else:
                    self._context.nursery.start_soon(self._warm, next_id, self._pool)

    async def _warm(self, set_id: int, pool: trio.CapacityLimiter | None) -> None:
        """Fetch the set's .osu files that are not in the store, its archive's in as few ranges
        as they allow. Only the requests hold a place in `pool`, not the storing after them:
        a slow disk's fsyncs must not leave the link idle."""
        got: tuple[dict[int, ZipMember], list[Span]] | None = None
        try:
            # Readers first; a read-ahead never becomes a reader's failure. The reader's own
            # set (no pool) is fetched for that reader, at its priority.
            ahead = background(patient=False) if pool is not None else contextlib.nullcontext()
            async with pool or contextlib.nullcontext():
                self._busy.setdefault(set_id, trio.Event())
                with ahead:
                    got = await self._fetch(set_id)
            if got is not None:
                await trio.to_thread.run_sync(self._store_spans, set_id, *got)
        finally:
            busy = self._busy.pop(set_id, None)
            if busy is not None:
                busy.set()

    async def _fetch(self, set_id: int) -> tuple[dict[int, ZipMember], list[Span]] | None:
        """The archive's spans holding the set's uncached .osu files (those only `/osu/` has
        are fetched and stored here, one by one)."""
        try:
            listing = await self._listings.listing(set_id)
        except OsufsError as error:
            log.debug("read-ahead of set %d stopped: %s", set_id, error)
            return None
        cached = self._context.store.cached_entries(set_id)
        wanted = [
            index
            for index in listing.children(0)
            if ingest.is_osu(listing.entries[index].name) and index not in cached
        ]
        remote = self._remotes.get(set_id)
        if remote is None and not self._context.planner.unmetered_available():
            return None  # any member fetched now could spend a metered source's allowance
        got = None
        if remote is not None:
            # Pinned files the archive lacks have only their /osu/ copy: fetched below.
            in_archive = [index for index in wanted if listing.member(index) is not None]
            got = await self._read_spans(remote, listing, in_archive)
            wanted = [index for index in wanted if listing.member(index) is None]
        async with trio.open_nursery() as nursery:  # a set's .osu files in parallel
            for index in wanted:
                nursery.start_soon(self._warm_member, set_id, index)
        return got

    async def _read_spans(
        self, remote: RemoteArchive, listing: SetListing, indexes: list[int]
    ) -> tuple[dict[int, ZipMember], list[Span]]:
        """Several members in as few ranged requests as their places in the archive allow,
        to be cut, stored and indexed in one thread call and one commit (a cold scan's round
        trips, thread hand-offs and fsyncs)."""
        foreign = self._remotes.foreign(remote.set_id)
        members = {}
        for index in indexes:
            member = listing.members[listing.entries[index].member]
            member = member if foreign is None else foreign.get(index)
            if member is not None and member.compressed_size <= RANGED_MEMBER_LIMIT:
                members[index] = member
        spans: list[Span] = []
        try:
            for start, end, group in spans_of(members):
                spans.append((start, await remote.read(start, end - start), group))
        except OsufsError as error:
            log.debug("read-ahead of set %d: %s", remote.set_id, error)
        return members, spans

    def _store_spans(self, set_id: int, members: dict[int, ZipMember], spans: list[Span]) -> None:
        """Cut each member out of the span that holds it, store and index them (blocking)."""
        context = self._context

        def refused(index: int, error: MemberError) -> None:
            context.refused.note(set_id, index, error)

        def items() -> Iterable[ingest.MemberBytes]:
            for start, data, group in spans:
                for index in group:
                    cut = _cut(members[index], data, start, context.limits, index, refused)
                    if cut is not None:
                        yield index, ingest.opener(cut), members[index]

        ingest.write_members(context.store, set_id, items(), context.limits, refused=refused)

    async def _warm_member(self, set_id: int, index: int) -> None:
        try:
            await self._members.member_file(set_id, index)
        except OsufsError as error:
            log.debug("read-ahead of set %d, member %d: %s", set_id, index, error)


def _cut(
    member: ZipMember,
    data: bytes,
    start: int,
    limits: archive.Limits,
    index: int,
    refused: ingest.Refused,
) -> bytes | None:
    """One member's compressed bytes cut out of a span of the archive; None if the span
    missed part of it (a long local extra field: an ordinary read will fetch it) or the
    member is refused."""
    header = member.header_offset - start
    try:
        archive.check_member(member, limits)
        first = archive.data_offset(member, data[header : header + archive.LOCAL_HEADER_SIZE])
    except MemberError as error:
        refused(index, error)
        return None
    compressed = data[first - start : first - start + member.compressed_size]
    if len(compressed) < member.compressed_size:
        return None
    return compressed


def spans_of(members: dict[int, ZipMember]) -> list[tuple[int, int, list[int]]]:
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
