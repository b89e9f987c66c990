"""The library: what fs.py, prefetch.py and mount.py call, a thin facade over osufs/fetch/.

Each fetch runs once per key in the library's own nursery; callers wait on its event, so a
caller that gives up never cancels a download others are waiting for. A set is reached by
asking a source for the archive's tail: a source that honours ranges then serves members one by
one; one that does not sends the whole archive, which is ingested at once. When no unmetered
archive source is available, a set is first listed provisionally from its difficulties' .osu
files (`/osu/<id>`), and its archive is fetched only for a name that listing lacks.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from osufs.archive import Limits
from osufs.catalogue import Catalogue
from osufs.fetch.context import Context, background
from osufs.fetch.handles import EntryHandles, Handles
from osufs.fetch.listings import Listings
from osufs.fetch.members import Members
from osufs.fetch.names import Names
from osufs.fetch.planner import Planner
from osufs.fetch.readahead import READ_AHEAD_SETS, ReadAhead
from osufs.fetch.remote import Remotes
from osufs.fetch.shared import Shared
from osufs.flights import Flights
from osufs.indexwatch import IndexWatch
from osufs.listing import SetListing
from osufs.sources import Source
from osufs.store import CatalogueRecord, Store
from osufs.tier.shared import SharedTier

__all__ = ["READ_AHEAD_SETS", "CacheSpace", "Library"]


@dataclass(frozen=True)
class CacheSpace:
    """What `df` shows of the cache."""

    root: Path
    used: int  # bytes of content held
    budget: int | None  # the cache's size limit, if it has one
    sets: int  # sets listed


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
        shared: SharedTier | None = None,
    ) -> None:
        self._store = store
        self.sources = sources
        context = Context(
            store,
            Planner(sources),
            Flights(nursery, fetch_timeout),
            limits,
            nursery,
            offline,
            fetch_timeout,
        )
        context.shared = Shared(context, shared)
        self._context = context
        self._remotes = Remotes(context)
        self._listings = Listings(context, self._remotes)
        self._members = Members(context, self._listings, self._remotes)
        self._names = Names(context, self._listings, self._members)
        self.catalogue = Catalogue(
            store, sources, nursery, offline=offline, catalogue_file=catalogue_file
        )
        self._read_ahead = ReadAhead(
            context, self._listings, self._members, self._remotes, self.catalogue_page, read_ahead
        )
        self._handles = Handles(
            store, self._members, self._read_ahead.note_open, self._read_ahead.before_fetch
        )
        self._entries = EntryHandles(self._handles)

    async def close(self) -> None:
        """Finish what must outlive the mount's last read (uploads to the shared tier)."""
        await self._context.shared.drain()

    # the root

    def catalogue_page(self, after: int, limit: int) -> list[tuple[int, CatalogueRecord]]:
        """Up to limit listed sets with ids above after, in id order (see Catalogue.page)."""
        return self.catalogue.page(after, limit)

    def catalogue_columns(self) -> tuple[array[int], array[int], list[bytes]]:
        """Every listed set's id, mtime (ns) and encoded folder name, in id order."""
        return self.catalogue.columns()

    def catalogue_stamp(self) -> tuple[int, bytes]:
        """Equal for as long as catalogue_page answers the same (see Catalogue.stamp)."""
        return self.catalogue.stamp()

    def saved_newest(self, stamp: tuple[int, bytes]) -> int | None:
        """The newest listed set's mtime (ns) a mount saved for this stamp, or None."""
        return self.catalogue.saved_newest(stamp)

    def save_newest(self, stamp: tuple[int, bytes], mtime_ns: int) -> None:
        self.catalogue.save_newest(stamp, mtime_ns)

    def catalogue_count(self) -> int:
        return self._store.catalogue_count()

    def record(self, set_id: int) -> CatalogueRecord | None:
        """The set's catalogue record if it is listed; never asks a source."""
        return self._store.catalogue_get(set_id)

    async def resume_catalogue(self) -> None:
        await self.catalogue.resume()

    async def refresh_catalogue(self) -> None:
        await self.catalogue.refresh()

    async def resolve(self, set_id: int) -> CatalogueRecord:
        """The catalogue record of a set, discovering an unlisted one from the sources."""
        return await self._names.resolve(set_id)

    # sets and members

    async def listing(self, set_id: int) -> SetListing:
        return await self._listings.listing(set_id)

    async def read_dir(self, set_id: int) -> SetListing:
        """A set's listing for a reader listing its folder; the next sets are listed ahead."""
        self._read_ahead.note_listing(set_id)
        return await self._listings.listing(set_id)

    async def lookup(self, set_id: int, parent: int, name: str) -> tuple[SetListing, int]:
        """The listing and entry of `name` in directory `parent` of a set (see Listings)."""
        return await self._listings.lookup(set_id, parent, name)

    async def member_file(self, set_id: int, index: int) -> Path:
        """The local file holding one member's bytes, fetched if need be."""
        return await self._members.member_file(set_id, index)

    async def open_file(self, set_id: int, index: int) -> int:
        """A read-only descriptor of a member's content file, its set counted as open (so
        eviction spares it) until close_file."""
        return await self._handles.open_file(set_id, index)

    def close_file(self, fd: int) -> None:
        self._handles.close_file(fd)

    async def read(self, fd: int, offset: int, size: int) -> bytes:
        """Bytes of an open member: from its content file, or as its stream brings them."""
        return await self._handles.read(fd, offset, size)

    def streaming(self, fd: int) -> bool:
        """Whether the descriptor reads a member still arriving (and so not yet checked)."""
        return self._handles.streaming(fd)

    async def read_entry(self, set_id: int, index: int, offset: int, size: int) -> bytes:
        """Bytes of a member by its entry, with no open (the kernel's no-open mode): held open
        under a lease that each read renews (see EntryHandles)."""
        return await self._entries.read(set_id, index, offset, size)

    async def keep_leases(self) -> None:
        """End read_entry's leases as they lapse, until cancelled."""
        await self._entries.keep_leases()

    def on_stream_refused(self, callback: Callable[[int, int], None]) -> None:
        """Call back (set id, entry) when a streamed member fails its check after some of its
        bytes were served; in the trio thread."""
        self._members.on_stream_refused = callback

    def stored_listing(self, set_id: int) -> SetListing | None:
        """The set's listing if one is stored; never asks a source."""
        return self._store.listing_get(set_id)

    def watch_index(self) -> IndexWatch:
        """Wakes its caller at each commit to the index, by any process (see IndexWatch)."""
        return IndexWatch(self._store.index_file)

    def listings_completed(self) -> int:
        """Provisional listings completed so far by any process (see Store)."""
        return self._store.listings_completed()

    def cached_state(self, set_id: int, index: int) -> str:
        """`yes`, `no`, `partly` or `provisional`: whether reading it needs the network."""
        return self._members.cached_state(set_id, index)

    def cache_space(self) -> CacheSpace:
        store = self._store
        return CacheSpace(store.root, store.content_bytes(), store.budget, store.catalogue_count())

    async def prefetch(self, set_id: int, *, only_osu: bool) -> bool:
        """Fill the cache with a set (or only its .osu files); False if it was all there.
        Background work: readers of a mount on the same cache go first."""
        with background():
            return await self._prefetch(set_id, only_osu=only_osu)

    async def _prefetch(self, set_id: int, *, only_osu: bool) -> bool:
        members = self._members
        listing = self._store.listing_get(set_id)
        whole = listing is not None and (only_osu or not listing.provisional)
        if whole and not members.missing(set_id, listing, only_osu):
            return False
        await self.resolve(set_id)
        listing = await self._listings.listing(set_id)
        if listing.provisional and not only_osu:
            listing = await self._listings.complete(set_id)
        missing = members.missing(set_id, listing, only_osu)
        if not missing:
            return True
        remote = await self._remotes.connect(set_id)
        if remote is None:
            return True  # the whole archive came and was ingested
        if only_osu:
            for index in missing:
                await members.member_file(set_id, index)
        else:
            await members.download_whole(remote)
        return True
