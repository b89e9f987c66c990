"""Whole sets into the cache: `.osz` archives and osu! stable's Songs folder (see docs/cache.md,
"Importing what you have").

An `.osz` is checked as a downloaded archive is (its directory, every member's size and CRC32)
and, when online.db lists its set, its `.osu` files by md5: an archive with a `.osu` online.db
does not know is an edited or older copy, and only its known `.osu` files are taken. A Songs
folder's set folder (`<id> Artist - Title`) has no archive to check against: each file is
compared with the set's archive directory when the cache knows it (path, size, CRC32), and a
`.osu` with online.db's md5s; a file that differs is the player's edit and is refused, a file
that cannot be checked is not taken (unmatched).

Everything blocks; the members of one set are written by the store's one write protocol
(`fetch.ingest.write_members`) in one commit, so Ctrl-C leaves whole sets' files or nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from osufs import archive
from osufs.archive import ArchiveError, Limits, MemberError, ZipMember
from osufs.fetch.ingest import (
    MemberBytes,
    Reader,
    inflate,
    local_reader,
    match_members,
    needs_references,
    settle_listing,
    stored,
    write_members,
)
from osufs.listing import SetListing, build_listing
from osufs.names import is_junk, set_folder_name
from osufs.osufile import parse_osu, referenced_files
from osufs.sources.base import MAX_OSU_SIZE
from osufs.store import CatalogueRecord

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from osufs.importer import Importer

_SET_ID = re.compile(r"(\d+)(?: |$)")


def set_id_of(name: str) -> int | None:
    """The set id a Songs folder or an `.osz` name starts with (`123 Artist - Title`)."""
    match = _SET_ID.match(name)
    return int(match.group(1)) if match and 0 < int(match.group(1)) < 2**31 else None


def import_osz(importer: Importer, path: Path) -> None:
    tally = importer.tally
    size = path.stat().st_size
    with open(path, "rb") as file:
        try:
            members = archive.read_members(file, importer.limits)
        except (ArchiveError, OSError) as error:
            tally.read += size
            tally.refused += 1
            tally.note(f"{path}: refused, not a readable archive ({error})")
            return
        osu_files, bad = _osu_files(file, members, importer.limits)
        set_id = set_id_of(path.name) or _set_id_inside(osu_files.values())
        if set_id is None:
            tally.read += size
            tally.refused += 1
            tally.note(f"{path}: refused, neither its name nor its .osu files say which set it is")
            return
        for number, error in bad.items():
            tally.refused += 1
            tally.note(f"{path}: {_name(members[number])}: refused: {error}")
        edits = [n for n, data in osu_files.items() if importer.is_edit(set_id, data)]
        if edits:
            # Not the set's archive: only the .osu files online.db vouches for are taken.
            for number, data in osu_files.items():
                importer.take_osu(data, f"{path.name}:{_name(members[number])}")
            rest = _files(members) - len(osu_files) - len(bad)
            tally.unmatched += rest
            tally.read += size
            tally.note(
                f"{path}: not taken as set {set_id}'s archive: online.db knows no .osu like "
                f"{_name(members[edits[0]])!r} (an edited or older copy); {rest} other files "
                "not taken"
            )
            return
        references = [
            name for data in osu_files.values() for name in referenced_files(parse_osu(data))
        ] if needs_references(members) else []  # fmt: skip
        listing = settle_listing(importer.store, set_id, members, references)
        foreign = match_members(listing, members, f"{path}")
        damaged = {members[number] for number in bad}
        items = []
        for index, entry in enumerate(listing.entries):
            if entry.is_dir or entry.member < 0:
                continue
            member = listing.members[entry.member] if foreign is None else foreign.get(index)
            if member is not None and member not in damaged:
                items.append((index, _local_opener(file, member, importer.limits), member))
        if foreign is not None:
            differing = _files(members) - len(items) - len(bad)
            tally.refused += differing
            if differing:
                tally.note(
                    f"{path}: {differing} files differ from set {set_id}'s archive as the cache "
                    "knows it (path, size or CRC32); they are not taken"
                )
        _write_set(importer, set_id, items, str(path))
        tally.read += size
        _name_set(importer, set_id, listing, osu_files.values())


def import_song_folder(importer: Importer, set_id: int, folder: Path) -> None:
    """One set folder of a Songs folder: its files checked against what is known of its set."""
    tally = importer.tally
    listing = importer.store.listing_get_uncached(set_id)
    by_path: dict[str, int] = {}
    if listing is not None:
        by_path = {listing.path(i): i for i, e in enumerate(listing.entries) if e.member >= 0}
    items: list[MemberBytes] = []
    unchecked = 0
    with ExitStack() as files:
        for path, name in _walk(folder):
            size = path.stat().st_size
            where = f"{folder.name}/{name}"
            index = by_path.get(name)
            if index is not None:
                assert listing is not None
                member = listing.members[listing.entries[index].member]
                if size != member.size:
                    tally.read += size
                    tally.refused += 1
                    tally.note(f"{where}: refused, the player's edit ({size} bytes, the "
                               f"archive's {member.size})")  # fmt: skip
                    continue
                items.append((index, _file_opener(files, path), stored(member)))
            elif name.lower().endswith(".osu") and importer.knows_set(set_id):
                tally.read += size
                data = path.read_bytes() if size <= MAX_OSU_SIZE else None
                if data is not None and importer.is_edit(set_id, data):
                    tally.refused += 1
                    tally.note(f"{where}: refused, the player's edit (online.db knows no .osu of "
                               f"set {set_id} with its md5)")  # fmt: skip
                    continue
                importer.take_osu(data, where)
            else:
                tally.read += size
                tally.unmatched += 1
                unchecked += 1
        if unchecked:
            tally.unchecked_sets += 1
            log.info("%s: %d files cannot be checked against its archive", folder, unchecked)
        _write_set(importer, set_id, items, folder.name, sizes=True)


def _write_set(
    importer: Importer, set_id: int, items: list[MemberBytes], where: str, sizes: bool = False
) -> None:
    """Write the members not cached yet, in one commit; count what was there and refused."""
    tally = importer.tally
    cached = importer.store.cached_entries(set_id)
    fresh = [item for item in items if item[0] not in cached]
    tally.already += len(items) - len(fresh)
    refused: list[int] = []

    def refuse(index: int, error: MemberError) -> None:
        refused.append(index)
        tally.refused += 1
        tally.note(f"{where}: member {index} refused: {error}")

    write_members(importer.store, set_id, fresh, importer.limits, refused=refuse)
    tally.imported += len(fresh) - len(refused)
    if sizes:
        tally.read += sum(item[2].size for item in items)
    importer.progress()


def _name_set(
    importer: Importer, set_id: int, listing: SetListing, osu_files: Iterable[bytes]
) -> None:
    """List the set in the root, named from its .osu as osu! names folders (never renamed)."""
    store = importer.store
    if store.catalogue_get(set_id) is not None:
        return
    meta = next((m for d in osu_files if (m := parse_osu(d)).artist or m.title), None)
    if meta is None:
        return  # a source names it when a mount lists it
    when = importer.set_time(set_id) or listing.entries[0].mtime_ns
    folder = set_folder_name(set_id, meta.artist, meta.title)
    store.catalogue_add([(set_id, CatalogueRecord(folder, when, "import"))])


def _osu_files(
    file: BinaryIO, members: list[ZipMember], limits: Limits
) -> tuple[dict[int, bytes], dict[int, MemberError]]:
    """The archive's .osu members, inflated and checked, and the damaged ones' errors."""
    found: dict[int, bytes] = {}
    bad: dict[int, MemberError] = {}
    for number, member in enumerate(members):
        if member.is_dir or not member.raw_name.lower().endswith(b".osu"):
            continue
        try:
            if max(member.size, member.compressed_size) > MAX_OSU_SIZE:
                raise MemberError(f"{member.size} bytes is too large for a .osu")
            found[number] = inflate(local_reader(file, member), member, limits)
        except MemberError as error:
            bad[number] = error
    return found, bad


def _set_id_inside(osu_files: Iterable[bytes]) -> int | None:
    for data in osu_files:
        set_id = parse_osu(data).beatmapset_id
        if set_id and set_id > 0:
            return set_id
    return None


def _files(members: list[ZipMember]) -> int:
    """How many files a mount lists for these members."""
    listing = build_listing(members, (), None)
    return sum(1 for entry in listing.entries if not entry.is_dir)


def _name(member: ZipMember) -> str:
    return member.raw_name.decode("utf-8", "replace")


def _local_opener(file: BinaryIO, member: ZipMember, limits: Limits) -> Callable[[], Reader]:
    def open_reader() -> Reader:
        archive.check_member(member, limits)
        return local_reader(file, member)

    return open_reader


def _file_opener(files: ExitStack, path: Path) -> Callable[[], Reader]:
    """A reader of a loose file's bytes, opened when its turn comes, closed with the set."""
    return lambda: files.enter_context(open(path, "rb")).read


def _walk(folder: Path) -> Iterator[tuple[Path, str]]:
    """Every file below a set folder with its path as a listing names it, clutter left out."""
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not is_junk(name):
            yield path, name
