"""A hostile corpus, built byte by byte where zipfile would refuse, with each case's defined result.

`corpus()` gives `HostileSet`s: the archive's bytes and what a mount must show for it, either a
tree (`files`: path -> bytes, or the errno that opening it must raise) or, for archives that are
not zips at all, the errno of listing the set (`error`). The rules themselves are in
docs/archives.md; this module only states their outcome for each hostile input.
"""

from __future__ import annotations

import bz2
import errno
import random
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

__all__ = ["HostileSet", "Raw", "build_zip", "corpus", "open_files_set", "osu_text"]

_LOCAL = struct.Struct("<4s5H3I2H")
_CENTRAL = struct.Struct("<4s6H3I5H2I")
_END = struct.Struct("<4s4HIIH")
_DOS_TIME, _DOS_DATE = 0, (2020 - 1980) << 9 | 1 << 5 | 1  # 2020-01-01 00:00:00
_MAX32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Raw:
    """One member as written: every field a writer could get wrong can be set by hand."""

    name: bytes
    data: bytes = b""
    method: int = 8
    flags: int = 0
    crc: int | None = None  # default: the data's CRC32
    size: int | None = None  # declared uncompressed size; default len(data)
    payload: bytes | None = None  # the stored (compressed) bytes; default data compressed by method
    zip64: bool = False  # sizes in a zip64 extra field
    lost_zip64: bool = False  # sizes 0xFFFFFFFF but no zip64 extra field (a broken writer)
    extra: bytes | None = None  # the extra field as written, instead of the one zip64 implies
    local_signature: bytes = b"PK\x03\x04"


def _compress(member: Raw) -> bytes:
    if member.payload is not None:
        return member.payload
    if member.method == 8:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        return compressor.compress(member.data) + compressor.flush()
    if member.method == 12:
        return bz2.compress(member.data)
    return member.data


def build_zip(members: list[Raw]) -> bytes:
    """Local headers, data and a central directory exactly as `members` say, lies included."""
    out = bytearray()
    central = bytearray()
    for m in members:
        payload = _compress(m)
        crc = zlib.crc32(m.data) if m.crc is None else m.crc
        size = len(m.data) if m.size is None else m.size
        csize = len(payload)
        extra = b""
        if m.zip64:
            extra = struct.pack("<HHQQ", 1, 16, size, csize)
        if m.extra is not None:
            extra = m.extra
        if m.zip64 or m.lost_zip64:
            size32 = csize32 = _MAX32
        else:
            size32, csize32 = size, csize
        offset = len(out)
        out += _LOCAL.pack(m.local_signature, 45, m.flags, m.method, _DOS_TIME, _DOS_DATE, crc,
                           csize32, size32, len(m.name), len(extra))  # fmt: skip
        out += m.name + extra + payload
        central += _CENTRAL.pack(b"PK\x01\x02", 45, 45, m.flags, m.method, _DOS_TIME, _DOS_DATE,
                                 crc, csize32, size32, len(m.name), len(extra), 0, 0, 0, 0,
                                 offset)  # fmt: skip
        central += m.name + extra
    cd_offset = len(out)
    out += central
    out += _END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(central), cd_offset, 0)
    return bytes(out)


def osu_text(title: str, audio: str = "audio.mp3", background: str = "bg.jpg") -> bytes:
    return (
        "osu file format v14\n\n[General]\n"
        f"AudioFilename: {audio}\n\n[Metadata]\nTitle:{title}\nArtist:Hostile\n"
        f'Creator:osufs\nVersion:{title}\n\n[Events]\n0,0,"{background}",0,0\n'
    ).encode()


@dataclass
class HostileSet:
    set_id: int
    label: str
    archive: bytes
    files: dict[str, bytes | int] = field(default_factory=dict)  # path -> bytes or errno
    error: int | None = None  # listing the set fails with this errno
    padding: int = 0  # zero bytes before `archive` in the file (written sparse)

    def write(self, path: Path) -> None:
        with open(path, "wb") as file:
            file.truncate(self.padding)
            file.seek(self.padding)
            file.write(self.archive)

    @property
    def good(self) -> dict[str, bytes]:
        return {path: data for path, data in self.files.items() if isinstance(data, bytes)}


def _osu(title: str, **kw: str) -> tuple[Raw, str, bytes]:
    data = osu_text(title, **kw)
    return Raw(b"hostile.osu", data), "hostile.osu", data


def _long_name() -> tuple[bytes, str]:
    """A 300-byte name, and the rule's result: 255 bytes, ending in a hash and the extension."""
    name = "long-" + "x" * 291 + ".txt"
    tag = f"~{zlib.crc32(name.encode()):08x}"
    return name.encode(), name[: 255 - len(tag) - 4] + tag + ".txt"


def names_set() -> HostileSet:
    osu, osu_path, osu_data = _osu("Names")
    long_raw, long_path = _long_name()
    members = [
        osu,
        Raw(b"../../etc/x", b"climbs out"),  # dropped: climbs
        Raw(b"sb/../../../x", b"climbs out"),  # dropped
        Raw(b"..\\..\\x.txt", b"climbs out"),  # dropped: backslashes separate
        Raw(b".\x00./climb.txt", b"climbs out"),  # the NUL goes first, leaving ".."
        Raw(b"/etc/passwd", b"absolute"),  # -> etc/passwd inside the set
        Raw(b"C:\\Windows\\x", b"drive"),  # -> Windows/x
        Raw(b"c:relative.txt", b"drive-relative"),  # -> relative.txt
        Raw(b"\\\\server\\share\\unc.txt", b"unc"),  # -> server/share/unc.txt
        Raw(b"sb\\bg.png", b"backslash"),  # -> sb/bg.png
        Raw(b"a//b/./c.txt", b"empty components"),  # -> a/b/c.txt
        Raw(b"nul\x00name.txt", b"nul"),  # -> nulname.txt
        Raw(b"ctl\x01\x07\x1b\x7f.txt", b"control"),  # -> ctl.txt
        Raw(long_raw, b"long"),
        Raw(b"dup.txt", b"first"),
        Raw(b"dup.txt", b"second"),  # the same path twice: the later wins
        Raw(b"sb/dup.png", b"slash"),
        Raw(b"sb\\dup.png", b"backslash wins"),  # the same path after normalising
        Raw(b"Case.txt", b"first spelling"),
        Raw(b"CASE.TXT", b"second spelling"),  # kept as it is, as unzip on Linux does
        Raw(b"Dir/a.txt", b"dir a"),
        Raw(b"DIR/b.txt", b"dir b"),  # directories merge under the first spelling
        Raw(b"Dir/A.txt", b"dir A"),  # as well as Dir/a.txt
        Raw(b"dir/a.txt", b"dir a again"),  # Dir/a.txt once the directories merge -> (1)
        Raw(b"clash", b"file"),  # a directory of the same name wins -> "clash (1)"
        Raw(b"clash/inner.txt", b"inner"),
        Raw("日本語.txt".encode(), b"utf-8", flags=0x800),
        Raw(b"__MACOSX/._bg.png", b"clutter"),
        Raw(b".DS_Store", b"clutter"),
        Raw(b"empty/", b"", method=0),  # directory members go; empty directories vanish
        Raw(b"", b"no name"),
        Raw(b"/", b"only a slash"),
    ]
    files: dict[str, bytes | int] = {
        osu_path: osu_data,
        "etc/passwd": b"absolute",
        "Windows/x": b"drive",
        "relative.txt": b"drive-relative",
        "server/share/unc.txt": b"unc",
        "sb/bg.png": b"backslash",
        "a/b/c.txt": b"empty components",
        "nulname.txt": b"nul",
        "ctl.txt": b"control",
        long_path: b"long",
        "dup.txt": b"second",
        "sb/dup.png": b"backslash wins",
        "Case.txt": b"first spelling",
        "CASE.TXT": b"second spelling",
        "Dir/a.txt": b"dir a",
        "Dir/A.txt": b"dir A",
        "Dir/a (1).txt": b"dir a again",
        "Dir/b.txt": b"dir b",
        "clash (1)": b"file",
        "clash/inner.txt": b"inner",
        "日本語.txt": b"utf-8",
    }
    return HostileSet(101, "names", build_zip(members), files)


@cache
def _zeros_deflated(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(bytes(size)) + compressor.flush()


def members_set() -> HostileSet:
    osu, osu_path, osu_data = _osu("Members")
    good = b"a good member, " * 50
    stored = bytes(range(256)) * 8
    big = 100 << 20
    members = [
        osu,
        Raw(b"good.txt", good),
        Raw(b"stored.bin", stored, method=0),
        Raw(b"zip64.bin", b"honest zip64 extra", zip64=True),
        Raw(b"crc.txt", b"bytes that do not match their CRC", crc=0x12345678),
        Raw(b"encrypted.txt", b"\x00" * 12 + b"secret", method=0, flags=0x1),
        Raw(b"bzip2.txt", b"bzip2 " * 40, method=12),
        Raw(b"aes.txt", b"aes", method=99, payload=b"\x00" * 40),
        # 100 MiB of zeros declared honestly: about 1000:1, refused before inflating.
        Raw(b"honest-bomb.bin", payload=_zeros_deflated(big), size=big, crc=zlib.crc32(bytes(big))),
        # 10 GiB declared through zip64: past the member size limit.
        Raw(b"huge.bin", payload=b"\x03\x00", size=10 << 30, zip64=True),
        # Declares 1000 bytes, inflates to 64 MiB: cut off at 1000.
        Raw(b"lying-bomb.bin", payload=_zeros_deflated(64 << 20), size=1000, crc=0),
        Raw(b"short.bin", b"shorter than declared", size=4000),
        Raw(b"corrupt.bin", payload=b"\xff" * 64, size=100, crc=0),
        Raw(b"lost-zip64.bin", b"sizes 0xFFFFFFFF without a zip64 field", lost_zip64=True),
        Raw(b"bad-local.bin", b"local header signature broken", local_signature=b"XX\x03\x04"),
    ]
    files: dict[str, bytes | int] = {
        osu_path: osu_data,
        "good.txt": good,
        "stored.bin": stored,
        "zip64.bin": b"honest zip64 extra",
        "crc.txt": errno.EIO,
        "encrypted.txt": errno.EIO,
        "bzip2.txt": errno.EIO,
        "aes.txt": errno.EIO,
        "honest-bomb.bin": errno.EFBIG,
        "huge.bin": errno.EFBIG,
        "lying-bomb.bin": errno.EFBIG,
        "short.bin": errno.EIO,
        "corrupt.bin": errno.EIO,
        "lost-zip64.bin": errno.EIO,
        "bad-local.bin": errno.EIO,
    }
    return HostileSet(102, "members", build_zip(members), files)


def legacy_sets() -> list[HostileSet]:
    """Names without the UTF-8 flag that are not UTF-8: one code page per archive."""
    japanese = "見本.ogg".encode("cp932")
    western = "café.mp3".encode("cp1252")  # not UTF-8, and not Shift-JIS either
    osu_jp, path_jp, data_jp = _osu("Shift-JIS fallback")
    osu_w, path_w, data_w = _osu("Chosen by reference", audio="café.mp3")
    osu_d, path_d, data_d = _osu("cp437 fallback")
    return [
        HostileSet(
            103,
            "cp932 fallback",
            build_zip([osu_jp, Raw(japanese, b"jp")]),
            {path_jp: data_jp, "見本.ogg": b"jp"},
        ),
        HostileSet(
            104,
            "code page chosen by the .osu",
            build_zip([osu_w, Raw(western, b"w")]),
            {path_w: data_w, "café.mp3": b"w"},
        ),
        HostileSet(
            105,
            "cp437 fallback",
            build_zip([osu_d, Raw(western, b"d")]),
            {path_d: data_d, "cafΘ.mp3": b"d"},
        ),
    ]


def broken_osu_set() -> HostileSet:
    """Legacy names whose only .osu fails its CRC: the code page falls back, the set still lists
    and is named without it."""
    western = "café.mp3".encode("cp1252")
    osu = osu_text("Broken", audio="café.mp3")
    members = [Raw(b"broken.osu", osu, crc=zlib.crc32(osu) ^ 1), Raw(western, b"w")]
    return HostileSet(
        108, "unreadable .osu", build_zip(members), {"broken.osu": errno.EIO, "cafΘ.mp3": b"w"}
    )


MANY = 20_000


def many_set() -> HostileSet:
    """20,000 members: the .osu and 19,999 small distinct files in one directory."""
    osu, osu_path, osu_data = _osu("Many")
    members = [osu]
    files: dict[str, bytes | int] = {osu_path: osu_data}
    for i in range(1, MANY):
        data = f"member {i}\n".encode()
        members.append(Raw(f"f/{i:05d}.txt".encode(), data, method=0))
        files[f"f/{i:05d}.txt"] = data
    return HostileSet(106, "20,000 members", build_zip(members), files)


def open_files_set(count: int) -> HostileSet:
    """`count` small distinct members, for holding thousands of files open at once."""
    members = [Raw(f"{i:05d}.txt".encode(), f"open file {i}\n".encode(), method=0)
               for i in range(count)]  # fmt: skip
    files: dict[str, bytes | int] = {m.name.decode(): m.data for m in members}
    return HostileSet(107, f"{count} members to open", build_zip(members), files)


def broken_sets() -> list[HostileSet]:
    """Archives that are not readable zips at all: listing the set is EIO."""
    whole = build_zip([_osu("Truncated")[0], Raw(b"audio.mp3", bytes(range(256)) * 64)])
    rng = random.Random(6)
    # Three members declaring 400 MiB each: over the 1 GiB a set may declare in total.
    declared = [Raw(f"{i}.bin".encode(), payload=b"\x03\x00", size=400 << 20) for i in range(3)]
    lying_end = bytearray(build_zip([Raw(b"a.txt", b"a")]))
    struct.pack_into("<I", lying_end, len(lying_end) - 6, 1 << 30)  # directory offset: 1 GiB
    cases = [
        ("truncated", whole[: len(whole) // 2]),
        ("garbage", rng.randbytes(10_000)),
        ("html", b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>\n"),
        ("empty", b""),
        ("declares over 1 GiB", build_zip(declared)),
        ("end record lies", bytes(lying_end)),
    ]
    # An end record claiming a 40 MiB central directory (over the 32 MiB limit) in a 40 MiB
    # file of zeros: refused before any of it is read into memory.
    huge_directory = _END.pack(b"PK\x05\x06", 0, 0, 1, 1, 40 << 20, 0, 0)
    return [
        *(
            HostileSet(110 + i, label, data, error=errno.EIO)
            for i, (label, data) in enumerate(cases)
        ),
        HostileSet(116, "directory over 32 MiB", huge_directory, error=errno.EIO, padding=40 << 20),
    ]


def corpus() -> list[HostileSet]:
    return [
        names_set(),
        members_set(),
        *legacy_sets(),
        broken_osu_set(),
        many_set(),
        *broken_sets(),
    ]
