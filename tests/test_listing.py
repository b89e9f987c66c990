"""osufs.listing: building a set's tree from zip members, and storing it."""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osufs.archive import Limits, ZipMember, read_members
from osufs.listing import Entry, SetListing, build_listing
from osufs.names import case_key, decode_names, is_junk, normalise_path

CORPUS = Path("/work/shared/corpus/real")


def member(name: str | bytes, mtime: int = 0, size: int = 1, offset: int = 0) -> ZipMember:
    raw = name.encode() if isinstance(name, str) else name
    return ZipMember(raw, False, 8, 0, 0, 1, size, offset, mtime, raw.endswith((b"/", b"\\")))


def tree(listing: SetListing) -> dict[str, str | None]:
    """path -> the member's raw name (None for directories)."""
    return {
        listing.path(i): None if e.is_dir else listing.members[e.member].raw_name.decode("cp932")
        for i, e in enumerate(listing.entries)
        if i
    }


def check_consistent(listing: SetListing) -> None:
    entries = listing.entries
    assert entries[0] == Entry("", 0, True, 0, entries[0].mtime_ns, -1)
    seen: set[tuple[int, str]] = set()
    for i, e in enumerate(entries[1:], 1):
        assert e.parent < i and entries[e.parent].is_dir
        key = (e.parent, case_key(e.name))
        assert key not in seen  # unique ignoring case within each directory
        seen.add(key)
        assert listing.child(e.parent, e.name) == i
        assert i in listing.children(e.parent)
        path = listing.path(i)
        assert not path.startswith("/")
        assert all(part not in ("", ".", "..") for part in path.split("/"))
        assert len(e.name.encode()) <= 255
        if e.is_dir:
            assert e.member == -1 and listing.children(i)
            assert e.mtime_ns == max(entries[c].mtime_ns for c in listing.children(i))
        else:
            assert listing.members[e.member].size == e.size
    folded = [
        tuple(p.casefold() for p in listing.path(i).split("/")) for i in range(1, len(entries))
    ]
    assert folded == sorted(folded)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.osz")), ids=lambda p: p.name)
def test_real_archives(path: Path) -> None:
    with path.open("rb") as f:
        members = read_members(f, Limits())
    listing = build_listing(members)
    check_consistent(listing)
    paths = tree(listing)
    assert not any("__MACOSX" in p or p.startswith("._") for p in paths)
    assert len([p for p, raw in paths.items() if raw is not None]) == len(
        [m for m in members if b"__MACOSX" not in m.raw_name]
    )


def test_japanese_name_listed() -> None:
    with (CORPUS / "japanese-filename.osz").open("rb") as f:
        listing = build_listing(read_members(f, Limits()))
    index = listing.child(0, "見本.ogg")
    assert index is not None and listing.path(index) == "見本.ogg"


def test_junk_hidden(caplog: pytest.LogCaptureFixture) -> None:
    members = [member("bg.jpg"), member("__MACOSX/._bg.jpg"), member(".DS_Store")]
    with caplog.at_level(logging.WARNING):
        listing = build_listing(members)
    assert tree(listing) == {"bg.jpg": "bg.jpg"}
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_unsafe_names_dropped(caplog: pytest.LogCaptureFixture) -> None:
    members = [member("../evil.osu"), member("/abs/x.png"), member("C:\\y.png"), member("./")]
    with caplog.at_level(logging.WARNING):
        listing = build_listing(members)
    assert tree(listing) == {"abs": None, "abs/x.png": "/abs/x.png", "y.png": "C:\\y.png"}
    assert "evil" in caplog.text


def test_directories_synthesised() -> None:
    members = [member("a/"), member("empty/"), member("a/b/c/d.png", mtime=5), member("a/e", 9)]
    listing = build_listing(members)
    assert tree(listing) == {
        "a": None,
        "a/b": None,
        "a/b/c": None,
        "a/b/c/d.png": "a/b/c/d.png",
        "a/e": "a/e",
    }
    mtimes = {listing.path(i): e.mtime_ns for i, e in enumerate(listing.entries)}
    assert mtimes == {"": 9, "a": 9, "a/b": 5, "a/b/c": 5, "a/b/c/d.png": 5, "a/e": 9}


def test_duplicate_path_later_wins(caplog: pytest.LogCaptureFixture) -> None:
    members = [member("x.osu", offset=1), member("y.osu"), member("x.osu", offset=2)]
    with caplog.at_level(logging.WARNING):
        listing = build_listing(members)
    index = listing.child(0, "x.osu")
    assert index is not None
    assert listing.members[listing.entries[index].member].header_offset == 2
    assert len(listing.entries) == 3
    assert "x.osu" in caplog.text


def test_duplicate_after_normalising() -> None:
    members = [member("sb\\a.png", offset=1), member("./sb/a.png", offset=2)]
    listing = build_listing(members)
    assert list(tree(listing)) == ["sb", "sb/a.png"]
    assert listing.members[listing.entries[2].member].header_offset == 2


def test_case_collisions_renamed() -> None:
    members = [member("Audio.mp3", 1), member("audio.MP3", 2), member("AUDIO.mp3", 3)]
    members.append(member("audio (1).MP3", 4))  # a real name is never displaced by a renamed one
    listing = build_listing(members)
    check_consistent(listing)
    assert tree(listing) == {
        "Audio.mp3": "Audio.mp3",
        "audio (1).MP3": "audio (1).MP3",
        "audio (2).MP3": "audio.MP3",
        "AUDIO (3).mp3": "AUDIO.mp3",
    }


def test_directories_differing_in_case_merge() -> None:
    listing = build_listing([member("SB/a.png"), member("sb/b.png"), member("Sb/A.PNG")])
    check_consistent(listing)
    assert tree(listing) == {
        "SB": None,
        "SB/a.png": "SB/a.png",
        "SB/A (1).PNG": "Sb/A.PNG",
        "SB/b.png": "sb/b.png",
    }


def test_directory_beats_file() -> None:
    listing = build_listing([member("bg"), member("BG/x.png"), member("bg (1)")])
    check_consistent(listing)
    assert tree(listing) == {
        "BG": None,
        "BG/x.png": "BG/x.png",
        "bg (1)": "bg (1)",
        "bg (2)": "bg",
    }


def test_deterministic() -> None:
    members = [member(f"{c}{i}.png", i) for i in range(50) for c in "aAbB"] + [member("x/y.osu")]
    first = build_listing(members)
    assert build_listing(list(members)) == first
    assert first.to_bytes() == build_listing(members).to_bytes()


def test_empty_set() -> None:
    listing = build_listing([member("__MACOSX/x")])
    assert len(listing.entries) == 1 and listing.children(0) == []
    assert listing.entries[0].mtime_ns > 0


def test_round_trip() -> None:
    members = [member("Audio.mp3", 10**18), member("audio.mp3"), member("sb/見本.png", size=2**40)]
    members.append(ZipMember(b"\x8c\xa9\x96{.ogg", False, 0, 8, 2**32 - 1, 5, 5, 2**40, 1, False))
    listing = build_listing(members)
    restored = SetListing.from_bytes(listing.to_bytes())
    assert restored == listing
    assert restored.child(0, "見本.ogg") == listing.child(0, "見本.ogg") is not None
    assert [restored.path(i) for i in range(len(restored.entries))] == [
        listing.path(i) for i in range(len(listing.entries))
    ]


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", msgpack.packb([99, [], []]), msgpack.packb([1, [[1, 2]], []]), b"\x93\x01"],
)
def test_from_bytes_rejects_damage(data: bytes) -> None:
    with pytest.raises(ValueError):
        SetListing.from_bytes(data)


def test_twenty_thousand_members() -> None:
    members = [
        member(f"sb/layer{i % 40}/sprite_{i:05d}.png", mtime=i, offset=i * 100)
        for i in range(20_000)
    ]
    members += [member(f"SB/Layer{i % 40}/Sprite_{i:05d}.PNG") for i in range(0, 20_000, 100)]
    members += [member(f"diff {i}.osu") for i in range(100)]
    logger = logging.getLogger("test_listing.quiet")
    logger.propagate, logger.disabled = False, True
    listing = build_listing(members, log=logger)
    assert len(listing.entries) == 1 + 1 + 40 + 20_000 + 200 + 100
    top = listing.children(0)
    assert len(top) == 101 and listing.entries[listing.child(0, "sb") or 0].is_dir
    assert SetListing.from_bytes(listing.to_bytes()) == listing


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.lists(
                st.sampled_from([b"a", b"A", b"/", b"\\", b"..", b".", b"\x8c\xa9", b"\0"])
            ).map(b"".join),
        ),
        max_size=25,
    ),
    st.lists(st.text(max_size=10), max_size=3),
)
def test_arbitrary_names_never_crash(raws: list[bytes], references: list[str]) -> None:
    logger = logging.getLogger("test_listing.quiet")
    logger.disabled = True
    listing = build_listing([member(r, i) for i, r in enumerate(raws)], references, logger)
    check_consistent(listing)
    assert SetListing.from_bytes(listing.to_bytes()) == listing


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.lists(
                st.sampled_from([b"a", b"A", b"/", b"\\", b"..", b".", b"\x8c\xa9", b"\0"])
            ).map(b"".join),
        ),
        max_size=25,
    ),
    st.lists(st.text(max_size=10), max_size=3),
)
def test_every_safe_path_lists_its_last_member(raws: list[bytes], references: list[str]) -> None:
    """Same path twice (after decoding and normalising): the later member wins, and nothing
    else is dropped but unsafe names, directories and clutter."""
    logger = logging.getLogger("test_listing.quiet")
    logger.disabled = True
    members = [member(r, i) for i, r in enumerate(raws)]
    listing = build_listing(members, references, logger)
    last: dict[str, int] = {}
    for i, (m, name) in enumerate(zip(members, decode_names(members, references), strict=True)):
        path = None if m.is_dir else normalise_path(name)
        if path is not None and not is_junk(path):
            last[path] = i
    assert sorted(e.member for e in listing.entries if not e.is_dir) == sorted(last.values())
