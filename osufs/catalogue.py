"""The root's list of sets: synced from the sources' set lists (a paged one from a saved
cursor), or exactly the sets of a catalogue file, named from sources' metadata."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
from array import array
from bisect import bisect_right
from pathlib import Path
from typing import Any

import trio

from osufs.errors import OsufsError
from osufs.sources import Source, SourceLimited
from osufs.store import CatalogueRecord, Store

log = logging.getLogger(__name__)

# Where a paged set list (the osu! API's search) is resumed from, per source and filter. A
# mount goes on with an unfinished sync at once, and with a finished one older than
# RESYNC_AFTER.
CURSORS_FILE = "catalogue-cursors.json"
RESYNC_AFTER = 3600.0
# While the first mount waits for a catalogue file's names, a progress line this often.
PROGRESS_EVERY = 5.0
_SET_URL = re.compile(r"/(?:beatmapsets|s)/([0-9]+)")


def read_catalogue_file(path: Path) -> list[int]:
    """Set ids from a catalogue file: one a line, `#` starts a comment; a set's page URL
    (`https://osu.ppy.sh/beatmapsets/<id>...`) counts as its id. ValueError says which line."""
    ids: dict[int, None] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        text = re.sub(r"(^|\s)#.*", "", line).strip()
        if not text:
            continue
        match = _SET_URL.search(text) if "://" in text else None
        token = match.group(1) if match else text
        if not token.isdigit() or int(token) < 1:
            raise ValueError(f"{path}, line {number}: not a set id: {text!r}")
        ids[int(token)] = None
    return list(ids)


def _stamp_key(stamp: tuple[int, bytes]) -> bytes:
    count, digest = stamp
    return count.to_bytes(8, "big") + digest


class Catalogue:
    """Which sets the root lists, and keeping that list in the index up to date."""

    def __init__(
        self,
        store: Store,
        sources: list[Source],
        nursery: trio.Nursery,
        *,
        offline: bool = False,
        catalogue_file: Path | None = None,
    ) -> None:
        self.store = store
        self.sources = sources
        self.offline = offline
        self._nursery = nursery
        # With a catalogue file, the root lists exactly its sets (those with a name); else, with
        # a source that lists sets by id (online.db), those.
        self.catalogue_file = catalogue_file
        self._listed: list[int] | None = None
        self._listed_ids: frozenset[int] | None = None
        self._listed_digest = b""
        if catalogue_file is not None:
            self._set_listed(read_catalogue_file(catalogue_file), by_source=False)
        self._reload_listed()
        self._syncing: set[str] = set()
        self._naming = False

    def stamp(self) -> tuple[int, bytes]:
        """Equal for as long as page() answers the same: sets only ever join the index (names
        and times never move), and the list of sets shown is digested whenever it is reread."""
        return self.store.catalogue_count(), self._listed_digest

    def saved_newest(self, stamp: tuple[int, bytes]) -> int | None:
        """The newest listed set's mtime (ns) saved for this stamp, or None."""
        return self.store.newest_listed_get(_stamp_key(stamp))

    def save_newest(self, stamp: tuple[int, bytes], mtime_ns: int) -> None:
        self.store.newest_listed_put(_stamp_key(stamp), mtime_ns)

    def _set_listed(self, ids: list[int], *, by_source: bool) -> None:
        """Show exactly these sets: a catalogue file's, or those a source lists by id."""
        self._listed = sorted(ids)
        self._listed_ids = frozenset(ids) if by_source else None
        self._listed_digest = hashlib.blake2b(
            array("Q", self._listed).tobytes() + bytes([by_source]), digest_size=16
        ).digest()

    def page(self, after: int, limit: int) -> list[tuple[int, CatalogueRecord]]:
        """Up to limit listed sets with ids above after, in id order: the index's catalogue,
        or with a catalogue file, the file's sets that have a name yet."""
        if self._listed is None:
            return self.store.catalogue_page(after, limit)
        if self._listed_ids is not None:
            return self._page_of_listed(after, limit, self._listed_ids)
        page: list[tuple[int, CatalogueRecord]] = []
        for set_id in self._listed[bisect_right(self._listed, after) :]:
            record = self.store.catalogue_get(set_id)
            if record is not None:
                page.append((set_id, record))
                if len(page) >= limit:
                    break
        return page

    def columns(self) -> tuple[array[int], array[int], list[bytes]]:
        """What page() lists, whole: ids, mtimes (ns) and encoded folder names in id order."""
        if self._listed_ids is not None:
            return self.store.catalogue_columns(self._listed_ids)
        if self._listed is not None:
            return self.store.catalogue_columns(frozenset(self._listed))
        return self.store.catalogue_columns()

    def _page_of_listed(
        self, after: int, limit: int, listed: frozenset[int]
    ) -> list[tuple[int, CatalogueRecord]]:
        """The index's named sets that a source lists by id, walked in index order (the index
        holds them all, so this costs a filter, not a lookup a set)."""
        page: list[tuple[int, CatalogueRecord]] = []
        while len(page) < limit:
            found = self.store.catalogue_page(after, limit)
            if not found:
                break
            page += [(set_id, record) for set_id, record in found if set_id in listed]
            after = found[-1][0]
        return page[:limit]

    def _reload_listed(self) -> None:
        if self.catalogue_file is not None:
            return
        for source in self.sources:
            ids = source.listed_sets()
            if ids is not None:
                self._set_listed(list(ids), by_source=True)
                return

    async def resume(self) -> None:
        """At mount: go on with a paged set list a previous session left unfinished (or
        finished over RESYNC_AFTER ago), and name the catalogue file's sets; the other lists
        wait for the hourly refresh."""
        cursors = self._cursors()
        for source in self.sources:
            key = source.catalogue_key
            if not source.catalogue_paged or key is None:
                continue
            saved = cursors.get(key, {})
            at = saved.get("at")
            stale = not isinstance(at, int | float) or time.time() - at >= RESYNC_AFTER
            if not saved.get("done") or stale:
                await self._sync_catalogue(source, wait=False)
        self._start_naming()

    async def refresh(self) -> None:
        """Add every set the sources list to the index.

        A paged list (the osu! API's) is synced in the background from where the last sync
        stopped; this returns once its first page is in."""
        self._reload_file()
        for source in self.sources:
            if source.catalogue_paged:
                await self._sync_catalogue(source, wait=True)
                continue
            try:
                entries = await source.catalogue()
            except OsufsError as error:
                log.warning("%s: set list unavailable: %s", source.label, error)
                continue
            except Exception:
                # This runs in the mount's nursery: nothing may escape and end the mount.
                log.exception("%s: reading the set list failed", source.label)
                continue
            self._reload_listed()  # online.db may have been downloaded again
            added = self.store.catalogue_add(
                [(e.set_id, CatalogueRecord(e.folder, e.mtime_ns, source.label)) for e in entries]
            )
            log.info("%s: %d sets listed, %d new", source.label, len(entries), added)
        self._start_naming()

    def _reload_file(self) -> None:
        if self.catalogue_file is None:
            return
        try:
            self._set_listed(read_catalogue_file(self.catalogue_file), by_source=False)
        except (OSError, ValueError) as error:
            log.warning("catalogue file unchanged: %s", error)

    async def _sync_catalogue(self, source: Source, *, wait: bool) -> None:
        key = source.catalogue_key
        if key is None or key in self._syncing:
            return
        self._syncing.add(key)
        first_page = trio.Event()
        self._nursery.start_soon(self._sync, source, key, first_page)
        if wait:
            await first_page.wait()

    async def _sync(self, source: Source, key: str, first_page: trio.Event) -> None:
        """Page through a source's set list into the index, saving the cursor after each page
        so the next sync (or the next mount) goes on from there."""
        resume = self._cursors().get(key, {}).get("cursor")
        resume = resume if isinstance(resume, str) else None
        pages = listed = added = 0
        try:
            async with contextlib.aclosing(source.catalogue_pages(resume)) as stream:
                async for entries, cursor, done in stream:
                    added += self.store.catalogue_add(
                        [
                            (e.set_id, CatalogueRecord(e.folder, e.mtime_ns, source.label))
                            for e in entries
                        ]
                    )
                    listed += len(entries)
                    pages += 1
                    self._save_cursor(key, cursor, done)
                    first_page.set()
            log.info(
                "%s: set list synced: %d pages, %d sets listed, %d new",
                source.label,
                pages,
                listed,
                added,
            )
        except OsufsError as error:
            log.warning("%s: set list unavailable after %d pages: %s", source.label, pages, error)
            refused = isinstance(error, SourceLimited) or error.errno == errno.EACCES
            if pages == 0 and resume and not refused:
                self._save_cursor(key, None, False)  # a cursor it no longer takes
        except Exception:
            log.exception("%s: reading the set list failed", source.label)
        finally:
            self._syncing.discard(key)
            first_page.set()

    def _cursors(self) -> dict[str, Any]:
        try:
            found = json.loads((self.store.root / CURSORS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(found, dict):
            return {}
        return {key: value for key, value in found.items() if isinstance(value, dict)}

    def _save_cursor(self, key: str, cursor: str | None, done: bool) -> None:
        """Atomically: two mounts may share the cache directory."""
        cursors = self._cursors()
        cursors[key] = {"cursor": cursor, "done": done, "at": time.time()}
        path = self.store.root / CURSORS_FILE
        temp = path.with_name(f".{CURSORS_FILE}.{os.getpid()}")
        try:
            temp.write_text(json.dumps(cursors, indent=1))
            os.replace(temp, path)
        except OSError as error:
            log.warning("cannot save the set list's cursor: %s", error)

    def _start_naming(self) -> None:
        # Offline, the sources are local ones (online.db) alone: naming from them is free.
        if self._listed is None or self._naming or not self.sources:
            return
        self._naming = True
        self._nursery.start_soon(self._name_listed)

    async def name_file_sets(self) -> None:
        """Before the first mount comes up: name every set of the catalogue file the index does
        not know yet, saying how far it got, so the root lists them all from its first look
        (later mounts find them in the index)."""
        if self._listed is None or self._listed_ids is not None or self.offline:
            return
        if not self.sources:
            return
        unknown = [i for i in self._listed if self.store.catalogue_get(i) is None]
        if not unknown:
            return
        log.info("catalogue file: naming %d sets before the mount comes up", len(unknown))
        await self._name_listed(progress=True)

    async def _name_listed(self, *, progress: bool = False) -> None:
        """Name the catalogue file's sets the index does not know, from sources' metadata, one
        at a time (in the background once mounted). A set none names is listed once a lookup
        by id reaches its archive (`ls MOUNT/<id>`): no archive is fetched just to name a set."""
        named = unnamed = 0
        # A source's whole list (online.db: every ranked set) is named only by sources that
        # cost nothing: asking the API for each would be the harvesting its terms forbid. A
        # set they cannot name is named by a lookup (`ls MOUNT/<id>`).
        free_only = self._listed_ids is not None
        said = time.monotonic()
        try:
            unknown = self.store.catalogue_unknown(self._listed or ())
            for set_id in unknown:
                if progress and time.monotonic() - said >= PROGRESS_EVERY:
                    said = time.monotonic()
                    log.info("catalogue file: %d of %d sets named", named, len(unknown))
                for source in self._available_sources():
                    if free_only and not source.free_difficulties:
                        continue
                    try:
                        entry = await source.catalogue_entry(set_id)
                    except OsufsError as error:
                        log.debug("%s: no name for set %d: %s", source.label, set_id, error)
                        continue
                    if entry is not None:
                        record = CatalogueRecord(entry.folder, entry.mtime_ns, source.label)
                        self.store.catalogue_add([(set_id, record)])
                        named += 1
                        break
                else:
                    unnamed += 1
            if named or unnamed:
                log.info(
                    "catalogue file: %d sets named from metadata; %d wait for a lookup by id",
                    named,
                    unnamed,
                )
        except Exception:
            log.exception("naming the catalogue file's sets failed")
        finally:
            self._naming = False

    def _available_sources(self) -> list[Source]:
        now = time.time()
        return [source for source in self.sources if source.limited_until <= now]
