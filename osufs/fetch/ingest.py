"""THE write protocol (temp file, hash, fsync, rename, index: `write_members`), and what
turns a whole archive or an archive's directory into a stored listing and stored members.

Everything here blocks: call it from a worker thread (`trio.to_thread.run_sync`)."""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable, Iterable
from typing import BinaryIO

from osufs import archive
from osufs.archive import Limits, MemberError, ZipMember
from osufs.listing import SetListing, build_listing, complete_listing
from osufs.osufile import parse_osu, referenced_files
from osufs.store import HashingWriter, PendingBlob, Store, crash_point, fsync_file

log = logging.getLogger(__name__)

Reader = Callable[[int], bytes]
# One member to write: its entry index, what opens a reader of its bytes as stored in the
# archive (may raise MemberError), and the member that says how to inflate and check them.
MemberBytes = tuple[int, Callable[[], Reader], ZipMember]
Refused = Callable[[int, MemberError], object]


def write_members(
    store: Store,
    set_id: int,
    items: Iterable[MemberBytes],
    limits: Limits,
    *,
    refused: Refused | None = None,
    keep: Callable[[], bool] | None = None,
) -> bool:
    """Store members of a set: each is inflated into a temporary file, checked (size, CRC),
    hashed and fsynced; then, under the content lock, the files are renamed into content/
    (bytes already stored are not stored twice), their folders fsynced, and all are indexed in
    one commit that evicts what the budget needs. A member refused (MemberError) goes to
    `refused` when given, else stops the write. `keep`, asked before anything is renamed,
    may drop the lot (another process stored the listing first). True when they were kept.
    Nothing half-written is ever indexed: every temporary file is gone when this returns."""
    blobs: list[PendingBlob] = []
    try:
        for index, open_reader, member in items:
            temp = None
            try:
                read = open_reader()
                temp, sink = store.new_temp(member.size)  # room made first, or ENOSPC
                with sink:
                    writer = HashingWriter(sink)
                    archive.extract(read, member, writer, limits)
                    fsync_file(sink)
            except MemberError as error:
                if temp is not None:
                    temp.unlink(missing_ok=True)
                if refused is None:
                    raise
                refused(index, error)
                continue
            except BaseException:
                if temp is not None:
                    temp.unlink(missing_ok=True)
                raise
            blobs.append(PendingBlob(set_id, index, temp, writer.hash.digest(), writer.size))
        if keep is not None and not keep():
            return False
        commit_blobs(store, blobs)
        return True
    finally:
        for blob in blobs:
            blob.temp_path.unlink(missing_ok=True)


def commit_blobs(store: Store, blobs: list[PendingBlob]) -> None:
    """The protocol's second half, for members written and checked (by write_members, or a
    member streamed in): under the content lock, rename them into content/ (bytes already
    stored are not stored twice), fsync their folders, and index them all in one commit that
    evicts what the budget needs. Temporary files left over are the caller's to unlink."""
    if not blobs:
        return
    with store.content_locked():
        renamed = store.place_files(blobs)
        crash_point("commit-renamed")
        try:
            freed = store.index_blobs(blobs)
        except BaseException:
            for path in renamed:  # no entry points at them: do not leave them behind
                path.unlink(missing_ok=True)
            raise
        if freed:
            crash_point("commit-evicted")
        store.unlink_trash(freed)


def settle_listing(
    store: Store, set_id: int, members: list[ZipMember], references: list[str]
) -> SetListing:
    """Store the archive's listing, or complete a provisional one with it; returns the one
    that stands."""
    current = store.listing_get_uncached(set_id)
    if current is None:
        return store.listing_put(set_id, build_listing(members, references, log))
    if not current.provisional:
        return current
    where = f"set {set_id}: "
    completed = complete_listing(current, members, references, log, where)
    log.info("set %d: its archive completed the listing", set_id)
    return store.listing_complete(set_id, completed)


def ingest_archive(
    store: Store, set_id: int, file: BinaryIO, limits: Limits, refused: Refused
) -> None:
    """Check a whole downloaded archive and move every member into the store."""
    members = archive.read_members(file, limits)
    listing = store.listing_get_uncached(set_id)
    if listing is None or listing.provisional:
        references: list[str] = []
        if needs_references(members):
            for number in osu_members(members):
                member = members[number]
                try:
                    data = inflate(local_reader(file, member), member, limits)
                except MemberError:
                    continue
                references += referenced_files(parse_osu(data))
        listing = settle_listing(store, set_id, members, references)
    foreign = match_members(listing, members, f"set {set_id}: the downloaded archive")
    cached = store.cached_entries(set_id)

    def items() -> Iterable[MemberBytes]:
        for index, entry in enumerate(listing.entries):
            # Pinned files the archive lacks have only their /osu/ copy.
            if entry.member < 0 or index in cached:
                continue
            member = listing.members[entry.member] if foreign is None else foreign.get(index)
            if member is None:
                refused(index, absent(listing, index))
                continue
            yield index, _checked_local_reader(file, member, limits), member

    write_members(store, set_id, items(), limits, refused=refused)


def _checked_local_reader(
    file: BinaryIO, member: ZipMember, limits: Limits
) -> Callable[[], Reader]:
    def open_reader() -> Reader:
        archive.check_member(member, limits)
        return local_reader(file, member)

    return open_reader


def match_members(
    listing: SetListing, members: list[ZipMember], where: str
) -> dict[int, ZipMember] | None:
    """None when `members` are the archive the listing was built from; otherwise, for each
    listed file, the member of this other copy with the same path, size and CRC (mirrors
    repack archives; a no-video copy lacks the video)."""
    if members == listing.members:
        return None
    other = build_listing(members, (), None)
    by_path = {
        other.path(i): other.members[e.member] for i, e in enumerate(other.entries) if not e.is_dir
    }
    matched: dict[int, ZipMember] = {}
    files = 0
    for index in range(len(listing.entries)):
        mine = listing.member(index)
        if mine is None:
            continue  # a directory, or a pinned file served only by its /osu/ copy
        files += 1
        theirs = by_path.get(listing.path(index))
        if theirs is not None and (theirs.size, theirs.crc32) == (mine.size, mine.crc32):
            matched[index] = theirs
    log.info("%s is another copy: %d of its %d listed files match", where, len(matched), files)
    return matched


def absent(listing: SetListing, index: int) -> MemberError:
    return MemberError(f"{listing.path(index)} is not in this source's copy of the archive")


def reader(data: bytes) -> Reader:
    view = memoryview(data)
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position : position + n])
        position += len(chunk)
        return chunk

    return read


def opener(data: bytes) -> Callable[[], Reader]:
    """What opens a reader of bytes in memory, for write_members."""
    return lambda: reader(data)


def local_reader(file: BinaryIO, member: ZipMember) -> Reader:
    """A reader of one member's compressed bytes in a local archive file."""
    file.seek(member.header_offset)
    file.seek(archive.data_offset(member, file.read(archive.LOCAL_HEADER_SIZE)))
    remaining = member.compressed_size

    def read(n: int) -> bytes:
        nonlocal remaining
        data = file.read(min(n, remaining))
        remaining -= len(data)
        return data

    return read


def inflate(read: Reader, member: ZipMember, limits: Limits) -> bytes:
    archive.check_member(member, limits)
    out = bytearray()
    archive.extract(read, member, out.extend, limits)
    return bytes(out)


def loose_member(data: bytes) -> ZipMember:
    """A stored member for bytes that come from no archive (a pinned .osu), so they are
    written and checked like any member."""
    return ZipMember(b"", True, 0, 0, zlib.crc32(data), len(data), len(data), 0, 0, False)


def stored(member: ZipMember) -> ZipMember:
    """The member as if stored: for bytes that arrive already inflated."""
    return dataclasses.replace(member, method=0, compressed_size=member.size)


def needs_references(members: list[ZipMember]) -> bool:
    """Whether some name needs a legacy code page chosen by what the .osu files mention."""
    for member in members:
        if member.utf8:
            continue
        try:
            member.raw_name.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def osu_members(members: list[ZipMember]) -> list[int]:
    """Indexes of the .osu members worth reading to choose a code page (bounded work)."""
    return [
        number
        for number, m in enumerate(members)
        # The compressed size too: it is read into memory before inflating can refuse it.
        if m.raw_name.lower().endswith(b".osu") and max(m.size, m.compressed_size) <= 4 << 20
    ][:64]


def is_osu(name: str) -> bool:
    return name.lower().endswith(".osu")
