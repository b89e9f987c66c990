"""osufs.listing: building a set's tree from zip members, and storing it."""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from osufs.archive import Limits, ZipMember, read_members
from osufs.listing import (
    Entry,
    Pin,
    PinnedFile,
    SetListing,
    build_listing,
    complete_listing,
    provisional_listing,
)
from osufs.names import case_key, decode_names, is_junk, normalise_path
from tests.helpers import SHARED

CORPUS = SHARED / "corpus" / "real"


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
    folders: set[tuple[int, str]] = set()
    for i, e in enumerate(entries[1:], 1):
        assert e.parent < i and entries[e.parent].is_dir
        key = (e.parent, e.name)
        assert key not in seen  # unique within each directory
        seen.add(key)
        if e.is_dir:  # directories differing only in case are one
            assert (e.parent, case_key(e.name)) not in folders
            folders.add((e.parent, case_key(e.name)))
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
        tuple((p.casefold(), p) for p in listing.path(i).split("/")) for i in range(1, len(entries))
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


def test_junk_hidden_and_summed_up_in_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    members = [member("bg.jpg"), member("__MACOSX/._bg.jpg"), member(".DS_Store")]
    members += [member(f"__MACOSX/sb/._{n}.png") for n in range(20)]
    with caplog.at_level(logging.INFO):
        listing = build_listing(members)
    assert tree(listing) == {"bg.jpg": "bg.jpg"}
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "left out 22 members of operating-system clutter (__MACOSX/ and such)")
    ]


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


def test_names_differing_only_in_case_keep_their_spelling() -> None:
    members = [member("BG.png", offset=1), member("bg.png", offset=2), member("Audio.mp3")]
    members.append(member("audio.MP3"))
    listing = build_listing(members)
    check_consistent(listing)
    assert tree(listing) == {
        "Audio.mp3": "Audio.mp3",
        "audio.MP3": "audio.MP3",
        "BG.png": "BG.png",
        "bg.png": "bg.png",
    }
    for name, offset in (("BG.png", 1), ("bg.png", 2)):
        index = listing.child(0, name)
        assert index is not None
        assert listing.members[listing.entries[index].member].header_offset == offset


def test_directories_differing_in_case_merge() -> None:
    members = [member("SB/a.png"), member("sb/b.png"), member("Sb/A.PNG"), member("sb/a.png")]
    members.append(member("SB/a (1).png"))  # a real name is never displaced by a numbered one
    listing = build_listing(members)
    check_consistent(listing)
    assert tree(listing) == {
        "SB": None,
        "SB/a (1).png": "SB/a (1).png",
        "SB/a (2).png": "sb/a.png",  # the same name as SB/a.png once the folders are one
        "SB/a.png": "SB/a.png",
        "SB/A.PNG": "Sb/A.PNG",
        "SB/b.png": "sb/b.png",
    }


def test_directory_beats_file() -> None:
    members = [member("bg"), member("bg/x.png"), member("bg (1)"), member("Sb"), member("SB/y")]
    listing = build_listing(members)
    check_consistent(listing)
    assert tree(listing) == {
        "bg": None,
        "bg (1)": "bg (1)",
        "bg (2)": "bg",
        "bg/x.png": "bg/x.png",
        "SB": None,
        "SB/y": "SB/y",
        "Sb": "Sb",  # a file and a folder differing in case, as on Linux
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


# provisional listings, pinned and completed by the archive


def pinned(name: str, size: int, crc32: int, beatmap_id: int) -> PinnedFile:
    return PinnedFile(name, size, Pin(beatmap_id, f"{beatmap_id:032x}", crc32))


def osu_member(name: str, size: int, crc32: int, mtime: int = 7) -> ZipMember:
    return ZipMember(name.encode(), True, 8, 0, crc32, size, size, 0, mtime, False)


UPDATED = 1_600_000_000 * 10**9


def test_a_provisional_listing_pins_difficulties_by_name() -> None:
    listing = provisional_listing(
        [
            pinned("B [Hard].osu", 30, 3, 3),
            pinned("a [Easy].osu", 10, 1, 1),
            pinned("b [hard].osu", 20, 2, 2),  # the same name ignoring case
            pinned("a [Easy].osu", 15, 4, 4),  # the same name
        ],
        UPDATED,
    )
    assert listing.provisional and listing.members == []
    assert [(e.name, e.size, e.mtime_ns, e.member) for e in listing.entries[1:]] == [
        ("a [Easy] (1).osu", 15, UPDATED, -1),
        ("a [Easy].osu", 10, UPDATED, -1),
        ("B [Hard].osu", 30, UPDATED, -1),
        ("b [hard].osu", 20, UPDATED, -1),
    ]
    assert [listing.pin(i).beatmap_id for i in (1, 2, 3, 4)] == [4, 1, 3, 2]
    assert listing.pin(0) is None and listing.pin(5) is None and listing.member(1) is None
    assert SetListing.from_bytes(listing.to_bytes()) == listing


def test_a_provisional_listing_stored_by_an_older_osufs_reads_the_same() -> None:
    listing = provisional_listing([pinned("a [Easy].osu", 10, 1, 1)], UPDATED)
    entries = [(e.name, e.parent, e.is_dir, e.size, e.mtime_ns, e.member) for e in listing.entries]
    format_2 = msgpack.packb([2, [], entries, [(1, f"{1:032x}", 1)], True], use_bin_type=True)
    assert SetListing.from_bytes(format_2) == listing
    assert len(listing.to_bytes()) == len(format_2) - 16  # the md5 as its bytes


def test_the_archive_completes_a_provisional_listing_without_moving_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = provisional_listing(
        [
            pinned("A - T (M) [Easy].osu", 10, 0xE, 1),
            pinned("A - T (M) [Hard].osu", 30, 0x4, 2),
            pinned("A - T (M) [Normal].osu", 20, 0x2, 3),
            pinned("A - T (M) [Gone].osu", 40, 0x6, 4),
        ],
        UPDATED,
    )
    members = [
        osu_member("A - T (M) [Easy].osu", 10, 0xE),  # the same file
        osu_member("A - T (OldName) [Hard].osu", 30, 0x4),  # the same bytes, another name
        osu_member("a - t (m) [normal].osu", 21, 0x9),  # the same name (case aside), older bytes
        osu_member("A - T (M) [Added].osu", 50, 0x5),  # a difficulty the site did not list
        osu_member("audio.mp3", 1000, 0xA, mtime=9),
        osu_member("a - t (m) [easy].osu/x.png", 1, 0xB),  # a folder named like a pinned file
        osu_member("A - T (M) [Gone].osu/y.png", 1, 0xD),  # a folder with a pinned file's name
        osu_member("sb/star.png", 2, 0xC),
    ]
    caplog.set_level(logging.INFO)
    completed = complete_listing(first, members, (), None, "set 5: ")
    check_completed(first, completed)
    assert not completed.provisional
    names = {completed.path(i): e.member for i, e in enumerate(completed.entries) if i}
    assert names == {
        "A - T (M) [Easy].osu": 0,
        "A - T (M) [Hard].osu": 1,
        "A - T (M) [Normal].osu": -1,  # its listed bytes are not in the archive
        "A - T (M) [Gone].osu": -1,
        "A - T (M) [Added].osu": 3,
        "audio.mp3": 4,
        "a - t (m) [easy].osu": -1,  # only its case differs: kept, as on Linux
        "a - t (m) [easy].osu/x.png": 5,
        "A - T (M) [Gone] (1).osu": -1,
        "A - T (M) [Gone] (1).osu/y.png": 6,
        "sb": -1,
        "sb/star.png": 7,
    }
    added = completed.child(0, "A - T (M) [Added].osu")
    assert completed.entries[added].mtime_ns == 7  # the zip's time, not the site's
    assert "set 5: the archive names 'A - T (M) [Hard].osu' as 'A - T (OldName) [Hard].osu'" in (
        caplog.text
    )
    assert "set 5: the archive's 'a - t (m) [normal].osu' differs" in caplog.text
    assert "set 5: the archive adds 'A - T (M) [Added].osu'" in caplog.text
    assert SetListing.from_bytes(completed.to_bytes()) == completed


def check_completed(first: SetListing, completed: SetListing) -> None:
    """The pinned entries are unchanged, the rest come after them, and the tree is sound."""
    count = len(first.pins)
    assert completed.pins == first.pins
    for index in range(1, count + 1):
        before, after = first.entries[index], completed.entries[index]
        assert (after.name, after.parent, after.size, after.mtime_ns) == (
            before.name,
            before.parent,
            before.size,
            before.mtime_ns,
        )
        if after.member >= 0:
            member = completed.members[after.member]
            assert (member.size, member.crc32) == (after.size, first.pins[index - 1].crc32)
    seen: set[tuple[int, str]] = set()
    for index, entry in enumerate(completed.entries[1:], 1):
        assert entry.parent < index and completed.entries[entry.parent].is_dir
        assert (entry.parent, entry.name) not in seen
        seen.add((entry.parent, entry.name))
        assert completed.child(entry.parent, entry.name) == index
    rest = [
        tuple((p.casefold(), p) for p in completed.path(i).split("/"))
        for i in range(count + 1, len(completed.entries))
    ]
    assert rest == sorted(rest)


def test_format_1_listings_are_still_read() -> None:
    listing = build_listing([member("audio.mp3"), member("sb/a.png")])
    members, entries = msgpack.unpackb(listing.to_bytes(), raw=False)[1:3]
    old = SetListing.from_bytes(msgpack.packb([1, members, entries], use_bin_type=True))
    assert old == listing and not old.provisional and old.pins == []


@settings(max_examples=200, deadline=None)
@given(
    pins=st.lists(st.tuples(st.sampled_from("aAbB"), st.integers(1, 3)), max_size=5),
    archive=st.lists(
        st.tuples(
            st.sampled_from(["a", "A", "b", "c", "a/x", "A.osu/y", "sb/z"]), st.integers(1, 3)
        ),
        max_size=8,
    ),
)
def test_completing_never_moves_a_pinned_entry(
    pins: list[tuple[str, int]], archive: list[tuple[str, int]]
) -> None:
    first = provisional_listing(
        [pinned(f"{n}.osu", size, size, number) for number, (n, size) in enumerate(pins, 1)],
        UPDATED,
    )
    members = [
        osu_member(name if "/" in name else f"{name}.osu", size, size) for name, size in archive
    ]
    check_completed(first, complete_listing(first, members))
