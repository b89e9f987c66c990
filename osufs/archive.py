"""Reading zip bytes safely: end record, central directory (zip64 too), local headers, inflate.

Every byte is treated as hostile: each length and offset is bounds-checked before use, and
inflating is streamed with output capped at the member's declared size. Multi-disk archives
and archives with data prepended (self-extracting stubs) are refused. `Limits` bounds what an
archive may claim (member and total sizes, ratio, member count, directory size); a member that
breaks a rule is refused alone (MemberError), while ArchiveError fails the whole set. The rules
and their reasons are in docs/archives.md.
"""

from __future__ import annotations

import calendar
import errno
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

__all__ = [
    "FLAG_LOST_ZIP64",
    "LOCAL_HEADER_SIZE",
    "TAIL_BYTES",
    "ArchiveError",
    "Limits",
    "MemberError",
    "ZipMember",
    "check_member",
    "check_offsets",
    "data_offset",
    "extract",
    "find_central_directory",
    "parse_central_directory",
    "read_members",
]


class ArchiveError(Exception):
    """The bytes are not a readable zip archive (truncated, garbage, HTML, empty)."""


class MemberError(Exception):
    """One member cannot be served; the rest of the set stays readable."""

    def __init__(self, message: str, errno: int = errno.EIO) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class ZipMember:
    """One central-directory entry, with sizes and offset already resolved through zip64."""

    raw_name: bytes
    utf8: bool
    method: int
    flags: int
    crc32: int
    compressed_size: int
    size: int
    header_offset: int
    mtime_ns: int
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that refuse bombs while letting every honest beatmap set through."""

    # Ranked videos are at most 1280x720 and honest ones stay under ~200 MB; leave 2.5x headroom.
    max_member_size: int = 512 << 20
    # A set averages ~6 MB; 1 GiB of declared content is already several videos.
    max_total_size: int = 1 << 30
    # Beatmap media (mp3, ogg, jpg, png, video) is already compressed and text rarely beats
    # 30:1, so 200:1 on a multi-megabyte member is a bomb; deflate's ceiling is ~1032:1.
    max_ratio: int = 200
    # Below this size any ratio is harmless (a blank .wav or a tiny .osu may compress 500:1).
    ratio_min_size: int = 4 << 20
    # The classic zip format's entry limit; storyboard-heavy sets have a few thousand files.
    max_members: int = 65_535
    # The central directory is read into memory whole: 65,535 entries with 255-byte names and
    # the usual extra fields take about 22 MB, so a larger one is not a beatmap set.
    max_directory_size: int = 32 << 20

    def overridden(
        self, max_member_size: int | None = None, max_ratio: int | None = None
    ) -> Limits:
        """These limits with the user's choices (None keeps a default); the total a set may
        declare grows with the member limit, so one allowed member always fits."""
        limits = self
        if max_member_size is not None:
            total = max(self.max_total_size, max_member_size)
            limits = replace(limits, max_member_size=max_member_size, max_total_size=total)
        if max_ratio is not None:
            limits = replace(limits, max_ratio=max_ratio)
        return limits


_EOCD_SIG = b"PK\x05\x06"
_EOCD = struct.Struct("<4s4HIIH")  # sig, disk, cd disk, entries here, entries, cd size, cd offset
_LOC64_SIG = b"PK\x06\x07"
_LOC64 = struct.Struct("<4sIQI")  # sig, disk with the zip64 record, record offset, disk count
_EOCD64_SIG = b"PK\x06\x06"
_EOCD64 = struct.Struct(
    "<4sQ2H2I4Q"
)  # sig, size, versions, disks, entries here, entries, size, off
_CDH_SIG = b"PK\x01\x02"
_CDH = struct.Struct("<4s6H3I5H2I")
_LOCAL_SIG = b"PK\x03\x04"
_LOCAL = struct.Struct("<4s5H3I2H")

LOCAL_HEADER_SIZE = _LOCAL.size
# End record + the longest comment + the zip64 locator and a zip64 record without extensible data.
TAIL_BYTES = _EOCD.size + 0xFFFF + _LOC64.size + _EOCD64.size

_CHUNK = 256 << 10
_FLAG_ENCRYPTED = 0x0001 | 0x0040  # traditional and strong encryption
_FLAG_UTF8 = 0x0800
# Not a zip flag (those are 16 bits): set on a member whose 0xFFFFFFFF sizes or offset have no
# zip64 value, so that member alone is refused and the rest of the set stays readable.
FLAG_LOST_ZIP64 = 1 << 16
_ZIP_EPOCH_NS = calendar.timegm((1980, 1, 1, 0, 0, 0)) * 1_000_000_000


def find_central_directory(
    tail: bytes, archive_size: int, limits: Limits | None = None
) -> tuple[int, int, int]:
    """(offset, size, entry count) of the central directory, from the archive's last bytes.
    zip64 included: a locator just before the end record leads to the zip64 end record.
    ArchiveError when the directory is larger, or has more entries, than `limits` allow."""
    limits = limits or Limits()
    if len(tail) > archive_size:
        raise ArchiveError("tail longer than the archive")
    base = archive_size - len(tail)
    candidates: list[int] = []
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        candidates.append(pos)
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    if not candidates:
        raise ArchiveError("no end of central directory record (not a zip archive)")
    # A record whose comment ends exactly at the end of the file is the real one; a signature
    # inside a comment or in trailing junk is only tried afterwards.
    exact = [p for p in candidates if _comment_end(tail, p) == len(tail)]
    others = [p for p in candidates if _comment_end(tail, p) != len(tail)]
    error = ArchiveError("no usable end of central directory record")
    for pos in exact + others:
        try:
            offset, size, count = _resolve_end(tail, base, pos)
        except ArchiveError as exc:
            error = exc
            continue
        # Checked before anyone reads the directory: its size is the archive's own claim.
        if size > limits.max_directory_size:
            raise ArchiveError(f"central directory of {size} bytes, over the limit")
        if count > limits.max_members:
            raise ArchiveError(f"{count} members, more than {limits.max_members}")
        return offset, size, count
    raise error


def _comment_end(tail: bytes, pos: int) -> int:
    if pos + _EOCD.size > len(tail):
        return -1
    return pos + _EOCD.size + int.from_bytes(tail[pos + 20 : pos + 22], "little")


def _resolve_end(tail: bytes, base: int, pos: int) -> tuple[int, int, int]:
    if not 0 <= _comment_end(tail, pos) <= len(tail):
        raise ArchiveError("truncated end of central directory record")
    _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
    end = base + pos  # where the central directory (or the zip64 record) must stop
    loc = pos - _LOC64.size
    if loc >= 0 and tail[loc : loc + 4] == _LOC64_SIG:
        _, _, rec_offset, disks = _LOC64.unpack_from(tail, loc)
        if disks > 1:
            raise ArchiveError("multi-disk archives are not supported")
        rec = rec_offset - base
        if rec < 0 or rec + _EOCD64.size > loc:
            raise ArchiveError("zip64 end record outside the archive's tail")
        if tail[rec : rec + 4] != _EOCD64_SIG:
            raise ArchiveError("bad zip64 end record signature")
        fields = _EOCD64.unpack_from(tail, rec)
        count, cd_size, cd_offset = fields[7], fields[8], fields[9]
        end = rec_offset
    if cd_offset + cd_size > end or cd_size < count * _CDH.size:
        raise ArchiveError("central directory bounds are inconsistent")
    return cd_offset, cd_size, count


def parse_central_directory(data: bytes, limits: Limits) -> list[ZipMember]:
    """Parse every entry of a central directory, validating each bound; ArchiveError on nonsense."""
    members: list[ZipMember] = []
    total = 0
    pos = 0
    view = memoryview(data)
    while pos < len(data):
        if pos + _CDH.size > len(data) or data[pos : pos + 4] != _CDH_SIG:
            raise ArchiveError(f"bad central directory entry at byte {pos}")
        if len(members) >= limits.max_members:
            raise ArchiveError(f"more than {limits.max_members} members")
        fields = _CDH.unpack_from(data, pos)
        flags, method, dos_time, dos_date, crc, csize, size = fields[3:10]
        name_len, extra_len, comment_len, offset = fields[10], fields[11], fields[12], fields[16]
        name_end = pos + _CDH.size + name_len
        extra_end = name_end + extra_len
        pos = extra_end + comment_len
        if pos > len(data):
            raise ArchiveError("central directory entry runs past its end")
        name = bytes(view[name_end - name_len : name_end])
        mtime_ns = _dos_time_ns(dos_date, dos_time)
        for tag, body in _extra_fields(view[name_end:extra_end]):
            if tag == 0x0001:
                size, csize, offset = _zip64_values(body, size, csize, offset)
            elif tag == 0x5455 and len(body) >= 5 and body[0] & 1:
                # Unsigned, so archives made after 2038 keep a sensible time.
                mtime_ns = int.from_bytes(body[1:5], "little") * 1_000_000_000
        if 0xFFFFFFFF in (size, csize, offset):
            # A broken writer's member: its sizes are unknown, so it is listed empty and
            # refused by check_member; the other members are unaffected.
            flags |= FLAG_LOST_ZIP64
            size = csize = offset = 0
        if size <= limits.max_member_size:
            # Oversized members are refused one by one (check_member); the rest must fit in total.
            total += size
            if total > limits.max_total_size:
                raise ArchiveError(f"archive declares more than {limits.max_total_size} bytes")
        members.append(
            ZipMember(
                raw_name=name,
                utf8=bool(flags & _FLAG_UTF8),
                method=method,
                flags=flags,
                crc32=crc,
                compressed_size=csize,
                size=size,
                header_offset=offset,
                mtime_ns=mtime_ns,
                is_dir=name.endswith((b"/", b"\\")),
            )
        )
    return members


def _extra_fields(extra: memoryview) -> list[tuple[int, bytes]]:
    fields = []
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + length > len(extra):
            break  # some writers pad the extra area; a torn field is ignored, not fatal
        fields.append((tag, bytes(extra[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return fields


def _zip64_values(body: bytes, size: int, csize: int, offset: int) -> tuple[int, int, int]:
    # Only the 32-bit fields that overflowed are present, always in this order; one the field
    # is too short to hold stays 0xFFFFFFFF (and so refuses the member).
    values = [size, csize, offset]
    pos = 0
    for i, value in enumerate(values):
        if value == 0xFFFFFFFF and pos + 8 <= len(body):
            values[i] = int.from_bytes(body[pos : pos + 8], "little")
            pos += 8
    return values[0], values[1], values[2]


def _dos_time_ns(date: int, time: int) -> int:
    parts = (
        1980 + (date >> 9),
        (date >> 5) & 0xF,
        date & 0x1F,
        time >> 11,
        (time >> 5) & 0x3F,
        (time & 0x1F) * 2,
    )
    year, month, day, hour, minute, second = parts
    days = calendar.monthrange(year, month)[1] if 1 <= month <= 12 else 0
    if not (1 <= day <= days and hour < 24 and minute < 60 and second < 60):
        return _ZIP_EPOCH_NS
    return calendar.timegm(parts) * 1_000_000_000


def check_offsets(members: Sequence[ZipMember], cd_offset: int) -> None:
    """ArchiveError unless every member's local header and data lie before the central directory."""
    for m in members:
        if m.flags & FLAG_LOST_ZIP64:
            continue  # no offset to check; check_member refuses it
        if m.header_offset + LOCAL_HEADER_SIZE + m.compressed_size > cd_offset:
            raise ArchiveError(f"member {m.raw_name!r} lies outside the archive's data")


def read_members(f: BinaryIO, limits: Limits) -> list[ZipMember]:
    """The members of a local seekable archive file, with every offset checked against its size."""
    archive_size = f.seek(0, 2)
    tail_len = min(archive_size, TAIL_BYTES)
    f.seek(archive_size - tail_len)
    tail = f.read(tail_len)
    cd_offset, cd_size, _count = find_central_directory(tail, archive_size, limits)
    f.seek(cd_offset)
    data = f.read(cd_size)
    if len(data) != cd_size:
        raise ArchiveError("central directory truncated")
    members = parse_central_directory(data, limits)
    check_offsets(members, cd_offset)
    return members


def data_offset(member: ZipMember, local_header: bytes) -> int:
    """Where the member's compressed data starts, from the 30 fixed bytes of its local header."""
    if len(local_header) != LOCAL_HEADER_SIZE or not local_header.startswith(_LOCAL_SIG):
        raise MemberError(f"bad local header for {member.raw_name!r}")
    # The local name and extra lengths may differ from the central directory's copy.
    name_len, extra_len = _LOCAL.unpack(local_header)[9:11]
    return member.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len


def check_member(member: ZipMember, limits: Limits) -> None:
    """MemberError, before any inflating, for members that cannot or must not be extracted."""
    name = member.raw_name
    if member.is_dir:
        raise MemberError(f"{name!r} is a directory", errno.EISDIR)
    if member.flags & FLAG_LOST_ZIP64:
        raise MemberError(f"{name!r} has 0xFFFFFFFF sizes or offset but no zip64 values")
    if member.flags & _FLAG_ENCRYPTED:
        raise MemberError(f"{name!r} is encrypted")
    if member.method not in (0, 8):
        raise MemberError(f"{name!r} uses unsupported compression method {member.method}")
    if member.method == 0 and member.compressed_size != member.size:
        raise MemberError(f"stored member {name!r} has mismatched sizes")
    if member.size > limits.max_member_size:
        raise MemberError(f"{name!r} declares {member.size} bytes", errno.EFBIG)
    if member.size > limits.ratio_min_size and member.size > limits.max_ratio * max(
        member.compressed_size, 1
    ):
        raise MemberError(
            f"{name!r} declares a compression ratio above {limits.max_ratio}", errno.EFBIG
        )


def extract(
    read: Callable[[int], bytes],
    member: ZipMember,
    write: Callable[[bytes], object],
    limits: Limits,
) -> None:
    """Inflate one member from read(n) (up to n compressed bytes) into write(), in bounded chunks.
    MemberError as soon as output passes the declared size, input ends early, or the CRC32 fails."""
    check_member(member, limits)
    inflater = zlib.decompressobj(-15) if member.method == 8 else None
    remaining = member.compressed_size
    written = 0
    crc = 0

    def emit(chunk: bytes) -> None:
        nonlocal written, crc
        if written + len(chunk) > member.size:
            raise MemberError(f"{member.raw_name!r} inflates past its declared size", errno.EFBIG)
        written += len(chunk)
        crc = zlib.crc32(chunk, crc)
        write(chunk)

    while remaining and not (inflater and inflater.eof):
        data = read(min(remaining, _CHUNK))
        if not data:
            raise MemberError(f"{member.raw_name!r}: compressed data ends early")
        data = data[:remaining]
        remaining -= len(data)
        if inflater is None:
            emit(data)
            continue
        while data and not inflater.eof:
            try:
                # max_length bounds memory however well the input compresses.
                emit(inflater.decompress(data, _CHUNK))
            except zlib.error as exc:
                raise MemberError(f"{member.raw_name!r}: corrupt deflate data: {exc}") from exc
            data = inflater.unconsumed_tail
    if inflater is not None and not inflater.eof:
        # Like zipfile, accept a stream without its final block; size and CRC still decide.
        try:
            emit(inflater.flush())
        except zlib.error as exc:
            raise MemberError(f"{member.raw_name!r}: corrupt deflate data: {exc}") from exc
    if written != member.size:
        raise MemberError(f"{member.raw_name!r}: {written} bytes, {member.size} declared")
    if crc != member.crc32:
        raise MemberError(f"{member.raw_name!r}: CRC32 mismatch")
