"""`osufs cache import`: what players and osu! already have, into the content-addressed cache.

Inputs: data.ppy.sh's `.osu` tarball (`*.tar.bz2`, read as a stream, never unpacked to disk),
loose `.osu` files, `.osz` archives, folders of them, and osu! stable's Songs folder.

A `.osu` file is kept by its md5 (the store's `osu` table) once it is identified: by its md5
in online.db when there is one (a file it does not know is *unmatched*: an edit, or an old
version, never listed as the set's), else by its own `[Metadata]` `BeatmapID` and
`BeatmapSetID`. Its set is then named from its metadata, as osu! names folders, and listed with
online.db's time (names never move: a set already named keeps its name).

Everything is written by the store's write protocol, a batch at a time: temporary files, one
sync, renames, one index commit. An interrupted import leaves whole files only and resumes:
what is stored is counted as already there and costs no write.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import logging
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from osufs.archive import Limits
from osufs.import_sets import import_osz, import_song_folder, set_id_of
from osufs.names import set_folder_name
from osufs.osufile import parse_osu
from osufs.sources.base import MAX_OSU_SIZE
from osufs.sources.onlinedb import OnlineDb
from osufs.store import CatalogueRecord, HashingWriter, PendingOsu, Store

log = logging.getLogger(__name__)

# .osu files written before one sync and one commit: an interrupted import redoes at most this.
BATCH_FILES = 2000
BATCH_BYTES = 32 << 20
TARBALL_SUFFIXES = (".tar.bz2", ".tbz2", ".tbz", ".tar")
READ_BUFFER = 64 << 10  # read ahead of the damage, at most this is lost with its block
_OSU_HEAD = re.compile(rb"^(?:\xef\xbb\xbf)?\s*osu file format v\d+")


class ImportError_(Exception):
    """An input that cannot be read at all (a corrupt tarball, a missing path)."""


@dataclass
class ImportTally:
    """What an import did, file by file; `read` and `total` are input bytes, for the bar."""

    imported: int = 0
    already: int = 0
    unmatched: int = 0
    refused: int = 0
    read: int = 0
    total: int = 0
    unchecked_sets: int = 0  # Songs set folders with files nothing known could check
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return self.imported + self.already + self.unmatched + self.refused

    def note(self, message: str) -> None:
        """A file reported (unmatched, refused); the first few are kept for the summary."""
        log.info("%s", message)
        if len(self.notes) < 20:
            self.notes.append(message)


class _Counted:
    """A binary file that counts what is read from it (the bar follows the compressed bytes)."""

    def __init__(self, file: BinaryIO, tally: ImportTally) -> None:
        self._file = file
        self._tally = tally

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._tally.read += len(data)
        return data


class Importer:
    """One import run over a store; blocking (the CLI runs it on the main thread, where Ctrl-C
    raises KeyboardInterrupt between files: the pending batch is dropped, whole)."""

    def __init__(
        self,
        store: Store,
        db: OnlineDb | None,
        progress: Callable[[ImportTally], None] = lambda tally: None,
    ) -> None:
        self.store = store
        self.tally = ImportTally()
        self.limits = Limits()
        self._progress = progress
        self._by_md5 = db.by_md5() if db is not None else None
        self._set_times = dict(db.sets(None)) if db is not None else {}
        self._pending: dict[bytes, tuple[int, bytes]] = {}  # md5 -> set id, bytes
        self._pending_bytes = 0
        self._named: set[int] = set()

    def run(self, paths: list[Path]) -> ImportTally:
        for path in paths:
            if not path.exists():
                raise ImportError_(f"{path}: no such file or folder")
            if path.is_file() and not any(_inputs(path)):
                raise ImportError_(
                    f"{path}: not a file import takes (.osz, .osu, or a .tar.bz2 of .osu files)"
                )
        self.tally.total = sum(_input_size(path) for path in paths)
        # Archives first: their directories are what a Songs folder's files are checked against.
        inputs = sorted(
            (found for path in paths for found in _inputs(path)), key=lambda found: found[0]
        )
        try:
            for kind, path in inputs:
                if kind == _OSZ:
                    import_osz(self, path)
                elif kind == _OSU:
                    self._import_file(path)
                else:
                    set_id = set_id_of(path.name)
                    assert set_id is not None
                    import_song_folder(self, set_id, path)
            self._flush()
            if self.tally.imported:
                freed = self.store.compact_osu_tables()
                if freed:
                    log.info("index: the .osu tables rewritten in order, %d pages fewer", freed)
        except ImportError_:
            self._flush()  # what was read whole and matched is kept
            raise
        finally:
            self._drop_pending()
            if self.tally.unchecked_sets:
                self.tally.notes.append(
                    f"{self.tally.unchecked_sets} set folders have files that nothing known can "
                    "check (no archive directory in the cache, or no online.db for a .osu): not "
                    "taken; list those sets in a mount once, then import again"
                )
        self._progress(self.tally)
        return self.tally

    def _import_file(self, path: Path) -> None:
        if path.name.lower().endswith(TARBALL_SUFFIXES):
            self._import_tarball(path)
            return
        data = path.read_bytes() if path.stat().st_size <= MAX_OSU_SIZE else None
        self.tally.read += path.stat().st_size
        self.take_osu(data, str(path))

    # what import_sets asks

    def knows_set(self, set_id: int) -> bool:
        """Whether online.db lists the set (so its .osu files' md5s are all known)."""
        return set_id in self._set_times

    def is_edit(self, set_id: int, data: bytes) -> bool:
        """A .osu of a set online.db lists that is none of its difficulties."""
        if not self.knows_set(set_id) or self._by_md5 is None:
            return False
        found = self._by_md5.get(hashlib.md5(data).digest())
        return found is None or found[0] != set_id

    def set_time(self, set_id: int) -> int | None:
        return self._set_times.get(set_id)

    def progress(self) -> None:
        self._progress(self.tally)

    # the tarball

    def _import_tarball(self, path: Path) -> None:
        """Every .osu member of the tarball, streamed: read front to back once."""
        with open(path, "rb") as raw:
            counted = _Counted(raw, self.tally)
            try:
                stream: BinaryIO = counted  # type: ignore[assignment]
                if not path.name.lower().endswith(".tar"):
                    # BZ2File under a buffer reads faster than tarfile's own `r|bz2`.
                    stream = io.BufferedReader(bz2.BZ2File(counted), READ_BUFFER)  # type: ignore[arg-type]
                with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in _members(tar):
                        self._take_member(tar, member, path)
            except (tarfile.TarError, EOFError, OSError) as error:
                raise ImportError_(
                    f"{path}: the tarball is damaged after {self.tally.read} bytes "
                    f"({error or type(error).__name__}); files before that point are imported"
                ) from None

    def _take_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
        where = f"{path.name}:{member.name}"
        if member.size > MAX_OSU_SIZE:
            self.tally.refused += 1
            self.tally.note(f"{where}: refused, {member.size} bytes is too large for a .osu")
            return
        extracted = tar.extractfile(member)
        data = extracted.read() if extracted is not None else b""
        if len(data) != member.size:
            raise tarfile.ReadError(f"{member.name} is cut short")
        self.take_osu(data, where)

    # .osu files

    def take_osu(self, data: bytes | None, where: str) -> None:
        """Identify one .osu and queue it for the next commit."""
        if data is None or not _OSU_HEAD.match(data[:64]):
            self.tally.refused += 1
            self.tally.note(f"{where}: refused, not a .osu file")
            return
        md5 = hashlib.md5(data).digest()
        if md5 in self._pending:
            self.tally.already += 1
            return
        found = self._identify(md5, data)
        if found is None:
            self.tally.unmatched += 1
            self.tally.note(f"{where}: unmatched (its md5 {md5.hex()} names no known beatmap)")
            return
        self._pending[md5] = (found, data)
        self._pending_bytes += len(data)
        if len(self._pending) >= BATCH_FILES or self._pending_bytes >= BATCH_BYTES:
            self._flush()
        self._progress(self.tally)

    def _identify(self, md5: bytes, data: bytes) -> int | None:
        """The set id of a .osu: from online.db by md5 when there is one, else from its own
        metadata; None when it cannot be identified."""
        if self._by_md5 is not None:
            found = self._by_md5.get(md5)
            return found[0] if found else None
        meta = parse_osu(data)
        if meta.beatmapset_id and meta.beatmapset_id > 0 and meta.beatmap_id:
            return meta.beatmapset_id
        return None

    def _flush(self) -> None:
        """Write and commit the pending batch, all but what is stored already (one read tells),
        so a second import writes nothing."""
        if not self._pending:
            return
        known = self.store.osu_known(self._pending)
        items: list[PendingOsu] = []
        try:
            for md5, (_set_id, data) in self._pending.items():
                if md5 not in known:
                    items.append(self._write_temp(md5, data))
            added = self.store.commit_osu(items)
        except BaseException:
            for item in items:
                item.temp_path.unlink(missing_ok=True)
            raise
        self.tally.imported += added
        self.tally.already += len(self._pending) - added
        self._name_sets(list(self._pending.values()))
        self._pending, self._pending_bytes = {}, 0

    def _write_temp(self, md5: bytes, data: bytes) -> PendingOsu:
        path, sink = self.store.new_temp(len(data))
        try:
            with sink:
                writer = HashingWriter(sink)
                writer(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return PendingOsu(md5, path, writer.hash.digest(), len(data))

    def _name_sets(self, files: list[tuple[int, bytes]]) -> None:
        """List each set of these .osu files not yet listed, named from its .osu (online.db's
        time)."""
        if not self._set_times:
            return  # without online.db no time is known: a source names and times the set
        records = []
        for set_id, data in files:
            if set_id in self._named or set_id not in self._set_times:
                continue
            self._named.add(set_id)
            if self.store.catalogue_get(set_id) is not None:
                continue
            meta = parse_osu(data)
            if meta.artist or meta.title:
                folder = set_folder_name(set_id, meta.artist, meta.title)
                records.append((set_id, CatalogueRecord(folder, self._set_times[set_id], "import")))
        if records:
            self.store.catalogue_add(records)

    def _drop_pending(self) -> None:
        self._pending, self._pending_bytes = {}, 0


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        # A stream's TarFile keeps every header it read; 250,000 of them are ~100 MB.
        tar.members.clear()
        if member.isfile() and member.name.lower().endswith(".osu"):
            yield member


_OSZ, _OSU, _SONGS = 0, 1, 2  # the order inputs are taken in


def _inputs(path: Path) -> Iterator[tuple[int, Path]]:
    """What a path holds: .osz archives, .osu files and tarballs, and Songs set folders (a
    folder whose name starts with a set id and that holds a .osu file)."""
    name = path.name.lower()
    if path.is_dir():
        if set_id_of(path.name) is not None and any(
            child.name.lower().endswith(".osu") and child.is_file() for child in path.iterdir()
        ):
            yield _SONGS, path
            return
        for child in sorted(path.iterdir()):
            yield from _inputs(child)
    elif name.endswith(".osz"):
        yield _OSZ, path
    elif name.endswith((".osu", *TARBALL_SUFFIXES)):
        yield _OSU, path


def _input_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0
