"""A set's listing: from the store, provisionally from its difficulties, or from its
archive's directory; and a name looked up in it."""

from __future__ import annotations

from osufs.errors import OsufsError
from osufs.fetch.context import Context, in_background
from osufs.fetch.provisional import ProvisionalListings
from osufs.fetch.remote import Remotes
from osufs.listing import SetListing


class Listings:
    """Set listings, each fetched once however many readers ask."""

    def __init__(self, context: Context, remotes: Remotes) -> None:
        self._context = context
        self._remotes = remotes
        self._provisional = ProvisionalListings(context)

    async def listing(self, set_id: int) -> SetListing:
        """A set's listing: stored, or provisional when no unmetered archive source is
        available and metadata can list it, or from the archive's directory. Background work
        (reading ahead) never spends a metered source's archives."""
        context = self._context
        found = context.store.listing_get(set_id)
        if found is not None:
            return found
        free = context.planner.free_difficulty_source()
        if free is not None:
            listed = await context.flights.run(
                ("provisional", set_id),
                lambda: self._provisional.list([free], set_id),
            )
            if listed is not None:
                return listed
        if context.offline:
            raise OsufsError.io(f"set {set_id} is not cached (offline)")
        listed = await context.shared.listing(set_id)  # before any allowance is spent
        if listed is not None:
            return listed
        sources = context.planner.difficulty_sources()
        if sources:
            listed = await context.flights.run(
                ("provisional", set_id), lambda: self._provisional.list(sources, set_id)
            )
            if listed is not None:
                return listed
        if in_background() and not context.planner.unmetered_available():
            raise OsufsError.io(f"set {set_id}: not read ahead (only a metered source has it)")
        await self._remotes.connect(set_id)
        found = context.store.listing_get(set_id)
        if found is None:
            raise OsufsError.io(f"set {set_id}: no listing")
        context.shared.offer(set_id)
        return found

    async def lookup(self, set_id: int, parent: int, name: str) -> tuple[SetListing, int]:
        """The listing and entry of `name` in directory `parent` of a set. A name a
        provisional listing lacks (a map's audio, its background) fetches the archive's
        directory first, from any archive source (EIO offline); ENOENT when the set has no
        such name."""
        listing = await self.listing(set_id)
        child = listing.child(parent, name)
        if child is None and listing.provisional and self._context.offline:
            raise OsufsError.io(f"set {set_id}: its archive is not cached (offline)")
        if child is None and listing.provisional and self._context.planner.archive_sources():
            listing = await self.complete(set_id)
            child = listing.child(parent, name)
        if child is None:
            raise OsufsError.not_found(f"{name!r} is not in set {set_id}")
        return listing, child

    async def complete(self, set_id: int) -> SetListing:
        """The set's listing completed by its archive's directory."""
        await self._remotes.connect(set_id)
        found = self._context.store.listing_get(set_id)
        if found is None or found.provisional:
            raise OsufsError.io(f"set {set_id}: its archive did not complete the listing")
        return found
