"""Fixtures for the bulk sources (issue 17): a synthetic lazer online.db, a data.ppy.sh-style
`.osu` tarball, folders of `.osz` and an osu! stable Songs folder, all built from the sample
library so an archive served later holds the very bytes the dump had."""

from __future__ import annotations

import bz2
import hashlib
import io
import sqlite3
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from osufs.names import set_folder_name
from osufs.osufile import OsuMetadata, difficulty_filename, parse_osu, write_osu
from osufs.samples import build_sample_library

# data.ppy.sh names its dumps by date; file names inside are unverified, so tests use both
# beatmap ids and odd names, and osufs identifies files by md5 alone.
DUMP = "2026_12_01_osu_files"


@dataclass(frozen=True)
class Beatmap:
    set_id: int
    beatmap_id: int
    approved: int
    md5: str
    last_update: str  # as online.db has it: "YYYY-MM-DD HH:MM:SS", UTC
    filename: str
    data: bytes


def write_online_db(path: Path, beatmaps: list[Beatmap], *, version: int | None = 2) -> None:
    """An SQLite file with lazer's online.db tables (`version` None: the first schema, which
    has neither `schema_version` nor `osu_beatmapsets`)."""
    path.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE osu_beatmaps (beatmap_id INTEGER PRIMARY KEY, beatmapset_id INTEGER, "
        "user_id INTEGER, filename TEXT, checksum TEXT, approved INTEGER, last_update TEXT)"
    )
    db.executemany(
        "INSERT INTO osu_beatmaps VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (b.beatmap_id, b.set_id, 2, b.filename, b.md5, b.approved, b.last_update)
            for b in beatmaps
        ],
    )
    if version is not None:
        db.execute(
            "CREATE TABLE osu_beatmapsets (beatmapset_id INTEGER PRIMARY KEY, submit_date TEXT, "
            "approved_date TEXT)"
        )
        db.executemany(
            "INSERT OR IGNORE INTO osu_beatmapsets VALUES (?, ?, ?)",
            [(b.set_id, b.last_update, b.last_update) for b in beatmaps],
        )
        db.execute("CREATE TABLE schema_version (number INTEGER)")
        db.execute("INSERT INTO schema_version VALUES (?)", (version,))
    db.commit()
    db.close()


def write_tarball(path: Path, files: dict[str, bytes], compresslevel: int = 9) -> None:
    """A `.tar.bz2` of `files` (name -> bytes), as data.ppy.sh publishes its dumps (level 1:
    bzip2 blocks of 100 kB, so damage late in a small tarball spares its first files)."""
    with tarfile.open(path, "w:bz2", compresslevel=compresslevel) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{DUMP}/{name}")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))


def _stamp(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix))


def beatmaps_of(archives: Path) -> list[Beatmap]:
    """Every .osu of the sample archives as online.db would describe it: approved 1 (ranked),
    except the second set's, 4 (loved), and the last set's, 0 (graveyard)."""
    found: list[Beatmap] = []
    paths = sorted(archives.glob("*.osz"), key=lambda p: int(p.stem))
    for number, path in enumerate(paths):
        set_id = int(path.stem)
        approved = 0 if number == len(paths) - 1 else 4 if number == 1 else 1
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if "/" in info.filename or not info.filename.lower().endswith(".osu"):
                    continue
                data = zf.read(info)
                meta = parse_osu(data)
                assert meta.beatmap_id is not None
                updated = 1_600_000_000 + set_id % 1000 * 3600 + meta.beatmap_id % 10
                found.append(
                    Beatmap(
                        set_id,
                        meta.beatmap_id,
                        approved,
                        hashlib.md5(data).hexdigest(),
                        _stamp(updated),
                        info.filename,
                        data,
                    )
                )
    return found


@dataclass(frozen=True)
class Bulk:
    archives: Path  # <id>.osz, as a mirror would serve them
    online_db: Path
    tarball: Path
    beatmaps: list[Beatmap]
    edited: bytes  # a .osu in the tarball that no beatmap has (a player's edit)

    def sets(self, *statuses: int) -> list[int]:
        return sorted({b.set_id for b in self.beatmaps if not statuses or b.approved in statuses})


def build_bulk(folder: Path, count: int = 12) -> Bulk:
    archives = folder / "archives"
    build_sample_library(archives, count=count, audio_size=20_000)
    beatmaps = beatmaps_of(archives)
    online_db = folder / "online.db"
    write_online_db(online_db, beatmaps)
    edited = beatmaps[0].data.replace(b"[Metadata]", b"[Metadata]\r\nTags:my edit", 1)
    files = {f"{b.beatmap_id}.osu": b.data for b in beatmaps}
    files["edited.osu"] = edited
    tarball = folder / f"{DUMP}.tar.bz2"
    write_tarball(tarball, files)
    return Bulk(archives, online_db, tarball, beatmaps, edited)


def bz2_of(path: Path) -> bytes:
    return bz2.compress(path.read_bytes())


def synthetic_osu(set_id: int, beatmap_id: int, level: int) -> bytes:
    """A small valid .osu for the benchmark's large fixtures."""
    meta = OsuMetadata(
        format_version=14, title=f"Title {set_id}", title_unicode=f"Title {set_id}",
        artist=f"Artist {set_id % 997}", artist_unicode="", creator="osufs",
        version=f"Level {level}", source="", tags="osufs bench", beatmap_id=beatmap_id,
        beatmapset_id=set_id, audio_filename="audio.mp3", background="bg.jpg", video=None,
    )  # fmt: skip
    objects = [f"{64 + i * 8},{192},{1000 + i * 250},1,0,0:0:0:0:" for i in range(level * 6)]
    return write_osu(meta, timing_points=["0,500,4,2,1,60,1,0"], hit_objects=objects)


def synthetic_filename(data: bytes) -> str:
    meta = parse_osu(data)
    return difficulty_filename(meta.artist, meta.title, meta.creator, meta.version)


def set_tree(osz: Path) -> dict[str, bytes]:
    """An archive's files by the paths a mount shows them at (osufs's own listing rules), as
    osu! stable would have extracted them into its Songs folder."""
    from osufs.archive import Limits, read_members
    from osufs.listing import build_listing
    from osufs.osufile import referenced_files

    with open(osz, "rb") as file, zipfile.ZipFile(osz) as zf:
        members = read_members(file, Limits())
        infos = zf.infolist()
        references = [
            name
            for info in infos
            if info.filename.lower().endswith(".osu")
            for name in referenced_files(parse_osu(zf.read(info)))
        ]
        listing = build_listing(members, references)
        return {
            listing.path(index): zf.read(infos[entry.member])
            for index, entry in enumerate(listing.entries)
            if not entry.is_dir
        }


@dataclass(frozen=True)
class Songs:
    folder: Path  # an osu! stable Songs folder: "<id> Artist - Title/" per set
    trees: dict[int, dict[str, bytes]]  # each set's files as its archive has them
    edited: tuple[int, str]  # the one .osu the player changed: set id, path


def build_songs(folder: Path, bulk: Bulk) -> Songs:
    """Every sample set extracted as osu! stable does, one .osu edited by the player."""
    trees = {int(p.stem): set_tree(p) for p in bulk.archives.glob("*.osz")}
    for set_id, tree in trees.items():
        first = min((b for b in bulk.beatmaps if b.set_id == set_id), key=lambda b: b.beatmap_id)
        meta = parse_osu(first.data)
        root = folder / set_folder_name(set_id, meta.artist, meta.title)
        for path, data in tree.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
    set_id = min(trees)
    name = min(p for p in trees[set_id] if p.endswith(".osu"))
    path = next(folder.glob(f"{set_id} *")) / name
    path.write_bytes(path.read_bytes().replace(b"[Metadata]", b"[Metadata]\r\nTags:my edit", 1))
    return Songs(folder, trees, (set_id, name))
