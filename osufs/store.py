"""The cache: an LMDB index over content-addressed files.

Layout under the cache directory:
  index/                LMDB environment (see the table below)
  content/ab/cd/<hash>  member contents, named by SHA-256, stored once however many sets share them
  content.lock          flock held while content files and their index entries change together
  tmp/<pid>-<rand>/     this process's temporary files; a directory whose lock no process holds is
                        an orphan of a crashed mount and is removed at start (tmp/.lock orders
                        starting processes, so none removes another's directory as it is made)

Index databases (keys are big-endian so cursors walk sets in id order):
  catalogue  set id -> CatalogueRecord      every set the mount lists
  listings   set id -> SetListing bytes     a set's tree once known (a provisional one is
                                            replaced once, by its completion)
  blobs      set id + entry -> sha256       which content file holds a cached member
  content    sha256 -> [size, refs]         refs counts blobs pointing at it
  usage      set id -> last access (ns)     every set with blobs has one
  lru        access (ns) + set id -> ""     the same, ordered oldest first, for eviction
  pins       set id -> ""                   sets eviction never touches
  trash      sha256 -> ""                   content files whose refs reached zero, to unlink
  negative   set id -> expiry (unix time)   sets the sources said do not exist
  osu        md5 (16 bytes) -> sha256       .osu files known by their md5 (imported, or fetched
                                            by beatmap id); each holds a ref on its content
  meta       schema, content_bytes (sum of content sizes), hits, misses, budget, keep_free
  allowances source key -> allowance record  what each source allows and was spent
                                            (osufs/allowance.py), shared by every process

Writes are atomic: the bytes go to a temporary file, are fsynced and renamed into content/,
and only then is the index committed, so an index entry never points at a partial file. Removal
runs the other way: the index forgets blobs (and lists their files in trash) in one commit, and
only then are the files unlinked. A crash between the steps leaves files no entry points at:
trash is emptied at the next start, and `osufs cache gc` removes the rest. Both sequences hold
content.lock, so two processes sharing the directory never unlink a file the other just indexed.

The free-space bound (osufs/space.py: by default 10% of the file system stays free) is enforced
before a write starts: `new_temp(size)` makes room for the bytes it will hold, evicting least
recently used sets first, or fails with ENOSPC before any byte is written.

The budget is enforced in the commit that adds blobs: least recently used sets are dropped in
the same transaction until the stored bytes fit, skipping pinned sets, sets with open files in
this process and the sets being written. Access times and hit counters are kept in memory
(`Usage`) and written in batches (`flush_usage`), never once per read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import math
import os
import re
import secrets
import shutil
import signal
import struct
import tempfile
import threading
import time
from array import array
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

import lmdb
import msgpack

from osufs.errors import OsufsError
from osufs.listing import SetListing
from osufs.space import KEEP_FREE, Room, SpaceBound

log = logging.getLogger(__name__)

# 3: listings may be provisional and hold pinned entries (listing format 2), which an osufs
# of schema 2 could not read. 4: .osu files indexed by md5 hold content refs no blob counts,
# which the verify of schema 3 would drop. 5: listings of format 3 (a pin's md5 as bytes), which
# an osufs of schema 4 could not read.
SCHEMA_VERSION = 5
INITIAL_MAP_SIZE = 256 << 20
# Decoded listings kept in memory, counted in entries (about 450 bytes each, measured over
# 5,000 sets: 18 MB in all): a walk over 2,500 sets of the usual 15 files finds their trees
# decoded, and neither a set of 60,000 members nor a grep over every set crowds memory.
LISTING_CACHE_ENTRIES = 40_000
HASH_CHUNK = 1 << 20
# compact_osu_tables rewrites a table of at least this many leaf pages (256 KiB) whose pages are
# less than this full. A node is its 8-byte header and 2-byte pointer beside its key and value.
COMPACT_MIN_PAGES = 64
FULL_ENOUGH = 0.85
_NODE_BYTES = 10
_PAGE_HEADER = 16
SPOOL_IN_MEMORY = 64 << 10  # above an archive's first tail (16 KiB) and a longer second try
_DIGEST_NAME = re.compile(r"[0-9a-f]{64}")
# Making room for a write evicts at most this many rounds (each one commit) before it gives up.
ROOM_ROUNDS = 8
# A refused write is said in the log at most once in this many seconds (a grep meets many).
ROOM_REFUSAL_LOG_EVERY = 10.0

# Testing only: `OSUFS_CRASH_AT=<point>` makes the process SIGKILL itself at that point, so the
# tests can crash a mount exactly between two steps. Points: temp-written, commit-renamed,
# commit-evicted, evict-indexed, gc-unlinked.
_CRASH_AT = os.environ.get("OSUFS_CRASH_AT", "")

T = TypeVar("T")


class StoreError(Exception):
    """The cache directory cannot be used (wrong schema, unwritable)."""


@dataclass(frozen=True, slots=True)
class CatalogueRecord:
    """What the root needs to list a set without touching the network."""

    folder: str
    mtime_ns: int
    source: str = ""

    def pack(self) -> bytes:
        return msgpack.packb([self.folder, self.mtime_ns, self.source])

    @classmethod
    def unpack(cls, data: bytes) -> CatalogueRecord:
        folder, mtime_ns, source = msgpack.unpackb(data)
        return cls(folder, mtime_ns, source)


@dataclass(frozen=True, slots=True)
class PendingBlob:
    """A member written to a temporary file, ready to be committed to the store."""

    set_id: int
    entry: int
    temp_path: Path
    digest: bytes
    size: int


@dataclass(frozen=True, slots=True)
class PendingOsu:
    """A .osu file written to a temporary file, to be indexed by its md5."""

    md5: bytes
    temp_path: Path
    digest: bytes
    size: int


@dataclass(frozen=True, slots=True)
class CacheStats:
    sets: int  # sets with at least one cached member
    members: int  # cached members (blobs)
    stored_bytes: int  # bytes of content files (each stored once)
    logical_bytes: int  # bytes the cached members add up to
    content_files: int
    pinned: int
    listed_sets: int  # sets in the catalogue
    listings: int  # sets whose tree is known
    hits: int  # opens served from the cache
    misses: int  # opens that needed a fetch
    budget: int | None  # the last mount's --cache-size

    @property
    def dedup_saving(self) -> int:
        return self.logical_bytes - self.stored_bytes

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


@dataclass(frozen=True, slots=True)
class SetUsage:
    set_id: int
    members: int
    size: int  # bytes of the set's cached members
    own_size: int  # of those, bytes no other set shares (what evicting it frees)
    last_access_ns: int
    pinned: bool


@dataclass(frozen=True, slots=True)
class Damage:
    """A blob whose content file failed verification; the blob has been dropped."""

    set_id: int
    entry: int
    digest: bytes
    reason: str


@dataclass
class VerifyReport:
    files_checked: int = 0
    bytes_checked: int = 0
    damaged: list[Damage] = field(default_factory=list)
    dangling: list[tuple[int, int]] = field(default_factory=list)  # blobs without a content entry
    refs_repaired: int = 0


@dataclass
class GcReport:
    files_removed: int = 0
    bytes_removed: int = 0
    temp_dirs_removed: int = 0


@dataclass
class EvictReport:
    evicted: list[int] = field(default_factory=list)
    pinned: list[int] = field(default_factory=list)  # asked for but pinned: left alone
    not_cached: list[int] = field(default_factory=list)
    bytes_freed: int = 0


def set_key(set_id: int) -> bytes:
    return struct.pack(">Q", set_id)


def blob_key(set_id: int, entry: int) -> bytes:
    return struct.pack(">QI", set_id, entry)


def _lru_key(atime_ns: int, set_id: int) -> bytes:
    return struct.pack(">QQ", atime_ns, set_id)


def _pack_int(value: int) -> bytes:
    return struct.pack(">Q", value)


def _unpack_int(data: bytes | None) -> int:
    return 0 if data is None else struct.unpack(">Q", data)[0]


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if the tests asked for a crash here (see _CRASH_AT)."""
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


class Usage:
    """One process's cheap, thread-safe bookkeeping: access times, hit counts, open files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._atimes: dict[int, int] = {}
        self._hits = 0
        self._misses = 0
        self._open: Counter[int] = Counter()

    def access(self, set_id: int, *, hit: bool) -> None:
        with self._lock:
            self._atimes[set_id] = time.time_ns()
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def opened(self, set_id: int) -> None:
        with self._lock:
            self._open[set_id] += 1

    def closed(self, set_id: int) -> None:
        with self._lock:
            self._open[set_id] -= 1
            if self._open[set_id] <= 0:
                del self._open[set_id]

    def open_sets(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._open)

    def take(self) -> tuple[dict[int, int], int, int]:
        """The batch since the last take, leaving an empty one behind."""
        with self._lock:
            batch = self._atimes, self._hits, self._misses
            self._atimes, self._hits, self._misses = {}, 0, 0
        return batch

    def give_back(self, atimes: dict[int, int], hits: int, misses: int) -> None:
        """Return a batch that could not be written, to go with the next one."""
        with self._lock:
            for set_id, atime in atimes.items():
                self._atimes[set_id] = max(atime, self._atimes.get(set_id, 0))
            self._hits += hits
            self._misses += misses


class _MapGuard:
    """LMDB may resize its map only while this process has no transaction open: transactions
    hold the guard shared, a resize holds it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                if not self._active:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Store:
    """The persistent cache of one cache directory; safe to share between processes."""

    def __init__(
        self,
        root: Path,
        *,
        budget: int | None = None,
        keep_free: float | None = None,
        map_size: int = INITIAL_MAP_SIZE,
    ) -> None:
        self.root = root
        self.budget = budget
        self.content_dir = root / "content"
        self._content_prefix = f"{self.content_dir}/"
        self._tmp_root = root / "tmp"
        for folder in (root, self.content_dir, self._tmp_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._content_lock_path = root / "content.lock"
        self.tmp_dir, self._tmp_lock = _make_temp_dir(self._tmp_root)
        self.room = Room(root)  # its share is the one given, else the last mount's (below)
        self._refusal_logged = -math.inf
        self.usage = Usage()
        self._guard = _MapGuard()
        # metasync=False keeps integrity and halves fsyncs; a system crash may undo the last commit.
        self.env = lmdb.open(str(root / "index"), map_size=map_size, max_dbs=16, metasync=False)
        self.index_file = root / "index" / "data.mdb"  # what every commit writes to
        (
            self._catalogue,
            self._listings,
            self._blobs,
            self._content,
            self._usage,
            self._lru,
            self._pins,
            self._trash,
            self._negative,
            self._meta,
            self._osu,
            self._allowances,
        ) = self._open_dbs(
            b"catalogue",
            b"listings",
            b"blobs",
            b"content",
            b"usage",
            b"lru",
            b"pins",
            b"trash",
            b"negative",
            b"meta",
            b"osu",
            b"allowances",
        )
        self._check_schema()
        self._listing_cache: OrderedDict[int, SetListing] = OrderedDict()
        self._listing_cache_entries = 0
        self.empty_trash()
        if budget is not None:
            self._write(lambda txn: txn.put(b"budget", _pack_int(budget), db=self._meta))
        if keep_free is not None:
            packed = msgpack.packb(keep_free)
            self._write(lambda txn: txn.put(b"keep_free", packed, db=self._meta))
            self.room.fraction = keep_free
        else:
            with self._read() as txn:
                stored = txn.get(b"keep_free", db=self._meta)
            self.room.fraction = KEEP_FREE if stored is None else float(msgpack.unpackb(stored))

    def _open_dbs(self, *names: bytes) -> list[lmdb._Database]:
        """Open the named databases; opening runs a transaction, which fails when another
        process has just grown the map: adopt its size and open again."""
        while True:
            try:
                return [self.env.open_db(name) for name in names]
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)

    def close(self) -> None:
        try:
            self.flush_usage()
        except Exception:
            log.exception("could not record access times and counters")
        self.env.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.close(self._tmp_lock)

    def _check_schema(self) -> None:
        def check(txn: lmdb.Transaction) -> None:
            found = txn.get(b"schema", db=self._meta)
            if found is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self._meta)
            elif int(found) in (1, 2, 3, 4):
                if int(found) == 1:
                    self._upgrade_from_1(txn)
                # 2 to 3 changes nothing stored: format 1 listings are read as they are; 3 to 4
                # adds the empty osu table; 4 to 5: format 2 listings are read as they are.
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self._meta)
            elif int(found) != SCHEMA_VERSION:
                raise StoreError(
                    f"cache {self.root} has schema {int(found)}, this osufs uses "
                    f"{SCHEMA_VERSION}; move it away or choose another --cache-dir"
                )

        with self._read() as txn:
            current = txn.get(b"schema", db=self._meta)
        if current is None or int(current) != SCHEMA_VERSION:
            self._write(check)

    def _upgrade_from_1(self, txn: lmdb.Transaction) -> None:
        """Schema 1 had no byte total or access times: count the one, start the other now."""
        total = sum(msgpack.unpackb(v)[0] for v in txn.cursor(db=self._content).iternext(False))
        txn.put(b"content_bytes", _pack_int(total), db=self._meta)
        now = time.time_ns()
        blobs = txn.cursor(db=self._blobs).iternext(values=False)
        for set_id in {struct.unpack(">Q", key[:8])[0] for key in blobs}:
            txn.put(set_key(set_id), _pack_int(now), db=self._usage)
            txn.put(_lru_key(now, set_id), b"", db=self._lru)

    def _write(self, action: Callable[[lmdb.Transaction], T]) -> T:
        """Run one write transaction, growing the map when it fills."""
        while True:
            try:
                with self._guard.shared(), self.env.begin(write=True) as txn:
                    return action(txn)
            except lmdb.MapFullError:
                with self._guard.alone():
                    self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                # Another process grew the map; adopt its size.
                with self._guard.alone():
                    self.env.set_mapsize(0)
            except lmdb.Error as error:
                # LMDB reports a full disk as EIO from mdb_txn_commit.
                raise OsufsError(errno.EIO, f"cache index: {error}") from error

    @contextlib.contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        for _attempt in range(2):
            with self._guard.shared():
                try:
                    txn = self.env.begin()
                except lmdb.MapResizedError:
                    txn = None  # another process grew the map: adopt its size (below), retry
                if txn is not None:
                    try:
                        yield txn
                    finally:
                        txn.abort()
                    return
            with self._guard.alone():
                self.env.set_mapsize(0)
        raise OsufsError.io("cache index: the map keeps being resized")

    @contextlib.contextmanager
    def content_locked(self) -> Iterator[None]:
        """content.lock, across processes and threads (each call opens its own descriptor)."""
        fd = os.open(self._content_lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # allowances (a Ledger for osufs/allowance.py)

    def allowance_get(self, key: str) -> bytes | None:
        with self._read() as txn:
            return txn.get(key.encode(), db=self._allowances)

    def allowance_update(self, key: str, change: Callable[[bytes | None], tuple[bytes, T]]) -> T:
        """Replace a source's allowance record by what `change` makes of it, in one short
        write transaction (`change` must not block: other processes wait for it)."""

        def update(txn: lmdb.Transaction) -> T:
            record, result = change(txn.get(key.encode(), db=self._allowances))
            txn.put(key.encode(), record, db=self._allowances)
            return result

        return self._write(update)

    # catalogue

    def catalogue_get(self, set_id: int) -> CatalogueRecord | None:
        with self._read() as txn:
            data = txn.get(set_key(set_id), db=self._catalogue)
        return None if data is None else CatalogueRecord.unpack(data)

    def catalogue_unknown(self, set_ids: Iterable[int]) -> list[int]:
        """Which of these sets the catalogue does not hold, in one read of its keys alone (60,000
        in 20 ms, a third of a lookup each)."""
        with self._read() as txn:
            keys = txn.cursor(db=self._catalogue).iternext(keys=True, values=False)
            known = {int.from_bytes(key, "big") for key in keys}
        return [i for i in set_ids if i not in known]

    def catalogue_page(self, after: int, limit: int) -> list[tuple[int, CatalogueRecord]]:
        """Up to limit sets with ids above after, in id order."""
        page: list[tuple[int, CatalogueRecord]] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._catalogue)
            if not cursor.set_range(set_key(after + 1)):
                return page
            for key, value in cursor:
                page.append((struct.unpack(">Q", key)[0], CatalogueRecord.unpack(value)))
                if len(page) >= limit:
                    break
        return page

    def catalogue_columns(
        self, listed: Container[int] | None = None
    ) -> tuple[array[int], array[int], list[bytes]]:
        """Every set's id, mtime (ns) and encoded folder name, in id order; only those in listed
        if given. The root's listing in one pass: no record object a set (0.2 s at 60,000)."""
        ids, mtimes, names = array("Q"), array("q"), []
        unpack = msgpack.unpackb
        with self._read() as txn:
            for key, value in txn.cursor(db=self._catalogue):
                set_id = int.from_bytes(key, "big")
                if listed is not None and set_id not in listed:
                    continue
                folder, mtime_ns, _source = unpack(value)
                ids.append(set_id)
                mtimes.append(mtime_ns)
                names.append(folder.encode("utf-8", "surrogateescape"))  # os.fsencode, inline
        return ids, mtimes, names

    def catalogue_ids_before(self, before: int, limit: int) -> list[int]:
        """Up to limit set ids below before, nearest first."""
        ids: list[int] = []
        with self._read() as txn:
            cursor = txn.cursor(db=self._catalogue)
            # At the first id from `before` on, then one back; with none, at the last id.
            found = cursor.prev() if cursor.set_range(set_key(before)) else cursor.last()
            while found and len(ids) < limit:
                ids.append(struct.unpack(">Q", cursor.key())[0])
                found = cursor.prev()
        return ids

    def catalogue_add(self, records: list[tuple[int, CatalogueRecord]]) -> int:
        """Add sets not yet known; a known set keeps its first name so names never move."""

        def add(txn: lmdb.Transaction) -> int:
            return sum(
                txn.put(set_key(set_id), record.pack(), db=self._catalogue, overwrite=False)
                for set_id, record in records
            )

        return self._write(add)

    def catalogue_count(self) -> int:
        with self._read() as txn:
            return txn.stat(self._catalogue)["entries"]

    def newest_listed_get(self, stamp: bytes) -> int | None:
        """The newest listed set's mtime (ns) saved for this stamp of the root's list, or None."""
        with self._read() as txn:
            saved = txn.get(b"newest_listed", db=self._meta)
        if saved is None or saved[8:] != stamp:
            return None
        return struct.unpack(">q", saved[:8])[0]

    def newest_listed_put(self, stamp: bytes, mtime_ns: int) -> None:
        """Save the root's time, so that a later mount's first stat of the root builds nothing."""
        value = struct.pack(">q", mtime_ns) + stamp
        self._write(lambda txn: txn.put(b"newest_listed", value, db=self._meta))

    # negative cache

    def negative_until(self, set_id: int) -> float:
        with self._read() as txn:
            data = txn.get(set_key(set_id), db=self._negative)
        return 0.0 if data is None else float(msgpack.unpackb(data))

    def negative_put(self, set_id: int, until: float) -> None:
        self._write(lambda txn: txn.put(set_key(set_id), msgpack.packb(until), db=self._negative))

    # listings

    def listing_get(self, set_id: int) -> SetListing | None:
        """A set's tree, decoded once and kept in a small LRU (call from the event loop only).
        A provisional one is not kept: a worker thread may complete it at any time."""
        cached = self._listing_cache.get(set_id)
        if cached is not None:
            self._listing_cache.move_to_end(set_id)
            return cached
        listing = self.listing_get_uncached(set_id)
        if listing is not None and not listing.provisional:
            self._listing_cache[set_id] = listing
            self._listing_cache_entries += len(listing.entries)
            while self._listing_cache_entries > LISTING_CACHE_ENTRIES and self._listing_cache:
                _, dropped = self._listing_cache.popitem(last=False)
                self._listing_cache_entries -= len(dropped.entries)
        return listing

    def listing_get_uncached(self, set_id: int) -> SetListing | None:
        """A set's tree straight from the index; safe from worker threads."""
        with self._read() as txn:
            data = txn.get(set_key(set_id), db=self._listings)
        return None if data is None else SetListing.from_bytes(data)

    def listing_put(
        self, set_id: int, listing: SetListing, links: Sequence[tuple[int, bytes]] = ()
    ) -> SetListing:
        """Store a set's tree unless one is already stored, and if it was ours, index `links`
        as `link_blobs` does, in the same commit; returns the tree that stands. Blocking."""
        data = listing.to_bytes()

        def put(txn: lmdb.Transaction) -> bytes:
            if txn.put(set_key(set_id), data, db=self._listings, overwrite=False):
                self._link(txn, set_id, links)
                return data
            return bytes(txn.get(set_key(set_id), db=self._listings))

        with self.content_locked() if links else contextlib.nullcontext():
            stored = self._write(put)
        return listing if stored == data else SetListing.from_bytes(stored)

    def listing_complete(self, set_id: int, listing: SetListing) -> SetListing:
        """Store a set's completed tree in place of its provisional one (or of none); a tree
        already complete stays (another mount was first). Returns the one that stands."""
        data = listing.to_bytes()

        def swap(txn: lmdb.Transaction) -> bytes:
            current = txn.get(set_key(set_id), db=self._listings)
            if current is not None and not SetListing.from_bytes(bytes(current)).provisional:
                return bytes(current)
            txn.put(set_key(set_id), data, db=self._listings)
            if current is not None:
                completed = _unpack_int(txn.get(b"listings_completed", db=self._meta)) + 1
                txn.put(b"listings_completed", _pack_int(completed), db=self._meta)
            return data

        stored = self._write(swap)
        return listing if stored == data else SetListing.from_bytes(stored)

    def listings_completed(self) -> int:
        """How many provisional listings any process has completed: a mount that let the
        kernel cache one sees it grew when this moves (osufs/kernelcache.py)."""
        with self._read() as txn:
            return _unpack_int(txn.get(b"listings_completed", db=self._meta))

    # member contents

    def content_path(self, digest: bytes) -> Path:
        # One Path from one string: three joins were a tenth of an import (one call a file).
        name = digest.hex()
        return Path(f"{self._content_prefix}{name[:2]}/{name[2:4]}/{name}")

    def blob_path(self, set_id: int, entry: int) -> Path | None:
        with self._read() as txn:
            digest = txn.get(blob_key(set_id, entry), db=self._blobs)
        return None if digest is None else self.content_path(bytes(digest))

    def cached_entries(self, set_id: int) -> set[int]:
        with self._read() as txn:
            return {entry for entry, _digest in self._set_blobs(txn, set_id)}

    def _set_blobs(self, txn: lmdb.Transaction, set_id: int) -> list[tuple[int, bytes]]:
        prefix = set_key(set_id)
        found: list[tuple[int, bytes]] = []
        cursor = txn.cursor(db=self._blobs)
        if cursor.set_range(prefix):
            for key, digest in cursor:
                if not key.startswith(prefix):
                    break
                found.append((struct.unpack(">I", key[8:])[0], bytes(digest)))
        return found

    def new_temp(self, size: int = 0) -> tuple[Path, BinaryIO]:
        """A temporary file for a write of `size` bytes, with room made for them first (an
        OsufsError ENOSPC, before anything is written, when there is none). Blocking."""
        path = self.tmp_dir / secrets.token_hex(8)
        self.make_room(size, path)
        return path, open(path, "xb")

    def make_room(self, size: int, path: Path | None = None) -> None:
        """Have `size` bytes fit above the free-space bound (promised to the write of `path`):
        least recently used sets are evicted for them (never pinned or open ones), else
        OsufsError ENOSPC with a log line. Blocking."""
        for _round in range(ROOM_ROUNDS):
            missing = self.room.take(size, path)
            if missing <= 0 or not self._evict_bytes(missing):
                break
        else:
            missing = self.room.take(size, path)
        if missing <= 0:
            return
        bound = self.space()
        message = (
            f"the cache keeps {_mib(bound.keep_free)} of its disk free "
            f"({bound.fraction:.0%}); {_mib(size)} more do not fit, even after evicting"
        )
        now = time.monotonic()
        if now - self._refusal_logged >= ROOM_REFUSAL_LOG_EVERY:
            self._refusal_logged = now
            log.warning("%s (ENOSPC)", message)
        raise OsufsError(errno.ENOSPC, message)

    def _evict_bytes(self, wanted: int) -> int:
        """Evict least recently used sets until `wanted` bytes of content are freed (or none
        is left to evict); returns the bytes freed."""
        limit = max(self.content_bytes() - wanted, 0)
        return self.evict_to(limit, why="making room above the free-space bound")

    def space(self, budget: int | None = None) -> SpaceBound:
        """The bounds in force now: free space and --cache-size (`budget`, else this store's)."""
        size, free, keep = self.room.filesystem()
        with self._read() as txn:
            content = _unpack_int(txn.get(b"content_bytes", db=self._meta))
        budget = budget if budget is not None else self.budget
        return SpaceBound(size, free, keep, self.room.fraction, budget, content)

    def archive_spool(self) -> BinaryIO:
        """Scratch space for an archive or its tail: in memory while small (a tail needs no
        file), then a nameless file in tmp/ that vanishes with the process; every write past
        memory makes room for itself first."""
        return cast(BinaryIO, _Spool(self))

    def index_blobs(self, blobs: list[PendingBlob]) -> list[bytes]:
        """Index blobs whose files are in content/ already, evicting what the budget needs in
        the same commit; returns the digests let go of (for unlink_trash). Called by the write
        protocol (fetch/ingest.py) with the content lock held; blocking."""
        protect = self.usage.open_sets() | {blob.set_id for blob in blobs}
        atimes, hits, misses = self.usage.take()
        try:
            return self._write(
                lambda txn: self._index_blobs(txn, blobs, protect, atimes, hits, misses)
            )
        except BaseException:
            self.usage.give_back(atimes, hits, misses)
            raise

    def place_files(
        self, blobs: list[PendingBlob] | list[PendingOsu], *, sync_dirs: bool = True
    ) -> list[Path]:
        """Rename fsynced temporary files into content/ unless the index has their bytes already
        (content lock held); the files renamed."""
        with self._read() as txn:
            indexed = {b.digest for b in blobs if txn.get(b.digest, db=self._content) is not None}
        renamed: list[Path] = []
        for blob in blobs:
            final = self.content_path(blob.digest)
            if blob.digest in indexed:
                blob.temp_path.unlink()  # the same bytes are stored already
                continue
            # A file here without an entry is an orphan of a crash: replace it with ours.
            try:
                os.replace(blob.temp_path, final)
            except FileNotFoundError:  # its folder's first file (a mkdir per file is slower)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(blob.temp_path, final)
            renamed.append(final)
        if sync_dirs:
            fsync_dirs({path.parent for path in renamed})
        return renamed

    def _index_blobs(
        self,
        txn: lmdb.Transaction,
        blobs: list[PendingBlob],
        protect: frozenset[int],
        atimes: dict[int, int],
        hits: int,
        misses: int,
    ) -> list[bytes]:
        total = _unpack_int(txn.get(b"content_bytes", db=self._meta))
        for blob in blobs:
            key = blob_key(blob.set_id, blob.entry)
            if txn.get(key, db=self._blobs) is not None:
                continue
            txn.put(key, blob.digest, db=self._blobs)
            known = txn.get(blob.digest, db=self._content)
            refs = msgpack.unpackb(known)[1] if known is not None else 0
            if known is None:
                total += blob.size
                txn.delete(blob.digest, db=self._trash)
            txn.put(blob.digest, msgpack.packb([blob.size, refs + 1]), db=self._content)
        now = time.time_ns()
        self._record_usage(txn, {**atimes, **dict.fromkeys({b.set_id for b in blobs}, now)})
        self._add_counters(txn, hits, misses)
        freed: list[bytes] = []
        if self.budget is not None and total > self.budget:
            total = self._evict_lru(txn, total, self.budget, protect, freed)
        txn.put(b"content_bytes", _pack_int(total), db=self._meta)
        return freed

    # .osu files by md5

    def osu_digest(self, md5: str) -> bytes | None:
        """The content digest of the .osu file with this md5 (hex), if it is stored."""
        with self._read() as txn:
            found = txn.get(bytes.fromhex(md5), db=self._osu)
        return None if found is None else bytes(found)

    def osu_path(self, md5: str) -> Path | None:
        digest = self.osu_digest(md5)
        return None if digest is None else self.content_path(digest)

    def osu_bytes(self, md5: str) -> bytes | None:
        """The .osu file with this md5, if stored (a vanished file counts as not stored)."""
        path = self.osu_path(md5)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def osu_known(self, md5s: Iterable[bytes]) -> set[bytes]:
        """Which of these md5s (16 bytes each) are stored, in one read."""
        with self._read() as txn:
            return {md5 for md5 in md5s if txn.get(md5, db=self._osu) is not None}

    def osu_count(self) -> int:
        with self._read() as txn:
            return txn.stat(self._osu)["entries"]

    def commit_osu(self, items: list[PendingOsu]) -> int:
        """Make written .osu files durable, move them into content/ and index them by md5, in
        one commit (an import's batch); returns how many were new. Blocking."""
        if not items:
            return 0
        with self.content_locked():
            try:
                # One sync of the file system for the batch's bytes, one for its renames: an
                # fsync of each file and of each of its thousands of folders costs more than
                # the import itself.
                syncfs(self.tmp_dir)
                renamed = self.place_files(items, sync_dirs=False)
                syncfs(self.content_dir)
                try:
                    return self._write(lambda txn: self._index_osu(txn, items))
                except BaseException:
                    for path in renamed:
                        path.unlink(missing_ok=True)
                    raise
            except BaseException:
                # Once placed, no temporary file is left (renamed, or dropped as stored).
                for item in items:
                    item.temp_path.unlink(missing_ok=True)
                raise

    def _index_osu(self, txn: lmdb.Transaction, items: list[PendingOsu]) -> int:
        total = _unpack_int(txn.get(b"content_bytes", db=self._meta))
        added = 0
        for item in items:
            if not txn.put(item.md5, item.digest, db=self._osu, overwrite=False):
                continue
            added += 1
            known = txn.get(item.digest, db=self._content)
            refs = msgpack.unpackb(known)[1] if known is not None else 0
            if known is None:
                total += item.size
                txn.delete(item.digest, db=self._trash)
            txn.put(item.digest, msgpack.packb([item.size, refs + 1]), db=self._content)
        txn.put(b"content_bytes", _pack_int(total), db=self._meta)
        return added

    def compact_osu_tables(self) -> int:
        """Rewrite the .osu and content tables in key order where an import's random md5s and
        digests left their pages under FULL_ENOUGH full (about two-thirds, as random inserts
        leave a B-tree): a grep over every set reads every page of both. Returns the pages
        freed. Blocking."""

        def compact(txn: lmdb.Transaction) -> int:
            freed = 0
            for db in (self._osu, self._content):
                before = _leaf_pages(txn, db)
                if before < COMPACT_MIN_PAGES:
                    continue
                rows = [(bytes(key), bytes(value)) for key, value in txn.cursor(db=db)]
                used = sum(_NODE_BYTES + len(key) + len(value) for key, value in rows)
                if used >= FULL_ENOUGH * before * (txn.stat(db)["psize"] - _PAGE_HEADER):
                    continue
                txn.drop(db, delete=False)
                txn.cursor(db=db).putmulti(rows, append=True)  # in order: every page filled
                freed += before - _leaf_pages(txn, db)
            return freed

        return self._write(compact)

    def link_blobs(self, set_id: int, links: list[tuple[int, bytes]]) -> None:
        """Index entries of a set as holding content already stored (a .osu known by md5),
        without copying a byte; an entry already indexed, or content gone, is left alone."""
        if not links:
            return
        with self.content_locked():
            self._write(lambda txn: self._link(txn, set_id, links))

    def _link(self, txn: lmdb.Transaction, set_id: int, links: Sequence[tuple[int, bytes]]) -> None:
        """link_blobs inside a write transaction."""
        if not links:
            return
        for entry, digest in links:
            key = blob_key(set_id, entry)
            known = txn.get(digest, db=self._content)
            if known is None or txn.get(key, db=self._blobs) is not None:
                continue
            size, refs = msgpack.unpackb(known)
            txn.put(key, digest, db=self._blobs)
            txn.put(digest, msgpack.packb([size, refs + 1]), db=self._content)
        self._record_usage(txn, {set_id: time.time_ns()})

    def drop_missing(self, set_id: int, entry: int, path: Path) -> bool:
        """Forget a blob whose content file has vanished (damage, or another mount's eviction
        seen half-way); True if the index pointed at `path` and no longer does."""
        with self.content_locked():
            if path.exists():
                return False

            freed: list[bytes] = []

            def drop(txn: lmdb.Transaction) -> bool:
                freed.clear()
                digest = txn.get(blob_key(set_id, entry), db=self._blobs)
                if digest is None or self.content_path(bytes(digest)) != path:
                    return False
                total = _unpack_int(txn.get(b"content_bytes", db=self._meta))
                total -= self._drop_blob(txn, set_id, entry, bytes(digest), freed)
                txn.put(b"content_bytes", _pack_int(total), db=self._meta)
                return True

            dropped = self._write(drop)
            self.unlink_trash(freed)
        if dropped:
            log.warning("set %d: member %d: %s is missing; entry dropped", set_id, entry, path)
        return dropped

    # access times and counters

    def flush_usage(self) -> None:
        """Write the access times and hit counters gathered in memory since the last flush."""
        atimes, hits, misses = self.usage.take()
        if not atimes and not hits and not misses:
            return

        def flush(txn: lmdb.Transaction) -> None:
            self._record_usage(txn, atimes)
            self._add_counters(txn, hits, misses)

        try:
            self._write(flush)
        except BaseException:
            self.usage.give_back(atimes, hits, misses)
            raise

    def _record_usage(self, txn: lmdb.Transaction, atimes: dict[int, int]) -> None:
        for set_id, atime in atimes.items():
            key = set_key(set_id)
            old = txn.get(key, db=self._usage)
            if old is not None:
                old_atime = _unpack_int(old)
                if old_atime >= atime:
                    continue
                txn.delete(_lru_key(old_atime, set_id), db=self._lru)
            elif not self._set_blobs(txn, set_id):
                continue  # evicted meanwhile (by another mount): nothing to order
            txn.put(key, _pack_int(atime), db=self._usage)
            txn.put(_lru_key(atime, set_id), b"", db=self._lru)

    def _add_counters(self, txn: lmdb.Transaction, hits: int, misses: int) -> None:
        for name, delta in ((b"hits", hits), (b"misses", misses)):
            if delta:
                value = _unpack_int(txn.get(name, db=self._meta)) + delta
                txn.put(name, _pack_int(value), db=self._meta)

    # eviction

    def _evict_lru(
        self,
        txn: lmdb.Transaction,
        total: int,
        limit: int,
        protect: frozenset[int],
        freed: list[bytes],
        why: str = "cache over its budget",
    ) -> int:
        """Drop least recently used sets until total <= limit; returns the new total."""
        done: list[bytes] = []
        for key in txn.cursor(db=self._lru).iternext(values=False):
            _atime, set_id = struct.unpack(">QQ", key)
            if set_id in protect or txn.get(set_key(set_id), db=self._pins) is not None:
                continue
            total -= self._drop_set(txn, set_id, freed)
            done.append(bytes(key))
            log.info("evicted set %d (%s)", set_id, why)
            if total <= limit:
                break
        for key in done:
            txn.delete(key, db=self._lru)
        return total

    def _drop_set(self, txn: lmdb.Transaction, set_id: int, freed: list[bytes]) -> int:
        """Forget a set's blobs and access time (not its lru key); returns the bytes freed."""
        released = 0
        for entry, digest in self._set_blobs(txn, set_id):
            released += self._drop_blob(txn, set_id, entry, digest, freed)
        txn.delete(set_key(set_id), db=self._usage)
        return released

    def _drop_blob(
        self, txn: lmdb.Transaction, set_id: int, entry: int, digest: bytes, freed: list[bytes]
    ) -> int:
        txn.delete(blob_key(set_id, entry), db=self._blobs)
        known = txn.get(digest, db=self._content)
        if known is None:
            return 0
        size, refs = msgpack.unpackb(known)
        if refs > 1:
            txn.put(digest, msgpack.packb([size, refs - 1]), db=self._content)
            return 0
        txn.delete(digest, db=self._content)
        txn.put(digest, b"", db=self._trash)
        freed.append(digest)
        return size

    def evict(self, set_ids: Iterable[int]) -> EvictReport:
        """Drop the named sets' cached members (not pinned ones); listings stay."""
        wanted = list(dict.fromkeys(set_ids))
        with self.content_locked():

            def evict(txn: lmdb.Transaction) -> tuple[EvictReport, list[bytes]]:
                report = EvictReport()
                total = _unpack_int(txn.get(b"content_bytes", db=self._meta))
                freed: list[bytes] = []
                for set_id in wanted:
                    if txn.get(set_key(set_id), db=self._pins) is not None:
                        report.pinned.append(set_id)
                        continue
                    if not self._set_blobs(txn, set_id):
                        report.not_cached.append(set_id)
                        continue
                    atime = txn.get(set_key(set_id), db=self._usage)
                    if atime is not None:
                        txn.delete(_lru_key(_unpack_int(atime), set_id), db=self._lru)
                    released = self._drop_set(txn, set_id, freed)
                    total -= released
                    report.evicted.append(set_id)
                    report.bytes_freed += released
                txn.put(b"content_bytes", _pack_int(total), db=self._meta)
                return report, freed

            report, freed = self._write(evict)
            if freed:
                crash_point("evict-indexed")
            self.unlink_trash(freed)
        return report

    def evict_to(self, limit: int, why: str = "cache over its budget") -> int:
        """Evict least recently used unpinned sets until the content fits `limit` bytes."""
        with self.content_locked():

            def shrink(txn: lmdb.Transaction) -> tuple[int, list[bytes]]:
                before = _unpack_int(txn.get(b"content_bytes", db=self._meta))
                freed: list[bytes] = []
                protect = self.usage.open_sets()
                after = self._evict_lru(txn, before, limit, protect, freed, why)
                txn.put(b"content_bytes", _pack_int(after), db=self._meta)
                return before - after, freed

            released, freed = self._write(shrink)
            self.unlink_trash(freed)
        return released

    def unlink_trash(self, digests: list[bytes]) -> None:
        """Unlink content files the index has let go of, then forget them (content lock held)."""
        if not digests:
            return
        for digest in digests:
            try:
                self.content_path(digest).unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                log.warning("could not remove %s: %s", self.content_path(digest), error)

        def forget(txn: lmdb.Transaction) -> None:
            for digest in digests:
                txn.delete(digest, db=self._trash)

        try:
            self._write(forget)
        except OsufsError as error:
            log.warning("could not clear the trash list (emptied again at next start): %s", error)

    def empty_trash(self) -> int:
        """Unlink files a crashed process let go of but did not unlink; returns how many."""
        with self._read() as txn:
            if not txn.stat(self._trash)["entries"]:
                return 0
        with self.content_locked():
            with self._read() as txn:
                listed = [bytes(k) for k in txn.cursor(db=self._trash).iternext(values=False)]
                # A digest indexed again since (by another process) keeps its file.
                gone = [d for d in listed if txn.get(d, db=self._content) is None]
            for digest in gone:
                with contextlib.suppress(FileNotFoundError):
                    self.content_path(digest).unlink()

            def forget(txn: lmdb.Transaction) -> None:
                for digest in listed:
                    txn.delete(digest, db=self._trash)

            self._write(forget)
        return len(gone)

    # pins

    def pin(self, set_ids: Iterable[int]) -> None:
        ids = list(set_ids)
        self._write(lambda txn: [txn.put(set_key(i), b"", db=self._pins) for i in ids])

    def unpin(self, set_ids: Iterable[int]) -> None:
        ids = list(set_ids)
        self._write(lambda txn: [txn.delete(set_key(i), db=self._pins) for i in ids])

    def pinned(self) -> set[int]:
        with self._read() as txn:
            cursor = txn.cursor(db=self._pins)
            return {struct.unpack(">Q", k)[0] for k in cursor.iternext(values=False)}

    # reports

    def content_bytes(self) -> int:
        with self._read() as txn:
            return _unpack_int(txn.get(b"content_bytes", db=self._meta))

    def stats(self) -> CacheStats:
        with self._read() as txn:
            sets: set[int] = set()
            members = 0
            for key in txn.cursor(db=self._blobs).iternext(values=False):
                sets.add(struct.unpack(">Q", key[:8])[0])
                members += 1
            logical = 0
            for value in txn.cursor(db=self._content).iternext(keys=False):
                size, refs = msgpack.unpackb(value)
                logical += size * refs
            budget = txn.get(b"budget", db=self._meta)
            return CacheStats(
                sets=len(sets),
                members=members,
                stored_bytes=_unpack_int(txn.get(b"content_bytes", db=self._meta)),
                logical_bytes=logical,
                content_files=txn.stat(self._content)["entries"],
                pinned=txn.stat(self._pins)["entries"],
                listed_sets=txn.stat(self._catalogue)["entries"],
                listings=txn.stat(self._listings)["entries"],
                hits=_unpack_int(txn.get(b"hits", db=self._meta)),
                misses=_unpack_int(txn.get(b"misses", db=self._meta)),
                budget=None if budget is None else _unpack_int(budget),
            )

    def cached_sets(self) -> list[SetUsage]:
        """Every set with cached members, in id order."""
        with self._read() as txn:
            content: dict[bytes, tuple[int, int]] = {}
            for key, value in txn.cursor(db=self._content):
                size, refs = msgpack.unpackb(value)
                content[bytes(key)] = (size, refs)
            found: dict[int, list[int]] = {}
            for key, digest in txn.cursor(db=self._blobs):
                size, refs = content.get(bytes(digest), (0, 0))
                row = found.setdefault(struct.unpack(">Q", key[:8])[0], [0, 0, 0])
                row[0] += 1
                row[1] += size
                row[2] += size if refs == 1 else 0
            return [
                SetUsage(
                    set_id,
                    members,
                    size,
                    own,
                    _unpack_int(txn.get(set_key(set_id), db=self._usage)),
                    txn.get(set_key(set_id), db=self._pins) is not None,
                )
                for set_id, (members, size, own) in sorted(found.items())
            ]

    # verification and garbage collection

    def verify(self, progress: Callable[[int], None] = lambda n: None) -> VerifyReport:
        """Re-hash every content file; drop blobs whose file is missing or damaged and report
        them; repair reference counts and the byte total. The hashing runs without the lock."""
        report = VerifyReport()
        with self._read() as txn:
            entries = [(bytes(k), msgpack.unpackb(v)[0]) for k, v in txn.cursor(db=self._content)]
        bad: dict[bytes, str] = {}
        for digest, size in entries:
            reason = _check_file(self.content_path(digest), digest, size)
            report.files_checked += 1
            report.bytes_checked += size
            progress(size)
            if reason is not None:
                bad[digest] = reason
        with self.content_locked():
            # Re-check under the lock: a file may have been evicted (and its entry with it).
            bad = {
                d: r
                for d, r in bad.items()
                if _check_file(self.content_path(d), d, _size_of(entries, d)) is not None
            }

            def repair(txn: lmdb.Transaction) -> None:
                report.damaged, report.dangling, report.refs_repaired = [], [], 0
                counts: Counter[bytes] = Counter()
                doomed: list[tuple[int, int, bytes]] = []
                for key, value in txn.cursor(db=self._blobs):
                    set_id, entry = struct.unpack(">QI", key)
                    digest = bytes(value)
                    if digest in bad:
                        if txn.get(digest, db=self._content) is not None:
                            report.damaged.append(Damage(set_id, entry, digest, bad[digest]))
                        doomed.append((set_id, entry, digest))
                    elif txn.get(digest, db=self._content) is None:
                        report.dangling.append((set_id, entry))
                        doomed.append((set_id, entry, digest))
                    else:
                        counts[digest] += 1
                for set_id, entry, _digest in doomed:
                    txn.delete(blob_key(set_id, entry), db=self._blobs)
                for key, value in list(txn.cursor(db=self._osu)):
                    digest = bytes(value)
                    if digest in bad or txn.get(digest, db=self._content) is None:
                        txn.delete(key, db=self._osu)
                    else:
                        counts[digest] += 1
                total = 0
                for key, value in list(txn.cursor(db=self._content)):
                    digest = bytes(key)
                    size, refs = msgpack.unpackb(value)
                    if digest in bad or not counts[digest]:
                        txn.delete(digest, db=self._content)
                        txn.put(digest, b"", db=self._trash)
                        continue
                    if refs != counts[digest]:
                        report.refs_repaired += 1
                        txn.put(digest, msgpack.packb([size, counts[digest]]), db=self._content)
                    total += size
                txn.put(b"content_bytes", _pack_int(total), db=self._meta)
                for set_id in {s for s, _e, _d in doomed}:
                    if not self._set_blobs(txn, set_id):
                        atime = txn.get(set_key(set_id), db=self._usage)
                        if atime is not None:
                            txn.delete(_lru_key(_unpack_int(atime), set_id), db=self._lru)
                        txn.delete(set_key(set_id), db=self._usage)

            self._write(repair)
            with self._read() as txn:
                trash = [bytes(k) for k in txn.cursor(db=self._trash).iternext(values=False)]
            self.unlink_trash(trash)
        return report

    def gc(self) -> GcReport:
        """Remove content files no entry refers to, empty directories, and orphan temp dirs."""
        report = GcReport()
        report.temp_dirs_removed = _locked_orphan_sweep(self._tmp_root)
        self.empty_trash()
        candidates: list[Path] = []
        for path in self.content_dir.rglob("*"):
            if path.is_dir():
                continue
            if not _DIGEST_NAME.fullmatch(path.name) or path != self.content_path(
                bytes.fromhex(path.name)
            ):
                candidates.append(path)  # nothing is ever stored under such a name
                continue
            with self._read() as txn:
                if txn.get(bytes.fromhex(path.name), db=self._content) is None:
                    candidates.append(path)
        with self.content_locked():
            for path in candidates:
                if _DIGEST_NAME.fullmatch(path.name) and path == self.content_path(
                    bytes.fromhex(path.name)
                ):
                    with self._read() as txn:
                        if txn.get(bytes.fromhex(path.name), db=self._content) is not None:
                            continue  # indexed since the walk
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                report.files_removed += 1
                report.bytes_removed += size
                crash_point("gc-unlinked")
            for folder in sorted(self.content_dir.glob("*/*"), reverse=True) + sorted(
                self.content_dir.glob("*")
            ):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only succeeds when empty
        return report


def _leaf_pages(txn: lmdb.Transaction, db: lmdb._Database) -> int:
    return txn.stat(db)["leaf_pages"]


def _size_of(entries: list[tuple[bytes, int]], digest: bytes) -> int:
    return next(size for d, size in entries if d == digest)


def _check_file(path: Path, digest: bytes, size: int) -> str | None:
    """Why a content file does not hold the bytes its name promises, or None if it does."""
    try:
        with open(path, "rb") as file:
            hasher = hashlib.sha256()
            length = 0
            while chunk := file.read(HASH_CHUNK):
                hasher.update(chunk)
                length += len(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as error:
        return f"unreadable ({error.strerror})"
    if length != size:
        return f"size {length}, expected {size}"
    if hasher.digest() != digest:
        return "contents do not match their hash"
    return None


class HashingWriter:
    """A write callback that hashes and counts what it writes to a file."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def __call__(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as error:
            raise _disk_error(error) from error
        self.hash.update(data)
        self.size += len(data)
        if self.size >= 1 << 16:
            crash_point("temp-written")


class _Spool(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
    """A spooled file whose writes on disk stay above the free-space bound."""

    def __init__(self, store: Store) -> None:
        super().__init__(max_size=SPOOL_IN_MEMORY, dir=store.tmp_dir)
        self._store = store

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        if self._rolled or self.tell() + len(data) > SPOOL_IN_MEMORY:
            self._store.make_room(len(data))
        return super().write(data)


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


def _disk_error(error: OSError) -> Exception:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return OsufsError(errno.ENOSPC, "the cache's disk is full")
    return error


def fsync_file(file: BinaryIO) -> None:
    try:
        file.flush()
        os.fsync(file.fileno())
    except OSError as error:
        raise _disk_error(error) from error


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(folder: Path) -> None:
    """Flush the whole file system holding `folder` (syncfs(2))."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise _disk_error(OSError(code, os.strerror(code)))
    finally:
        os.close(fd)


def fsync_dirs(folders: set[Path]) -> None:
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _startup_lock(tmp_root: Path) -> Iterator[None]:
    """tmp/.lock: held while a process sweeps orphans or makes its own directory, so a sweep
    never sees a directory whose lock is not taken yet."""
    fd = os.open(tmp_root / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_temp_dir(tmp_root: Path) -> tuple[Path, int]:
    """Sweep orphans, then make and lock this process's temporary directory."""
    with _startup_lock(tmp_root):
        _remove_orphan_temp_dirs(tmp_root)
        folder = tmp_root / f"{os.getpid()}-{secrets.token_hex(4)}"
        folder.mkdir()
        lock = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return folder, lock


def _locked_orphan_sweep(tmp_root: Path) -> int:
    with _startup_lock(tmp_root):
        return _remove_orphan_temp_dirs(tmp_root)


def _remove_orphan_temp_dirs(tmp_root: Path) -> int:
    """Remove temporary directories of processes that are gone (their lock is free)."""
    removed = 0
    for folder in tmp_root.iterdir():
        if not folder.is_dir():
            continue
        lock_path = folder / ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live process owns it
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed


def now_ns() -> int:
    return time.time_ns()
