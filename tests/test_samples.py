"""The synthetic sample library: deterministic, valid archives with the features tests rely on."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from osufs import archive
from osufs.listing import SetListing, build_listing
from osufs.osufile import parse_osu, referenced_files
from osufs.samples import SHARED_HITSOUND, build_sample_library
from tests.helpers import CORPUS

LIMITS = archive.Limits()


def read_set(path: Path) -> tuple[SetListing, dict[str, bytes]]:
    """The set's listing (as the filesystem builds it) and each listed file's bytes."""
    with open(path, "rb") as file:
        members = archive.read_members(file, LIMITS)
        contents: dict[int, bytes] = {}
        for i, member in enumerate(members):
            if member.is_dir:
                continue
            file.seek(member.header_offset)
            file.seek(archive.data_offset(member, file.read(archive.LOCAL_HEADER_SIZE)))
            out = bytearray()
            archive.extract(file.read, member, out.extend, LIMITS)
            contents[i] = bytes(out)
    references = [
        ref
        for i, data in contents.items()
        if members[i].raw_name.endswith(b".osu")
        for ref in referenced_files(parse_osu(data))
    ]
    listing = build_listing(members, references)
    files = {
        listing.path(i): contents[e.member] for i, e in enumerate(listing.entries) if not e.is_dir
    }
    return listing, files


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    folder = tmp_path_factory.mktemp("samples")
    ids = build_sample_library(folder, 8, audio_size=30_000, with_video=True)
    return folder, ids


def test_ids_and_files(library: tuple[Path, list[int]]) -> None:
    folder, ids = library
    assert ids == list(range(100001, 100009))
    assert sorted(p.name for p in folder.iterdir()) == [f"{i}.osz" for i in ids]


def test_deterministic(tmp_path: Path, library: tuple[Path, list[int]]) -> None:
    folder, ids = library
    again = build_sample_library(tmp_path / "again", 8, audio_size=30_000, with_video=True)
    assert again == ids
    for set_id in ids:
        name = f"{set_id}.osz"
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes()
    build_sample_library(tmp_path / "other", 2, seed=1, audio_size=30_000)
    assert (tmp_path / "other" / "100001.osz").read_bytes() != (folder / "100001.osz").read_bytes()


def test_archives_are_valid_zips(library: tuple[Path, list[int]]) -> None:
    folder, ids = library
    methods = set()
    for set_id in ids:
        with zipfile.ZipFile(folder / f"{set_id}.osz") as zf:
            assert zf.testzip() is None
            infos = zf.infolist()
            methods |= {info.compress_type for info in infos}
            # Fixed member times: nothing depends on when the library was built.
            assert all(info.date_time[0] == 2020 for info in infos)
    assert methods == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}


def test_set_contents(library: tuple[Path, list[int]]) -> None:
    folder, ids = library
    beatmap_ids: list[int] = []
    for set_id in ids:
        listing, files = read_set(folder / f"{set_id}.osz")
        difficulties = {p: parse_osu(d) for p, d in files.items() if p.endswith(".osu")}
        assert 2 <= len(difficulties) <= 5
        for path, meta in difficulties.items():
            assert "/" not in path
            assert meta.format_version == 14
            assert meta.beatmapset_id == set_id
            assert meta.beatmap_id is not None
            assert meta.title and meta.artist and meta.creator and meta.version
            beatmap_ids.append(meta.beatmap_id)
            for ref in referenced_files(meta):
                assert ref in files, (set_id, ref)
        top = [listing.entries[i] for i in listing.children(0)]
        assert any(e.name.endswith(".osb") and not e.is_dir for e in top)
        sb = listing.child(0, "sb")
        assert sb is not None and listing.entries[sb].is_dir
        pngs = [listing.entries[i].name for i in listing.children(sb)]
        assert len(pngs) >= 2 and all(name.endswith(".png") for name in pngs)
        assert all(files[f"sb/{name}"].startswith(b"\x89PNG\r\n\x1a\n") for name in pngs)
    assert len(beatmap_ids) == len(set(beatmap_ids))


def test_japanese_set(library: tuple[Path, list[int]]) -> None:
    folder, ids = library
    path = folder / f"{ids[2]}.osz"
    files = read_set(path)[1]
    assert "見本.ogg" in files and files["見本.ogg"].startswith(b"OggS")
    assert "背景.jpg" in files
    meta = parse_osu(next(d for p, d in files.items() if p.endswith(".osu")))
    assert meta.artist_unicode == "YOASOBI" and meta.title_unicode == "見本の歌"
    assert meta.audio_filename == "見本.ogg"
    # Written as osu! stable does: Shift-JIS bytes, no UTF-8 flag.
    with open(path, "rb") as file:
        raw = {m.raw_name: m.utf8 for m in archive.read_members(file, LIMITS)}
    assert raw["見本.ogg".encode("cp932")] is False


def test_shared_hitsound(library: tuple[Path, list[int]]) -> None:
    folder, ids = library
    first = read_set(folder / f"{ids[0]}.osz")[1]
    second = read_set(folder / f"{ids[1]}.osz")[1]
    assert first[SHARED_HITSOUND] == second[SHARED_HITSOUND]
    assert first[SHARED_HITSOUND].startswith(b"RIFF")
    assert first["audio.mp3"] != second["audio.mp3"]
    assert SHARED_HITSOUND not in read_set(folder / f"{ids[3]}.osz")[1]


def test_video_and_audio_size(library: tuple[Path, list[int]]) -> None:
    folder, ids = library
    with_video = []
    for set_id in ids:
        files = read_set(folder / f"{set_id}.osz")[1]
        metas = [parse_osu(d) for p, d in files.items() if p.endswith(".osu")]
        if "video.mp4" in files:
            with_video.append(set_id)
            assert all(m.video == "video.mp4" for m in metas)
        else:
            assert all(m.video is None for m in metas)
        audio = metas[0].audio_filename
        assert len(files[audio]) == 30_000
    assert with_video == [ids[0], ids[3], ids[6]]


def test_no_video_by_default(tmp_path: Path) -> None:
    build_sample_library(tmp_path, 4, audio_size=1000)
    for path in tmp_path.glob("*.osz"):
        assert "video.mp4" not in read_set(path)[1]


def test_osu_corpus(tmp_path: Path) -> None:
    corpus = CORPUS / "osu"
    originals = [p.read_bytes() for p in corpus.glob("*.osu")]
    ids = build_sample_library(tmp_path, 5, audio_size=1000, osu_corpus=corpus)
    seen_ids = set()
    for set_id in ids:
        files = read_set(tmp_path / f"{set_id}.osz")[1]
        osu = {p: d for p, d in files.items() if p.endswith(".osu")}
        assert 2 <= len(osu) <= 5
        for data in osu.values():
            meta = parse_osu(data)
            assert meta.beatmapset_id == set_id
            assert meta.beatmap_id not in seen_ids
            seen_ids.add(meta.beatmap_id)
            # The hit objects are a real file's, untouched.
            objects = data[data.index(b"[HitObjects]") :]
            assert any(objects in original for original in originals)
            for ref in referenced_files(meta):
                assert ref in files
    again = build_sample_library(tmp_path / "again", 5, audio_size=1000, osu_corpus=corpus)
    assert again == ids
    assert all(
        (tmp_path / f"{i}.osz").read_bytes() == (tmp_path / "again" / f"{i}.osz").read_bytes()
        for i in ids
    )


def test_small_counts(tmp_path: Path) -> None:
    assert build_sample_library(tmp_path, 1, first_id=5, audio_size=100) == [5]
    files = read_set(tmp_path / "5.osz")[1]
    assert "見本.ogg" in files  # the only set carries the non-ASCII names
    assert build_sample_library(tmp_path / "none", 0) == []
