"""osufs.archive against real beatmap archives, zipfile's output, and hostile bytes."""

from __future__ import annotations

import calendar
import contextlib
import dataclasses
import errno
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from osufs.archive import (
    FLAG_LOST_ZIP64,
    LOCAL_HEADER_SIZE,
    TAIL_BYTES,
    ArchiveError,
    Limits,
    MemberError,
    ZipMember,
    check_member,
    data_offset,
    extract,
    find_central_directory,
    parse_central_directory,
    read_members,
)
from tests.helpers import SHARED
from tests.hostile import Raw, build_zip

CORPUS = SHARED / "corpus" / "real"
REAL = sorted(CORPUS.glob("*.osz"))
LIMITS = Limits()


def member_bytes(f: BinaryIO, member: ZipMember, limits: Limits = LIMITS) -> bytes:
    f.seek(member.header_offset)
    f.seek(data_offset(member, f.read(LOCAL_HEADER_SIZE)))
    out = bytearray()
    extract(f.read, member, out.extend, limits)
    return bytes(out)


def make_zip(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED, **kw: object) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method, **kw) as zf:  # type: ignore[arg-type]
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def fake_member(compressed: bytes, size: int, crc: int, **changes: object) -> ZipMember:
    member = ZipMember(b"x.bin", False, 8, 0, crc, len(compressed), size, 0, 0, False)
    return dataclasses.replace(member, **changes)  # type: ignore[arg-type]


def run_extract(member: ZipMember, compressed: bytes, limits: Limits = LIMITS) -> bytearray:
    """Extract, returning what was written even when extraction fails (attached to the error)."""
    out = bytearray()
    try:
        extract(io.BytesIO(compressed).read, member, out.extend, limits)
    except MemberError as exc:
        exc.written = out  # type: ignore[attr-defined]
        raise
    return out


def test_corpus_present() -> None:
    assert len(REAL) == 5


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_archives_extract_like_zipfile(path: Path) -> None:
    with path.open("rb") as f, zipfile.ZipFile(path) as zf:
        members = read_members(f, LIMITS)
        infos = zf.infolist()
        assert [m.raw_name for m in members] == [
            i.orig_filename.encode("utf-8" if i.flag_bits & 0x800 else "cp437") for i in infos
        ]
        for member, info in zip(members, infos, strict=True):
            assert (member.size, member.crc32) == (info.file_size, info.CRC)
            assert member_bytes(f, member) == zf.read(info)


def test_extended_timestamp_wins_over_dos_time() -> None:
    with (CORPUS / "241526 Soleily - Renatus_virtual.osz").open("rb") as f:
        clap = read_members(f, LIMITS)[0]
    assert clap.raw_name == b"D_Clap.wav"
    assert clap.mtime_ns == 0x518D15B6 * 10**9  # the 0x5455 field, not the DOS local time


def test_dos_time_read_as_utc() -> None:
    with (CORPUS / "conflicting-filenames-beatmap.osz").open("rb") as f:
        first = read_members(f, LIMITS)[0]
    assert first.mtime_ns == calendar.timegm((2023, 1, 28, 15, 55, 14)) * 10**9


def test_invalid_dos_date_is_1980() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(zipfile.ZipInfo("a.txt", (1980, 0, 0, 0, 0, 0)), b"a")
        zf.writestr(zipfile.ZipInfo("dir/", (2000, 2, 30, 25, 0, 0)), b"")
    members = read_members(buf, LIMITS)
    assert [m.mtime_ns for m in members] == [calendar.timegm((1980, 1, 1, 0, 0, 0)) * 10**9] * 2
    assert [m.is_dir for m in members] == [False, True]


def test_zip64_local_header_forced() -> None:
    buf = io.BytesIO()
    with (
        zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("a.txt", "w", force_zip64=True) as w,
    ):
        w.write(b"hello zip64" * 100)
    members = read_members(buf, LIMITS)
    assert member_bytes(buf, members[0]) == b"hello zip64" * 100


def test_zip64_end_record_and_extra_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny limits make zipfile write every zip64 structure without gigabytes of data.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 50)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)
    files = {f"f{i}.txt": bytes([65 + i]) * (100 + i) for i in range(4)}
    data = make_zip(files)
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    monkeypatch.undo()
    offset, size, count = find_central_directory(data[-TAIL_BYTES:], len(data))
    assert count == 4 and offset + size < len(data)
    f = io.BytesIO(data)
    members = read_members(f, LIMITS)
    assert [m.raw_name.decode() for m in members] == list(files)
    assert [member_bytes(f, m) for m in members] == list(files.values())
    with zipfile.ZipFile(f) as zf:
        assert [m.header_offset for m in members] == [i.header_offset for i in zf.infolist()]


def test_comment_with_fake_end_record() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"a")
        zf.comment = b"junk PK\x05\x06" + b"\xff" * 40
    members = read_members(buf, LIMITS)
    assert [m.raw_name for m in members] == [b"a.txt"]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"PK",
        b"\x00" * 100,
        bytes(range(256)) * 40,
        b"<!DOCTYPE html><html><head><title>429 Slow down</title></head><body>play more</body>"
        b"</html>\n",
        b"PK\x05\x06" + b"\x00" * 17,  # an end record missing its last byte
    ],
    ids=["empty", "two-bytes", "zeros", "garbage", "html", "short-end-record"],
)
def test_not_an_archive(data: bytes) -> None:
    with pytest.raises(ArchiveError):
        read_members(io.BytesIO(data), LIMITS)


def test_empty_zip_has_no_members() -> None:
    assert read_members(io.BytesIO(make_zip({})), LIMITS) == []


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99, -1])
def test_truncated_archive(keep: float) -> None:
    data = (CORPUS / "ogg-beatmap.osz").read_bytes()
    cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
    with pytest.raises(ArchiveError):
        read_members(io.BytesIO(data[:cut]), LIMITS)


def test_member_offset_outside_data_is_archive_error() -> None:
    data = bytearray(make_zip({"a.txt": b"a" * 50}))
    offset, _, _ = find_central_directory(bytes(data[-TAIL_BYTES:]), len(data))
    struct.pack_into("<I", data, offset + 42, len(data) - 10)
    with pytest.raises(ArchiveError):
        read_members(io.BytesIO(bytes(data)), LIMITS)


def test_too_many_members() -> None:
    data = make_zip({f"{i}.txt": b"" for i in range(5)})
    with pytest.raises(ArchiveError):
        read_members(io.BytesIO(data), Limits(max_members=4))
    offset, size, _ = find_central_directory(data[-TAIL_BYTES:], len(data))
    with pytest.raises(ArchiveError):
        parse_central_directory(data[offset : offset + size], Limits(max_members=4))


def test_total_declared_size() -> None:
    data = make_zip({f"{i}.bin": b"\0" * 1000 for i in range(3)})
    with pytest.raises(ArchiveError):
        read_members(io.BytesIO(data), Limits(max_total_size=2500))
    assert len(read_members(io.BytesIO(data), Limits(max_total_size=3000))) == 3


def test_bad_local_header() -> None:
    member = fake_member(b"", 0, 0)
    with pytest.raises(MemberError):
        data_offset(member, b"PK\x01\x02" + b"\0" * 26)
    with pytest.raises(MemberError):
        data_offset(member, b"PK\x03\x04")


def test_local_lengths_decide_data_offset() -> None:
    member = fake_member(b"", 0, 0, header_offset=1000)
    header = b"PK\x03\x04" + b"\0" * 22 + struct.pack("<HH", 7, 11)
    assert data_offset(member, header) == 1000 + 30 + 7 + 11


def test_stored_and_deflated_round_trip() -> None:
    payload = bytes(range(256)) * 5000
    for method in (0, 8):
        compressed = payload if method == 0 else deflate(payload)
        member = fake_member(compressed, len(payload), zlib.crc32(payload), method=method)
        assert run_extract(member, compressed) == payload


def test_crc_mismatch() -> None:
    payload = b"osu! " * 1000
    member = fake_member(deflate(payload), len(payload), zlib.crc32(payload) ^ 1)
    with pytest.raises(MemberError) as info:
        run_extract(member, deflate(payload))
    assert len(info.value.written) <= member.size  # type: ignore[attr-defined]
    assert info.value.errno == errno.EIO


def test_lying_header_bomb_stops_at_declared_size() -> None:
    compressed = deflate(b"\0" * (64 << 20))
    member = fake_member(compressed, 1000, 0)
    with pytest.raises(MemberError) as info:
        run_extract(member, compressed)
    assert info.value.errno == errno.EFBIG
    assert len(info.value.written) <= 1000  # type: ignore[attr-defined]


def test_honest_bomb_refused_before_inflating() -> None:
    compressed = deflate(b"\0" * (1 << 20))
    for size in (10 << 30, LIMITS.max_member_size + 1, 300 << 20):
        member = fake_member(compressed, size, 0)
        with pytest.raises(MemberError) as info:
            run_extract(member, compressed)
        assert info.value.errno == errno.EFBIG
        assert info.value.written == b""  # type: ignore[attr-defined]


def test_small_members_may_compress_well() -> None:
    payload = b"\0" * (1 << 20)  # about 1000:1, but far below the ratio's floor
    compressed = deflate(payload)
    member = fake_member(compressed, len(payload), zlib.crc32(payload))
    assert run_extract(member, compressed) == payload


def test_declared_short_output() -> None:
    payload = b"abc" * 100
    member = fake_member(deflate(payload), len(payload) + 5, zlib.crc32(payload))
    with pytest.raises(MemberError):
        run_extract(member, deflate(payload))


def test_input_ends_early() -> None:
    payload = bytes(range(256)) * 100
    compressed = deflate(payload)
    member = fake_member(compressed, len(payload), zlib.crc32(payload))
    with pytest.raises(MemberError):
        run_extract(member, compressed[: len(compressed) // 2])


def test_corrupt_deflate_data() -> None:
    member = fake_member(b"\xff" * 64, 100, 0)
    with pytest.raises(MemberError):
        run_extract(member, b"\xff" * 64)


def test_encrypted_member() -> None:
    member = fake_member(b"x", 1, 0, flags=1, method=0)
    with pytest.raises(MemberError):
        check_member(member, LIMITS)
    with pytest.raises(MemberError):
        run_extract(member, b"x")


def test_bzip2_member() -> None:
    data = make_zip({"a.osu": b"osu file format v14\n" * 50}, zipfile.ZIP_BZIP2)
    f = io.BytesIO(data)
    (member,) = read_members(f, LIMITS)
    assert member.method == 12
    with pytest.raises(MemberError):
        member_bytes(f, member)


def test_directory_member_is_not_extracted() -> None:
    with pytest.raises(MemberError) as info:
        check_member(fake_member(b"", 0, 0, raw_name=b"dir/", is_dir=True), LIMITS)
    assert info.value.errno == errno.EISDIR


def test_tail_covers_longest_comment_and_zip64_records() -> None:
    assert TAIL_BYTES >= 22 + 65535 + 20 + 56


@given(st.binary(max_size=2000))
def test_parse_arbitrary_bytes_raises_only_archive_error(data: bytes) -> None:
    with contextlib.suppress(ArchiveError):
        parse_central_directory(data, LIMITS)


@given(st.lists(st.binary(max_size=120), max_size=6), st.binary(max_size=60))
def test_parse_entry_shaped_bytes(bodies: list[bytes], tail: bytes) -> None:
    data = b"".join(b"PK\x01\x02" + body for body in bodies) + tail
    try:
        members = parse_central_directory(data, LIMITS)
    except ArchiveError:
        return
    for m in members:
        assert m.size >= 0 and m.compressed_size >= 0 and m.header_offset >= 0


@given(st.binary(max_size=300), st.binary(max_size=60), st.integers(0, 1 << 40))
def test_find_arbitrary_tail_raises_only_archive_error(
    before: bytes, after: bytes, extra: int
) -> None:
    for tail in (before, before + b"PK\x05\x06" + after, before + b"PK\x06\x07" + after):
        try:
            offset, size, count = find_central_directory(tail, len(tail) + extra)
        except ArchiveError:
            continue
        assert offset >= 0 and offset + size <= len(tail) + extra and count >= 0


# Limits on what an archive may claim, and members a broken writer made


def test_directory_size_refused_before_reading() -> None:
    data = make_zip({f"{i}.txt": b"x" for i in range(20)})
    _, size, count = find_central_directory(data[-TAIL_BYTES:], len(data))
    assert count == 20
    with pytest.raises(ArchiveError, match="over the limit"):
        find_central_directory(data[-TAIL_BYTES:], len(data), Limits(max_directory_size=size - 1))
    with pytest.raises(ArchiveError, match="20 members, more than 19"):
        find_central_directory(data[-TAIL_BYTES:], len(data), Limits(max_members=19))
    # An end record claiming 40 MiB of directory in a file of zeros: refused from the tail alone.
    end = struct.pack("<4s4HIIH", b"PK\x05\x06", 0, 0, 1, 1, 40 << 20, 0, 0)
    with pytest.raises(ArchiveError, match="over the limit"):
        find_central_directory(end, (40 << 20) + len(end))


def test_lost_zip64_sizes_refuse_only_that_member() -> None:
    data = build_zip(
        [
            Raw(b"good.txt", b"good"),
            Raw(b"lost.bin", b"no zip64 field", lost_zip64=True),
            # Both sizes overflowed, but the zip64 field holds only the first.
            Raw(
                b"short.bin", b"short zip64 field", zip64=True, extra=struct.pack("<HHQ", 1, 8, 17)
            ),
            Raw(b"zip64.bin", b"honest zip64", zip64=True),
        ]
    )
    f = io.BytesIO(data)
    good, lost, short, honest = read_members(f, LIMITS)
    for broken in (lost, short):
        assert broken.flags & FLAG_LOST_ZIP64 and broken.size == 0
        with pytest.raises(MemberError, match="zip64") as info:
            check_member(broken, LIMITS)
        assert info.value.errno == errno.EIO
    assert member_bytes(f, good) == b"good"
    assert member_bytes(f, honest) == b"honest zip64"
    assert not (good.flags | honest.flags) & FLAG_LOST_ZIP64


def test_limits_overridden() -> None:
    assert Limits().overridden() == Limits()
    raised = Limits().overridden(max_member_size=2 << 30, max_ratio=50)
    assert (raised.max_member_size, raised.max_total_size, raised.max_ratio) == (2 << 30,) * 2 + (
        50,
    )
    lowered = Limits().overridden(max_member_size=1 << 20)
    assert lowered.max_total_size == Limits().max_total_size


_RAW_MEMBERS = st.lists(
    st.builds(
        Raw,
        name=st.binary(min_size=1, max_size=30),
        data=st.binary(max_size=3000) | st.sampled_from([b"", b"\0" * 5000, b"osu! " * 900]),
        method=st.sampled_from([0, 8]),
        zip64=st.booleans(),
    ),
    max_size=6,
)


@given(_RAW_MEMBERS)
def test_written_members_read_back(raws: list[Raw]) -> None:
    f = io.BytesIO(build_zip(raws))
    members = read_members(f, LIMITS)
    assert [m.raw_name for m in members] == [r.name for r in raws]
    for member, raw in zip(members, raws, strict=True):
        if raw.name.endswith((b"/", b"\\")):
            with pytest.raises(MemberError) as info:
                member_bytes(f, member)
            assert info.value.errno == errno.EISDIR
        else:
            assert member_bytes(f, member) == raw.data


@given(
    _RAW_MEMBERS, st.lists(st.tuples(st.integers(0), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_damaged_archives_fail_only_with_our_errors(
    raws: list[Raw], damage: list[tuple[int, int]]
) -> None:
    """Whatever bytes are changed, reading raises only ArchiveError or MemberError, and what
    extracts has exactly the declared size and CRC32."""
    data = bytearray(build_zip(raws))
    for position, value in damage:
        data[position % len(data)] = value
    f = io.BytesIO(bytes(data))
    try:
        members = read_members(f, LIMITS)
    except ArchiveError:
        return
    for member in members:
        try:
            out = member_bytes(f, member)
        except MemberError:
            continue
        assert len(out) == member.size and zlib.crc32(out) == member.crc32
