"""osufs.names: cleaning, folder names, code-page guessing, path normalisation, junk."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from osufs.archive import Limits, ZipMember, read_members
from osufs.names import (
    case_key,
    clean_filename,
    decode_names,
    is_junk,
    normalise_path,
    numbered_name,
    set_folder_name,
)
from tests.helpers import SHARED

CORPUS = SHARED / "corpus" / "real"
SONGS = len("C:\\osu!\\Songs\\")


def member(raw: bytes, utf8: bool = False) -> ZipMember:
    return ZipMember(raw, utf8, 8, 0x800 if utf8 else 0, 0, 1, 1, 0, 0, raw.endswith(b"/"))


def test_clean_filename() -> None:
    assert clean_filename('a"b<c>d|e:f*g?h\\i/j') == "abcdefghij"
    assert clean_filename("tab\there\x00\x1f end") == "tabhere end"
    assert clean_filename("見本 [Hard] (x).osu") == "見本 [Hard] (x).osu"


def test_set_folder_name_plain() -> None:
    assert set_folder_name(241526, "Soleily", "Renatus") == "241526 Soleily - Renatus"
    assert set_folder_name(1, "A/C: B", "Why?") == "1 AC B - Why"
    assert set_folder_name(7, "Artist", "Title... ") == "7 Artist - Title"


@pytest.mark.parametrize("longest", [0, 40, 150, 230, 300])
def test_set_folder_name_fits_windows_paths(longest: int) -> None:
    folder = set_folder_name(123456, "Artist " * 30, "Title " * 30, longest)
    assert folder.startswith("123456")
    assert folder == set_folder_name(123456, "Artist " * 30, "Title " * 30, longest)
    assert not folder.endswith((" ", "."))
    if SONGS + len("123456 Art") + 1 + longest <= 259:
        assert SONGS + len(folder) + 1 + longest <= 259
        assert folder.startswith("123456 Art")
    else:
        # The id is never shortened, even when nothing else fits; and the folder is never the
        # bare id, which names the set's symlink.
        assert folder == "123456 -"


def test_set_folder_name_counts_utf16_units() -> None:
    folder = set_folder_name(9, "🎵" * 200, "x", 100)
    assert SONGS + len(folder.encode("utf-16-le")) // 2 + 1 + 100 <= 259
    assert folder.startswith("9 🎵")


def test_japanese_name_from_real_archive() -> None:
    with (CORPUS / "japanese-filename.osz").open("rb") as f:
        members = read_members(f, Limits())
    names = decode_names(members)
    assert "見本.ogg" in names
    assert "track.ogg" in names
    assert decode_names(members, ["見本.ogg"]) == names


def test_utf8_flag_and_valid_utf8() -> None:
    raw = "Ünïcode.png".encode()
    assert decode_names([member(raw, utf8=True), member(raw)]) == ["Ünïcode.png"] * 2


def test_legacy_default_is_cp932() -> None:
    assert decode_names([member("見本.ogg".encode("cp932"))]) == ["見本.ogg"]


def test_cp437_when_cp932_cannot_decode() -> None:
    raw = b"\x82 x.png"  # a lead byte without a valid trail byte
    with pytest.raises(UnicodeDecodeError):
        raw.decode("cp932")
    assert decode_names([member(raw)]) == [raw.decode("cp437")]


def test_references_choose_the_code_page() -> None:
    cyrillic = "Привет.mp3".encode("cp1251")
    korean = "배경.jpg".encode("cp949")
    assert decode_names([member(cyrillic)], ["привет.MP3"]) == ["Привет.mp3"]
    assert decode_names([member(korean)], ["SB\\..\\배경.jpg", "배경.jpg"]) == ["배경.jpg"]
    # One code page for the whole archive: the one most names agree with.
    both = [member("é.png".encode("cp1252")), member("è.png".encode("cp1252"))]
    assert decode_names(both, ["é.png", "è.png"]) == ["é.png", "è.png"]


def test_references_compare_paths_loosely() -> None:
    raw = "SB/見本.png".encode("cp932")
    assert decode_names([member(raw)], ["sb\\見本.PNG"]) == ["SB/見本.png"]


def test_invalid_utf8_under_utf8_flag_is_guessed() -> None:
    assert decode_names([member("見本.ogg".encode("cp932"), utf8=True)]) == ["見本.ogg"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("audio.mp3", "audio.mp3"),
        ("sb\\bg.png", "sb/bg.png"),
        ("/etc/passwd", "etc/passwd"),
        ("C:\\Windows\\x.dll", "Windows/x.dll"),
        ("c:x.png", "x.png"),
        ("./a//b/./c.png", "a/b/c.png"),
        ("\\\\server\\share\\a.png", "server/share/a.png"),
        ("a\x00b\x1f\x7f.png", "ab.png"),
        ("../x.png", None),
        ("a/../../x.png", None),
        ("a\\..\\x.png", None),
        (".\x00./x.png", None),  # the NUL goes first, leaving ".."
        ("", None),
        ("/", None),
        ("./.", None),
        ("...", "..."),
        (" ", " "),
        ("\ud800x.png", "?x.png"),
    ],
)
def test_normalise_path(name: str, expected: str | None) -> None:
    assert normalise_path(name) == expected


def test_long_component_keeps_extension() -> None:
    long = "あ" * 200 + ".png"
    short = normalise_path(f"sb/{long}")
    assert short is not None
    folder, name = short.split("/")
    assert folder == "sb" and name.endswith(".png") and len(name.encode()) <= 255
    assert name == normalise_path(long)
    assert normalise_path("あ" * 199 + "い.png") != name  # different long names stay apart


def test_numbered_name() -> None:
    assert numbered_name("a.png", 1) == "a (1).png"
    assert numbered_name(".hidden", 2) == ".hidden (2)"
    assert numbered_name("noext", 3) == "noext (3)"
    assert len(numbered_name("x" * 255, 12).encode()) <= 255


def test_case_key() -> None:
    assert case_key("Audio.MP3") == case_key("audio.mp3")
    assert case_key("Ärger") == case_key("äRGER")
    assert case_key("straße") != case_key("strasse")  # NTFS keeps these apart


@pytest.mark.parametrize(
    ("path", "junk"),
    [
        ("__MACOSX/._bg.jpg", True),
        ("sb/__MACOSX/x.png", True),
        (".DS_Store", True),
        ("sb/.ds_store", True),
        ("Thumbs.db", True),
        ("desktop.ini", True),
        ("._audio.mp3", True),
        ("audio.mp3", False),
        ("macosx/bg.jpg", False),
        ("_bg.jpg", False),
    ],
)
def test_is_junk(path: str, junk: bool) -> None:
    assert is_junk(path) is junk


def check_safe(path: str | None) -> None:
    if path is None:
        return
    assert not path.startswith("/")
    for part in path.split("/"):
        assert part not in ("", ".", "..")
        assert len(part.encode("utf-8")) <= 255
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in part)
    assert not (len(path) >= 2 and path[1] == ":" and path[0].isalpha() and path[0].isascii())


_PIECES = st.sampled_from(["..", ".", "/", "\\", "C:", "\x00", "a", "é", "あ", "\n", " "])


@given(st.one_of(st.text(), st.lists(_PIECES | st.text(max_size=300)).map("".join)))
def test_normalise_path_is_always_safe(name: str) -> None:
    check_safe(normalise_path(name))


@given(st.binary(max_size=600))
def test_normalise_decoded_bytes_is_always_safe(raw: bytes) -> None:
    for name in decode_names([member(raw)]):
        check_safe(normalise_path(name))


@given(st.lists(st.binary(max_size=40), max_size=8), st.lists(st.text(max_size=20), max_size=4))
def test_decode_names_never_raises(raws: list[bytes], references: list[str]) -> None:
    names = decode_names([member(r) for r in raws], references)
    assert len(names) == len(raws)
