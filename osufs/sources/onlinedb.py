"""lazer's `online.db`: every ranked difficulty's set, beatmap id, md5, time and file name.

osu! lazer downloads `https://assets.ppy.sh/client-resources/online.db.bz2`, an SQLite file, and
keeps it as `online.db` in its data folder (ppy/osu `LocalCachedBeatmapMetadataSource.cs`).
Tables: `osu_beatmaps` (`beatmapset_id`, `beatmap_id`, `approved`, `user_id`, `checksum`,
`last_update`, `filename`), `osu_beatmapsets` (`beatmapset_id`, `submit_date`, `approved_date`;
from version 2) and `schema_version` (`number`; absent in version 1). It names no artist or
title: set folders are named from the .osu files' own metadata once their bytes are at hand.

osufs reads its own working copy, `<cache>/onlinedb/online.db`, with two indexes added (by set
and by md5), so a set's difficulties are one indexed query. The copy comes from a file (lazer's,
or one named with `onlinedb=PATH`, copied again when it changes) or from a URL (downloaded,
bzip2-decompressed as it streams, refreshed when older than a week). A new copy replaces the
old one only once it opens and has a known schema: until then the old one serves.
"""

from __future__ import annotations

import bz2
import calendar
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import httpx
import trio

from osufs.errors import OsufsError
from osufs.names import set_folder_name
from osufs.osufile import parse_osu
from osufs.sources.base import (
    CHUNK,
    CatalogueEntry,
    Difficulty,
    SetDifficulties,
    Source,
    SourceMissing,
)

log = logging.getLogger(__name__)

ONLINE_DB_URL = "https://assets.ppy.sh/client-resources/online.db.bz2"
KNOWN_VERSIONS = (1, 2)
# Lazer trusts only these `approved` values: ranked, approved, loved.
TRUSTED = (1, 2, 4)
# --catalogue: which `approved` values the root lists (None: every row).
STATUSES: dict[str, tuple[int, ...] | None] = {
    "ranked": (1, 2),
    "loved": (4,),
    "all": None,
}
REFRESH_AFTER = 7 * 86400.0
WORKING_DIR = "onlinedb"
WORKING_NAME = "online.db"
SUMMARY = "osufs_sets"  # added to the working copy: one row a set
# A downloaded online.db larger than this is refused (today's is about 100 MB).
MAX_ONLINE_DB = 4 << 30


class OnlineDbError(OsufsError):
    """online.db cannot be used: missing, damaged, or of a schema this osufs does not know."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


def lazer_data_folder() -> Path:
    """lazer's data folder on Linux: $XDG_DATA_HOME/osu, else ~/.local/share/osu."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(base) / "osu"


@dataclass(frozen=True, slots=True)
class Row:
    """One difficulty as online.db has it."""

    set_id: int
    beatmap_id: int
    approved: int
    md5: str
    updated_ns: int
    filename: str


class OnlineDb:
    """An open working copy of online.db. Queries are small and indexed (microseconds), so the
    event loop calls them directly; a lock makes the one connection safe from worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.version = schema_version(path)
        self._connection = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False
        )
        self._lock = threading.Lock()
        # A copy made by an osufs before the summary table is read the slow way.
        found = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        self._summarised = bool(self._query(found, (SUMMARY,)))

    def close(self) -> None:
        self._connection.close()

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._connection.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as error:
                raise OnlineDbError(f"{self.path}: {error}") from None

    def sets(self, statuses: tuple[int, ...] | None) -> list[tuple[int, int]]:
        """(set id, newest last_update in ns) of every set with a row of these statuses, in
        id order; the time counts every row of the set."""
        if not self._summarised:
            return [
                (set_id, time_ns(updated))
                for set_id, updated, approved in _set_rows(self._connection)
                if statuses is None or set(approved).intersection(statuses)
            ]
        where = "" if statuses is None else f"WHERE statuses & {_mask(statuses)}"
        rows = self._query(f"SELECT beatmapset_id, updated_ns FROM {SUMMARY} {where}")
        return [(int(set_id), int(updated)) for set_id, updated in rows]

    def set_ids(self, statuses: tuple[int, ...] | None) -> list[int]:
        """The ids sets() gives, in id order, read without their times (a mount's start lists
        every set: 60,000 ids in a third of the time)."""
        if not self._summarised:
            return [set_id for set_id, _updated in self.sets(statuses)]
        where = "" if statuses is None else f"WHERE statuses & {_mask(statuses)}"
        rows = self._query(f"SELECT beatmapset_id FROM {SUMMARY} {where} ORDER BY beatmapset_id")
        return [set_id for (set_id,) in rows]

    def beatmaps(self, set_id: int) -> list[Row]:
        """The set's difficulties, by beatmap id."""
        rows = self._query(
            "SELECT beatmapset_id, beatmap_id, approved, checksum, last_update, filename "
            "FROM osu_beatmaps WHERE beatmapset_id = ? ORDER BY beatmap_id",
            (set_id,),
        )
        return [_row(found) for found in rows]

    def by_md5(self) -> dict[bytes, tuple[int, int]]:
        """md5 (16 bytes) -> (set id, beatmap id) of every row: what an import matches files
        against (about 60 bytes a row in memory)."""
        found: dict[bytes, tuple[int, int]] = {}
        for set_id, beatmap_id, checksum in self._query(
            "SELECT beatmapset_id, beatmap_id, checksum FROM osu_beatmaps"
        ):
            try:
                found[bytes.fromhex(str(checksum))] = (int(set_id), int(beatmap_id))
            except ValueError:
                continue
        return found


def _row(found: tuple) -> Row:
    set_id, beatmap_id, approved, checksum, updated, filename = found
    return Row(
        int(set_id),
        int(beatmap_id),
        int(approved or 0),
        str(checksum or "").lower(),
        time_ns(updated),
        str(filename or ""),
    )


def time_ns(value: object) -> int:
    """A `last_update` as nanoseconds: a MySQL-style `YYYY-MM-DD HH:MM:SS` (UTC), an ISO 8601
    time, or unix seconds; 0 when unreadable."""
    if isinstance(value, int | float):
        return int(value) * 1_000_000_000
    text = str(value or "").strip()
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1))
    except ValueError:
        return int(text) * 1_000_000_000 if text.isdigit() else 0
    if parsed.tzinfo is not None:
        return int(parsed.timestamp()) * 1_000_000_000
    return calendar.timegm(parsed.timetuple()) * 1_000_000_000


def schema_version(path: Path) -> int:
    """The file's schema version (1 when it has no `schema_version` table, as lazer reads it);
    OnlineDbError for a file that is not such a database or of a version not known here."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            if "osu_beatmaps" not in tables:
                raise OnlineDbError(f"{path}: not lazer's online.db (no osu_beatmaps table)")
            version = 1
            if "schema_version" in tables:
                found = db.execute("SELECT number FROM schema_version").fetchone()
                if found is None:
                    raise OnlineDbError(f"{path}: its schema_version table is empty")
                version = int(found[0])
    except sqlite3.DatabaseError as error:
        raise OnlineDbError(f"{path}: not an SQLite database ({error})") from None
    if version not in KNOWN_VERSIONS:
        known = ", ".join(str(v) for v in KNOWN_VERSIONS)
        raise OnlineDbError(
            f"{path}: online.db schema version {version} is not one this osufs knows ({known}); "
            "update osufs"
        )
    return version


def _add_indexes(path: Path) -> None:
    """Indexes by set and by md5, and the summary of sets a mount's root reads whole (one row a
    set, times already parsed: 60,000 sets in milliseconds, not a second of GROUP BY)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE INDEX IF NOT EXISTS osufs_by_set ON osu_beatmaps (beatmapset_id)")
        db.execute("CREATE INDEX IF NOT EXISTS osufs_by_md5 ON osu_beatmaps (checksum)")
        db.execute(f"DROP TABLE IF EXISTS {SUMMARY}")
        db.execute(
            f"CREATE TABLE {SUMMARY} (beatmapset_id INTEGER PRIMARY KEY, statuses INTEGER, "
            "updated_ns INTEGER)"
        )
        db.executemany(
            f"INSERT INTO {SUMMARY} VALUES (?, ?, ?)",
            [
                (set_id, _mask(approved), time_ns(updated))
                for set_id, updated, approved in _set_rows(db)
            ],
        )
        db.commit()


def _set_rows(db: sqlite3.Connection) -> list[tuple[int, object, list[int]]]:
    """(set id, newest last_update, its rows' `approved` values) of every set, by id."""
    try:
        rows = db.execute(
            "SELECT beatmapset_id, MAX(last_update), GROUP_CONCAT(DISTINCT approved) "
            "FROM osu_beatmaps GROUP BY beatmapset_id ORDER BY beatmapset_id"
        ).fetchall()
    except sqlite3.DatabaseError as error:
        raise OnlineDbError(f"online.db: {error}") from None
    found = []
    for set_id, updated, approved in rows:
        values = [int(a) for a in str(approved or 0).split(",") if a.lstrip("-").isdigit()]
        if int(set_id) > 0:
            found.append((int(set_id), updated, values))
    return found


def _mask(statuses: Iterable[int]) -> int:
    """`approved` values (-2 graveyard to 4 loved) as bits, for the summary's `statuses`."""
    return sum({1 << (status + 2) for status in statuses if -2 <= status < 60})


class WorkingCopy:
    """`<cache>/onlinedb/online.db` and where it came from (`origin.json`)."""

    def __init__(self, cache_dir: Path) -> None:
        self.folder = cache_dir / WORKING_DIR
        self.path = self.folder / WORKING_NAME
        self._origin = self.folder / "origin.json"

    def exists(self) -> bool:
        return self.path.is_file()

    def origin(self) -> dict[str, object]:
        try:
            found = json.loads(self._origin.read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def age(self) -> float:
        at = self.origin().get("at")
        return time.time() - at if isinstance(at, int | float) else float("inf")

    def _temp(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f".{WORKING_NAME}.{os.getpid()}.new"

    def install(self, temp: Path, origin: dict[str, object]) -> None:
        """Check a new copy (schema, indexes) and put it in place of the old, which stays if
        the new one does not check out."""
        try:
            schema_version(temp)
            _add_indexes(temp)
            with open(temp, "rb+") as file:
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        staged = self._origin.with_suffix(".new")
        staged.write_text(json.dumps({**origin, "at": time.time()}))
        os.replace(staged, self._origin)

    def copy_from(self, source: Path) -> None:
        """Copy a local online.db (lazer's) unless the copy already has this one."""
        try:
            info = source.stat()
        except OSError as error:
            raise OnlineDbError(f"{source}: {error.strerror}") from None
        origin = {"path": str(source.resolve()), "size": info.st_size, "mtime": info.st_mtime_ns}
        seen = self.origin()
        if self.exists() and all(seen.get(key) == value for key, value in origin.items()):
            return
        temp = self._temp()
        try:
            shutil.copyfile(source, temp)
        except BaseException:  # a full disk, say: no partial copy left to fill it
            temp.unlink(missing_ok=True)
            raise
        self.install(temp, origin)
        log.info("online.db: copied %s (%d bytes)", source, info.st_size)

    def open_temp(self) -> tuple[Path, BinaryIO]:
        temp = self._temp()
        return temp, open(temp, "wb")


async def download(client: httpx.AsyncClient, url: str, copy: WorkingCopy) -> None:
    """Fetch online.db.bz2, decompressing as it streams; installed once it checks out."""
    temp, sink = copy.open_temp()
    decompressor = bz2.BZ2Decompressor()
    written = 0
    try:
        with sink:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise OnlineDbError(f"{url}: HTTP {response.status_code}")
                async for chunk in response.aiter_raw(CHUNK):
                    if decompressor.eof:
                        break  # trailing bytes after the stream: ignored, as bunzip2 warns
                    try:
                        data = decompressor.decompress(chunk)
                    except OSError as error:
                        raise OnlineDbError(f"{url}: not a bzip2 stream ({error})") from None
                    written += len(data)
                    if written > MAX_ONLINE_DB:
                        raise OnlineDbError(f"{url}: more than {MAX_ONLINE_DB} bytes unpacked")
                    sink.write(data)
            if not decompressor.eof:
                raise OnlineDbError(f"{url}: the bzip2 stream was cut short")
        await trio.to_thread.run_sync(copy.install, temp, {"url": url})
    except httpx.HTTPError as error:
        raise OnlineDbError(f"{url}: {error or type(error).__name__}") from None
    finally:
        temp.unlink(missing_ok=True)
    log.info("online.db: downloaded from %s (%d bytes)", url, written)


async def ensure_copy(
    copy: WorkingCopy, location: str, client: httpx.AsyncClient, *, offline: bool = False
) -> None:
    """A working copy of the online.db at `location`: a file is copied (again when it
    changed); a URL is downloaded when there is no copy yet."""
    if not location.startswith(("http://", "https://")):
        await trio.to_thread.run_sync(copy.copy_from, Path(location))
    elif not copy.exists():
        if offline:
            raise OnlineDbError(
                f"no online.db in {copy.folder} and --offline: mount once online or name a "
                "file (--source onlinedb=PATH)"
            )
        await download(client, location, copy)


class OnlineDbSource(Source):
    """Lists sets and their difficulties from online.db, at no cost: no request at all.

    It serves .osu bytes only from what is at hand locally (`local`: md5 -> bytes, the store's
    .osu files by md5, filled by `osufs cache import` or by any fetch by beatmap id), and names
    a set from those bytes' metadata. It serves no archives.
    """

    kind = "onlinedb"
    serves_archives = False
    serves_difficulties = True
    # Its listings cost nothing, so they are used even where an archive source could list.
    free_difficulties = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        *,
        cache_dir: Path,
        local: Callable[[str], bytes | None],
        catalogue: str | None = None,
        offline: bool = False,
    ) -> None:
        super().__init__(client, base)
        self.copy = WorkingCopy(cache_dir)
        self.local = local
        self.statuses = TRUSTED if catalogue is None else STATUSES.get(catalogue, TRUSTED)
        self.listing_none = catalogue == "none"
        self.offline = offline
        self._db: OnlineDb | None = None

    @property
    def label(self) -> str:
        return "onlinedb"

    @property
    def is_url(self) -> bool:
        return self.base.startswith(("http://", "https://"))

    def download_url(self, set_id: int) -> str:
        raise OsufsError.io(f"{self.label}: online.db serves no archives")

    @property
    def db(self) -> OnlineDb:
        if self._db is None:
            raise OnlineDbError("online.db is not open")
        return self._db

    async def prepare(self) -> None:
        """Have a working copy and open it (a stale one is refreshed later, in the background,
        by `refresh`)."""
        await ensure_copy(self.copy, self.base, self.client, offline=self.offline)
        self._reopen()

    def _reopen(self) -> None:
        fresh = OnlineDb(self.copy.path)
        old, self._db = self._db, fresh
        if old is not None:
            old.close()
        log.info("online.db: schema version %d (%s)", fresh.version, self.copy.path)

    async def probe(self) -> str:
        """A local file, opened by `prepare`: nothing to ask."""
        return f"a local copy ({self.copy.path})"

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def refresh(self) -> None:
        """Download a new copy when this one is older than a week; a failed download keeps
        the old copy and says why."""
        if not self.is_url or self.offline or self.copy.age() < REFRESH_AFTER:
            return
        try:
            await download(self.client, self.base, self.copy)
        except OsufsError as error:
            log.warning("online.db: kept the copy of %s: %s", _when(self.copy), error)
            return
        self._reopen()

    def listed_sets(self) -> list[int]:
        return [] if self.listing_none else self.db.set_ids(self.statuses)

    async def catalogue(self) -> list[CatalogueEntry]:
        """Nothing named here (the catalogue names `listed_sets`); a week-old copy is
        downloaded again first."""
        await self.refresh()
        return []

    def set_time(self, rows: list[Row]) -> int:
        return max((row.updated_ns for row in rows), default=0)

    async def set_difficulties(
        self, set_id: int, *, background: bool = False
    ) -> SetDifficulties | None:
        rows = self.db.beatmaps(set_id)
        if not rows:
            return None
        difficulties = [
            Difficulty(row.beatmap_id, row.md5, "", filename=row.filename)
            for row in rows
            if row.beatmap_id > 0 and len(row.md5) == 32
        ]
        return SetDifficulties(self.set_time(rows), "", "", "", difficulties)

    async def beatmap_file(self, beatmap_id: int, md5: str, *, background: bool = False) -> bytes:
        data = self.local(md5)
        if data is None or hashlib.md5(data).hexdigest() != md5:
            raise SourceMissing(f"{self.label}: beatmap {beatmap_id} is not imported")
        return data

    async def folder_name(self, set_id: int) -> str | None:
        entry = await self.catalogue_entry(set_id)
        return entry.folder if entry else None

    async def catalogue_entry(self, set_id: int) -> CatalogueEntry | None:
        """The set's name from the metadata of the first of its .osu files at hand."""
        rows = self.db.beatmaps(set_id)
        for row in rows:
            data = self.local(row.md5) if len(row.md5) == 32 else None
            if data is None:
                continue
            meta = parse_osu(data)
            if meta.artist or meta.title:
                folder = set_folder_name(set_id, meta.artist, meta.title)
                return CatalogueEntry(set_id, folder, self.set_time(rows))
        return None


def _when(copy: WorkingCopy) -> str:
    at = copy.origin().get("at")
    return time.strftime("%Y-%m-%d", time.localtime(at)) if isinstance(at, int | float) else "?"
