"""Names: osu!'s file-name cleaning, set folder names, member path normalisation, code pages."""

from __future__ import annotations

import re
import zlib
from collections.abc import Collection, Sequence

from osufs.archive import ZipMember

__all__ = [
    "LEGACY_CODEPAGES",
    "MAX_COMPONENT_BYTES",
    "MAX_SET_ID",
    "MEMBER_ROOM",
    "case_key",
    "clean_filename",
    "decode_names",
    "is_junk",
    "normalise_path",
    "numbered_name",
    "set_folder_name",
]

MAX_COMPONENT_BYTES = 255
# The largest set id: an inode holds the set id in its upper 32 bits, and osu! ids are signed
# 32-bit numbers.
MAX_SET_ID = 2**31 - 1
# Tried in this order; earlier wins ties. cp932 first because osu! stable and lazer use it.
LEGACY_CODEPAGES = ("cp932", "cp437", "cp1252", "cp949", "cp936", "cp1251")

_INVALID = dict.fromkeys([*map(ord, '"<>|:*?\\/'), *range(32)])
_CONTROL = dict.fromkeys([*range(32), *range(0x7F, 0xA0)])
_DRIVE = re.compile(r"[A-Za-z]:")
_SONGS_PREFIX = "C:\\osu!\\Songs\\"
_MAX_PATH = 259  # Windows MAX_PATH (260) less the terminating NUL
# A set's folder name is chosen from the set list, before any member is known, and must be the
# same on every mount, from every source, in every cache state: it cannot depend on member
# paths. It is capped so that C:\osu!\Songs\ (14), the folder, "\" and a member path of up
# to MEMBER_ROOM UTF-16 units fit in 259: folders of at most 84 units. 160 holds a .osu named
# "Artist - Title (Creator) [Version].osu" for an "Artist - Title" of about 120 characters.
MEMBER_ROOM = 160
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


def clean_filename(name: str) -> str:
    """osu!'s GetValidFilename: remove " < > | : * ? \\ / and characters 0-31."""
    return name.translate(_INVALID)


def _wlen(text: str) -> int:
    # Windows counts UTF-16 code units, so characters outside the BMP count twice.
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


def set_folder_name(set_id: int, artist: str, title: str, longest_member: int = MEMBER_ROOM) -> str:
    """The folder "<id> <Artist> - <Title>", cleaned (osu!'s characters, and DEL and C1 controls
    too), trimmed and shortened after the id so that C:\\osu!\\Songs\\, the folder, a separator
    and a member path of longest_member units fit in 259 characters. Callers leave the default:
    a fixed cap, so a name never depends on what is known of the set. Never the bare id: that
    name is the set's symlink to its folder."""
    prefix = f"{set_id} "
    rest = clean_filename(f"{artist} - {title}").translate(_CONTROL).rstrip(". ")
    budget = _MAX_PATH - len(_SONGS_PREFIX) - 1 - longest_member - len(prefix)
    while rest and _wlen(rest) > budget:
        rest = rest[: max(0, min(len(rest) - 1, budget))].rstrip(". ")
    # Windows drops trailing dots and spaces, so trimming keeps both sides agreeing on the name.
    return prefix + (rest or "-")


def case_key(name: str) -> str:
    """The key under which Windows (and so osu!) considers two names equal: simple upper case."""
    if name.isascii():
        return name.upper()
    # Full case mapping would merge "ß" with "ss"; NTFS maps one code unit to one code unit.
    return "".join(u if len(u := c.upper()) == 1 else c for c in name)


def _reference_key(name: str) -> str | None:
    path = normalise_path(name)
    return case_key(path) if path is not None else None


def decode_names(members: Sequence[ZipMember], references: Collection[str] = ()) -> list[str]:
    """Each member's name as text: UTF-8 when flagged or valid, else one code page for the archive,
    the one under which most names match `references`; ties prefer cp932, then cp437."""
    names: list[str | None] = []
    legacy: list[int] = []
    for i, m in enumerate(members):
        try:
            names.append(m.raw_name.decode("utf-8"))
        except UnicodeDecodeError:
            # A UTF-8 flag on invalid UTF-8 is a lie; guess like for unflagged names.
            names.append(None)
            legacy.append(i)
    if not legacy:
        return [n for n in names if n is not None]
    wanted = {k for r in references if (k := _reference_key(r)) is not None}
    best: tuple[int, bool, int] | None = None
    chosen = LEGACY_CODEPAGES[1]
    for rank, codec in enumerate(LEGACY_CODEPAGES):
        matches = 0
        decodes_all = True
        for i in legacy:
            try:
                text = members[i].raw_name.decode(codec)
            except UnicodeDecodeError:
                decodes_all = False
                continue
            if wanted and _reference_key(text) in wanted:
                matches += 1
        score = (matches, decodes_all, -rank)
        if best is None or score > best:
            best, chosen = score, codec
    for i in legacy:
        raw = members[i].raw_name
        try:
            names[i] = raw.decode(chosen)
        except UnicodeDecodeError:
            # cp437 maps every byte, so a name the chosen page cannot read still gets one.
            names[i] = raw.decode("cp437")
    return [n if n is not None else "" for n in names]


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    # ".hidden" has no extension, and a long "extension" is just part of the name.
    if not stem or len(ext.encode("utf-8")) > 16:
        return name, ""
    return stem, dot + ext


def _fit(stem: str, suffix: str) -> str:
    """stem + suffix, with the stem cut on a character boundary so the whole fits in 255 bytes."""
    room = MAX_COMPONENT_BYTES - len(suffix.encode("utf-8"))
    return stem.encode("utf-8")[:room].decode("utf-8", "ignore") + suffix


def _shorten(component: str) -> str:
    if len(component.encode("utf-8")) <= MAX_COMPONENT_BYTES:
        return component
    # A hash of the full name keeps two long names sharing a prefix apart, deterministically.
    stem, ext = _split_ext(component)
    tag = f"~{zlib.crc32(component.encode('utf-8')):08x}"
    return _fit(stem, tag + ext)


def numbered_name(name: str, n: int) -> str:
    """`stem (n).ext`, kept within 255 bytes, for a name that collides with another."""
    stem, ext = _split_ext(name)
    return _fit(stem, f" ({n}){ext}")


def normalise_path(name: str) -> str | None:
    """A safe relative "/"-separated path for a member name; None if nothing is left or it climbs.
    Backslashes separate; drive letters, leading "/", "." and empty components go."""
    # Lone surrogates cannot become file names; "?" keeps the rest of the name.
    text = name.encode("utf-8", "replace").decode("utf-8").translate(_CONTROL)
    text = text.replace("\\", "/").lstrip("/")
    while _DRIVE.match(text):
        text = text[2:].lstrip("/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        return None
    return "/".join(_shorten(p) for p in parts)


def is_junk(path: str) -> bool:
    """Operating-system clutter: __MACOSX/ anywhere, .DS_Store, Thumbs.db, desktop.ini, ._ files."""
    parts = path.split("/")
    last = parts[-1]
    return (
        any(p.casefold() == "__macosx" for p in parts)
        or last.casefold() in _JUNK_NAMES
        or last.startswith("._")
    )
