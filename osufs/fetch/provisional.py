"""Listing a set from its difficulties' .osu files (`/osu/<id>`), before its archive: every
.osu is fetched and checked by md5 first, so no size is guessed."""

from __future__ import annotations

import errno
import logging
import zlib
from collections import OrderedDict

import trio

from osufs.errors import OsufsError
from osufs.fetch import ingest
from osufs.fetch.context import Context, in_background
from osufs.fetch.planner import OSU, SET
from osufs.listing import Pin, PinnedFile, SetListing, provisional_listing
from osufs.names import normalise_path
from osufs.osufile import difficulty_filename, parse_osu
from osufs.sources import Difficulty, SetDifficulties, Source, SourceMismatch, SourceMissing

log = logging.getLogger(__name__)

# .osu files fetched at once (`/osu/<id>`) for provisional listings, across sets.
DIFFICULTY_FETCHES = 16
# .osu bytes kept between attempts at a provisional listing, so one cut short (by the pace of
# `/osu/` or the deadline) goes on where it stopped; the oldest go first past this many.
KEPT_DIFFICULTIES = 2048


class ProvisionalListings:
    """Lists sets by their difficulties alone and stores those .osu files as their members."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._pool = trio.CapacityLimiter(DIFFICULTY_FETCHES)
        # (beatmap id, md5) -> checked bytes of a listing cut short, for its next attempt; the
        # md5 is in the key so a map updated in between is fetched anew.
        self._kept: OrderedDict[tuple[int, str], bytes] = OrderedDict()

    async def list(self, sources: list[Source], set_id: int) -> SetListing | None:
        """The set's provisional listing from `sources` (the planner chooses which serves each
        request), stored. None when metadata cannot list it (the archive is then asked); EIO,
        storing nothing, when some .osu is not to be had before the deadline, so a later look
        lists it whole."""
        planner = self._context.planner
        background = in_background()

        async def describe(source: Source) -> SetDifficulties | None:
            info = await source.set_difficulties(set_id, background=background)
            if info is None or not info.difficulties or info.updated_ns <= 0:
                log.info("set %d: %s cannot list it without its archive", set_id, source.label)
                raise SourceMissing(f"{source.label}: set {set_id}: no difficulties")
            return info

        try:
            info = await planner.serve(sources, SET, describe, what=f"set {set_id}")
        except OsufsError as error:
            # Unknown to the API, or no usable client (said once): only the archive lists it.
            if isinstance(error, SourceMissing) or error.errno == errno.EACCES:
                return None
            raise
        assert info is not None
        outcomes: dict[int, bytes | OsufsError] = {}
        async with trio.open_nursery() as nursery:
            for difficulty in info.difficulties:
                nursery.start_soon(self._fetch, sources, difficulty, outcomes, background)
        free = sources[0].free_difficulties
        if free and self._context.planner.other_ways(sources[0]):
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
        return await self._store(set_id, listing, contents)

    async def _fetch(
        self,
        sources: list[Source],
        difficulty: Difficulty,
        outcomes: dict[int, bytes | OsufsError],
        background: bool,
    ) -> None:
        key = (difficulty.beatmap_id, difficulty.md5)
        kept = self._kept.get(key)
        if kept is None:
            kept = self._context.store.osu_bytes(difficulty.md5)  # imported, or fetched before
        if kept is not None:
            outcomes[difficulty.beatmap_id] = kept
            return

        async def fetch(source: Source) -> bytes:
            return await source.beatmap_file(
                difficulty.beatmap_id, difficulty.md5, background=background
            )

        try:
            async with self._pool:
                what = f"beatmap {difficulty.beatmap_id}"
                data = await self._context.planner.serve(sources, OSU, fetch, what=what)
        except OsufsError as error:
            outcomes[difficulty.beatmap_id] = error
            return
        outcomes[difficulty.beatmap_id] = data
        self._kept[key] = data
        while len(self._kept) > KEPT_DIFFICULTIES:
            self._kept.popitem(last=False)

    async def _store(
        self, set_id: int, listing: SetListing, contents: dict[int, bytes]
    ) -> SetListing:
        """Store a provisional listing and its .osu bytes as its members; the listing that
        stands (another mount's, if it was first: then ours is dropped)."""
        standing = await trio.to_thread.run_sync(self._write, set_id, listing, contents)
        if standing is listing:
            for pin in listing.pins:
                self._kept.pop((pin.beatmap_id, pin.md5), None)
            log.info("set %d: listed before its archive: %d .osu files", set_id, len(listing.pins))
        return standing

    def _write(self, set_id: int, listing: SetListing, contents: dict[int, bytes]) -> SetListing:
        """Write the .osu files, store the listing and index them, in one thread call (a cold
        scan lists thousands of sets this way). The files stored by md5 already are indexed in
        the listing's own commit: a set whose every .osu was imported costs one."""
        store = self._context.store
        standing = listing
        items = []
        links = []
        for index, pin in enumerate(listing.pins, 1):
            digest = store.osu_digest(pin.md5)
            if digest is not None:
                links.append((index, digest))  # stored by md5 already: no copy
                continue
            data = contents[pin.beatmap_id]
            items.append((index, ingest.opener(data), ingest.loose_member(data)))

        def keep() -> bool:
            nonlocal standing
            standing = store.listing_put(set_id, listing, links)
            return standing is listing

        ingest.write_members(store, set_id, items, self._context.limits, keep=keep)
        return standing


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
