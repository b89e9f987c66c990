"""An archive's central directory as the shared tier stores it: written anew from the members
a mount read and checked, so every node parses it with the same code and limits as a
directory from a source (osufs.archive), and lists the set with the same names and times."""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

from osufs import archive
from osufs.archive import FLAG_LOST_ZIP64, Limits, ZipMember

_CDH = struct.Struct("<4s6H3I5H2I")  # as osufs.archive reads it
_EOCD = struct.Struct("<4s4HIIH")
_LOCAL = struct.Struct("<4s5H3I2H")
_EXTENDED_TIME = struct.Struct("<HHBI")  # 0x5455, length 5, flags (1: mtime), mtime
_ZIP64 = 0x0001
_MAX32 = 0xFFFFFFFF
_VERSION = 45  # zip64-capable: what the directory may need


class DirectoryTooLarge(ValueError):
    """More members or bytes than a plain end record holds; such a set is not shared."""


def encode(members: Sequence[ZipMember], cd_offset: int | None = None) -> bytes:
    """The central directory of `members` and an end record placing it at cd_offset (by
    default just after the last member's data: the least offset their own offsets allow)."""
    if cd_offset is None:
        cd_offset = max(
            (
                m.header_offset + archive.LOCAL_HEADER_SIZE + m.compressed_size
                for m in members
                if not m.flags & FLAG_LOST_ZIP64
            ),
            default=0,
        )
    if len(members) > 0xFFFF or cd_offset >= _MAX32:
        raise DirectoryTooLarge(f"{len(members)} members, directory at {cd_offset}")
    records = b"".join(_record(member) for member in members)
    if len(records) >= _MAX32:
        raise DirectoryTooLarge(f"a directory of {len(records)} bytes")
    end = _EOCD.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(records), cd_offset, 0)
    return records + end


def decode(data: bytes, limits: Limits) -> list[ZipMember]:
    """The members of a stored directory, checked as a source's directory is (ArchiveError)."""
    if len(data) < _EOCD.size:
        raise archive.ArchiveError("too short for a central directory")
    claimed = _EOCD.unpack_from(data, len(data) - _EOCD.size)[6]
    offset, size, count = archive.find_central_directory(data, claimed + len(data), limits)
    if offset != claimed or size != len(data) - _EOCD.size:
        raise archive.ArchiveError("the end record does not describe the directory before it")
    members = archive.parse_central_directory(data[:size], limits)
    if len(members) != count:
        raise archive.ArchiveError(f"{len(members)} members where the end record says {count}")
    archive.check_offsets(members, offset)
    return members


def local_header(member: ZipMember) -> bytes:
    """A stored member's local header (no zip64: for members and offsets under 4 GiB)."""
    dos_time, dos_date = _dos(member.mtime_ns // 1_000_000_000)
    extra = _time_extra(member)
    return _LOCAL.pack(
        b"PK\x03\x04",
        20,
        member.flags & 0xFFFF,
        member.method,
        dos_time,
        dos_date,
        member.crc32,
        member.compressed_size,
        member.size,
        len(member.raw_name),
        len(extra),
    ) + member.raw_name + extra


def _time_extra(member: ZipMember) -> bytes:
    seconds = member.mtime_ns // 1_000_000_000
    if 0 <= seconds < 1 << 32:  # read before the DOS time, so the time is exact
        return _EXTENDED_TIME.pack(0x5455, 5, 1, seconds)
    return b""


def _record(member: ZipMember) -> bytes:
    seconds = member.mtime_ns // 1_000_000_000
    extra = _time_extra(member)
    lost = bool(member.flags & FLAG_LOST_ZIP64)
    size, csize, offset = member.size, member.compressed_size, member.header_offset
    if lost:
        size = csize = offset = _MAX32  # sizes unknown: every reader refuses it again
    else:
        wide = [value for value in (size, csize, offset) if value >= _MAX32]
        if wide:
            extra += struct.pack("<HH", _ZIP64, 8 * len(wide))
            extra += b"".join(value.to_bytes(8, "little") for value in wide)
            size, csize, offset = (min(value, _MAX32) for value in (size, csize, offset))
    dos_time, dos_date = _dos(seconds)
    header = _CDH.pack(
        b"PK\x01\x02",
        _VERSION,
        _VERSION,
        member.flags & 0xFFFF,
        member.method,
        dos_time,
        dos_date,
        member.crc32,
        csize,
        size,
        len(member.raw_name),
        len(extra),
        0,
        0,
        0,
        0,
        offset,
    )
    return header + member.raw_name + extra


def _dos(seconds: int) -> tuple[int, int]:
    when = time.gmtime(max(seconds, 0))
    if not 1980 <= when.tm_year <= 2107:
        return 0, (1 << 5) | 1  # 1980-01-01; the extended time says the rest
    dos_time = (when.tm_hour << 11) | (when.tm_min << 5) | (when.tm_sec // 2)
    dos_date = ((when.tm_year - 1980) << 9) | (when.tm_mon << 5) | when.tm_mday
    return dos_time, dos_date
