"""The cache: an LMDB index over content-addressed files.

Layout under the cache directory:
  index/                LMDB environment (see the table below)
  content/ab/cd/<hash>  member contents, named by SHA-256, stored once however many sets share them
  tmp/<pid>-<rand>/     this process's temporary files; a directory whose lock no process holds is
                        an orphan of a crashed mount and is removed at start

Index databases (keys are big-endian so cursors walk sets in id order):
  catalogue  set id -> CatalogueRecord      every set the mount lists
  listings   set id -> SetListing bytes     a set's tree once known
  blobs      set id + entry -> sha256       which content file holds a cached member
  content    sha256 -> [size, refs]         refs counts blobs pointing at it
  negative   set id -> expiry (unix time)   sets the sources said do not exist
  meta       b"schema" -> version

Writes are atomic: the bytes go to a temporary file, are fsynced and renamed into content/,
and only then is the index committed, so an index entry never points at a partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import lmdb
import msgpack

from osufs.listing import SetListing

SCHEMA_VERSION = 1
INITIAL_MAP_SIZE = 256 << 20
LISTING_CACHE_SIZE = 256

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


def set_key(set_id: int) -> bytes:
    return struct.pack(">Q", set_id)


def blob_key(set_id: int, entry: int) -> bytes:
    return struct.pack(">QI", set_id, entry)


class Store:
    """The persistent cache of one cache directory; safe to share between processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.content_dir = root / "content"
        tmp_root = root / "tmp"
        for folder in (root, self.content_dir, tmp_root):
            folder.mkdir(parents=True, exist_ok=True)
        _remove_orphan_temp_dirs(tmp_root)
        self.tmp_dir = tmp_root / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp_dir.mkdir()
        self._tmp_lock = os.open(self.tmp_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._tmp_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # metasync=False keeps integrity and halves fsyncs; a system crash may undo the last commit.
        self.env = lmdb.open(
            str(root / "index"), map_size=INITIAL_MAP_SIZE, max_dbs=8, metasync=False
        )
        self._catalogue = self.env.open_db(b"catalogue")
        self._listings = self.env.open_db(b"listings")
        self._blobs = self.env.open_db(b"blobs")
        self._content = self.env.open_db(b"content")
        self._negative = self.env.open_db(b"negative")
        self._meta = self.env.open_db(b"meta")
        self._check_schema()
        self._listing_cache: OrderedDict[int, SetListing] = OrderedDict()

    def close(self) -> None:
        self.env.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        os.close(self._tmp_lock)

    def _check_schema(self) -> None:
        def check(txn: lmdb.Transaction) -> None:
            found = txn.get(b"schema", db=self._meta)
            if found is None:
                txn.put(b"schema", str(SCHEMA_VERSION).encode(), db=self._meta)
            elif int(found) != SCHEMA_VERSION:
                raise StoreError(
                    f"cache {self.root} has schema {int(found)}, this osufs uses "
                    f"{SCHEMA_VERSION}; move it away or choose another --cache-dir"
                )

        self._write(check)

    def _write(self, action: Callable[[lmdb.Transaction], T]) -> T:
        """Run one write transaction, growing the map when it fills."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    return action(txn)
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                # Another process grew the map; adopt its size.
                self.env.set_mapsize(0)

    @contextlib.contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        try:
            txn = self.env.begin()
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)
            txn = self.env.begin()
        try:
            yield txn
        finally:
            txn.abort()

    # catalogue

    def catalogue_get(self, set_id: int) -> CatalogueRecord | None:
        with self._read() as txn:
            data = txn.get(set_key(set_id), db=self._catalogue)
        return None if data is None else CatalogueRecord.unpack(data)

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

    # negative cache

    def negative_until(self, set_id: int) -> float:
        with self._read() as txn:
            data = txn.get(set_key(set_id), db=self._negative)
        return 0.0 if data is None else float(msgpack.unpackb(data))

    def negative_put(self, set_id: int, until: float) -> None:
        self._write(lambda txn: txn.put(set_key(set_id), msgpack.packb(until), db=self._negative))

    # listings

    def listing_get(self, set_id: int) -> SetListing | None:
        """A set's tree, decoded once and kept in a small LRU (call from the event loop only)."""
        cached = self._listing_cache.get(set_id)
        if cached is not None:
            self._listing_cache.move_to_end(set_id)
            return cached
        listing = self.listing_get_uncached(set_id)
        if listing is not None:
            self._listing_cache[set_id] = listing
            if len(self._listing_cache) > LISTING_CACHE_SIZE:
                self._listing_cache.popitem(last=False)
        return listing

    def listing_get_uncached(self, set_id: int) -> SetListing | None:
        """A set's tree straight from the index; safe from worker threads."""
        with self._read() as txn:
            data = txn.get(set_key(set_id), db=self._listings)
        return None if data is None else SetListing.from_bytes(data)

    def listing_put(self, set_id: int, listing: SetListing) -> SetListing:
        """Store a set's tree unless one is already stored; returns the one that stands."""
        data = listing.to_bytes()

        def put(txn: lmdb.Transaction) -> bytes:
            if txn.put(set_key(set_id), data, db=self._listings, overwrite=False):
                return data
            return bytes(txn.get(set_key(set_id), db=self._listings))

        stored = self._write(put)
        return listing if stored == data else SetListing.from_bytes(stored)

    # member contents

    def content_path(self, digest: bytes) -> Path:
        name = digest.hex()
        return self.content_dir / name[:2] / name[2:4] / name

    def blob_path(self, set_id: int, entry: int) -> Path | None:
        with self._read() as txn:
            digest = txn.get(blob_key(set_id, entry), db=self._blobs)
        return None if digest is None else self.content_path(bytes(digest))

    def cached_entries(self, set_id: int) -> set[int]:
        prefix = set_key(set_id)
        found: set[int] = set()
        with self._read() as txn:
            cursor = txn.cursor(db=self._blobs)
            if cursor.set_range(prefix):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    found.add(struct.unpack(">I", key[8:])[0])
        return found

    def new_temp(self) -> tuple[Path, BinaryIO]:
        path = self.tmp_dir / secrets.token_hex(8)
        return path, open(path, "xb")

    def commit_blobs(self, blobs: list[PendingBlob]) -> None:
        """Move fsynced temporary files into content/ and index them; blocking, run in a thread."""
        for blob in blobs:
            final = self.content_path(blob.digest)
            if final.exists():
                blob.temp_path.unlink()  # the same bytes are stored already
                continue
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(blob.temp_path, final)
        _fsync_dirs({self.content_path(blob.digest).parent for blob in blobs})

        def index(txn: lmdb.Transaction) -> None:
            for blob in blobs:
                key = blob_key(blob.set_id, blob.entry)
                if txn.get(key, db=self._blobs) is not None:
                    continue
                txn.put(key, blob.digest, db=self._blobs)
                known = txn.get(blob.digest, db=self._content)
                refs = msgpack.unpackb(known)[1] if known is not None else 0
                txn.put(blob.digest, msgpack.packb([blob.size, refs + 1]), db=self._content)

        self._write(index)


class HashingWriter:
    """A write callback that hashes and counts what it writes to a file."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def __call__(self, data: bytes) -> None:
        self.file.write(data)
        self.hash.update(data)
        self.size += len(data)


def fsync_file(file: BinaryIO) -> None:
    file.flush()
    os.fsync(file.fileno())


def _fsync_dirs(folders: set[Path]) -> None:
    for folder in folders:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_orphan_temp_dirs(tmp_root: Path) -> None:
    """Remove temporary directories of processes that are gone (their lock is free)."""
    for folder in tmp_root.iterdir():
        lock_path = folder / ".lock"
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except OSError:
            shutil.rmtree(folder, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live mount owns it
        finally:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)


def now_ns() -> int:
    return time.time_ns()
