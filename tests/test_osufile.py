"""`.osu` parsing against the real corpus and the format's edge cases; writing v14 files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from osufs.osufile import (
    OsuMetadata,
    difficulty_filename,
    parse_osu,
    referenced_files,
    storyboard_filename,
    write_osu,
)
from tests.helpers import CORPUS

OSU_FILES = sorted((CORPUS / "osu").glob("*.osu"))


def _naive(data: bytes, key: str) -> str | None:
    """The value of the first `key:` line, found the simplest possible way."""
    text = data.decode("utf-8-sig", "replace")
    match = re.search(rf"^{key}[ \t]*:(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def test_corpus_is_present() -> None:
    assert len(OSU_FILES) == 163


@pytest.mark.parametrize("path", OSU_FILES, ids=lambda p: p.name)
def test_corpus_file_parses(path: Path) -> None:
    data = path.read_bytes()
    meta = parse_osu(data)
    for key, value in [
        ("Title", meta.title),
        ("Artist", meta.artist),
        ("Creator", meta.creator),
        ("Version", meta.version),
        ("TitleUnicode", meta.title_unicode),
        ("ArtistUnicode", meta.artist_unicode),
    ]:
        assert value == (_naive(data, key) or ""), key
    header = re.search(rb"osu file format v(\d+)", data[:200])
    assert meta.format_version == (int(header.group(1)) if header else 14)
    if (beatmap_id := _naive(data, "BeatmapID")) is not None:
        assert meta.beatmap_id == int(beatmap_id)
    if (audio := _naive(data, "AudioFilename")) is not None:
        assert meta.audio_filename == audio.replace("\\", "/")
    assert all(referenced_files(meta))


def test_corpus_references_found() -> None:
    by_name = {p.name: parse_osu(p.read_bytes()) for p in OSU_FILES}
    marathon = by_name["Game__Within Temptation - The Unforgiving (Armin) [Marathon].osu"]
    assert marathon.video == "Within Temptation-Shot In The _x264_001.avi"
    assert marathon.background == "Within-Temptation.png"
    catch = by_name["Catch__1041052.osu"]
    assert (catch.audio_filename, catch.background, catch.video) == (
        "audio.mp3",
        "cropped-1366-768-647733.jpg",
        "forty.avi",
    )
    assert catch.title_unicode == "七色シンフォニー -TV Size-"
    assert (catch.beatmap_id, catch.beatmapset_id) == (1041052, 488149)
    versions = {m.format_version for m in by_name.values()}
    assert {3, 14, 128} <= versions


def test_header_variants() -> None:
    body = b"\r\n[Metadata]\r\nTitle:T\r\n"
    assert parse_osu(b"\xef\xbb\xbfosu file format v7" + body).format_version == 7
    assert parse_osu(b"\n\n\nosu file format v128" + body).format_version == 128
    assert parse_osu(b"ow computerosu file format v9" + body).format_version == 9
    missing = parse_osu(b"[Metadata]\nTitle: No header\n")
    assert (missing.format_version, missing.title) == (14, "No header")


def test_key_value_spacing_and_comments() -> None:
    meta = parse_osu(
        b"osu file format v14\r\n\r\n[General]\r\nAudioFilename:   song.mp3  // trailing\r\n"
        b"Mode: 3\r\n\r\n[Metadata]\r\nTitle: http://example.com//x\r\n"
        b"// a whole-line comment\r\nArtist:A: B\r\nTags:a//b c\r\nBeatmapID: 12\r\n"
        b"BeatmapSetID:-1\r\n"
    )
    assert meta.audio_filename == "song.mp3"
    assert meta.mode == 3
    assert meta.title == "http://example.com//x"
    assert meta.artist == "A: B"
    assert meta.tags == "a//b c"
    assert (meta.beatmap_id, meta.beatmapset_id) == (12, -1)


def test_events() -> None:
    meta = parse_osu(
        b"osu file format v14\n[Events]\n//Background and Video events\n"
        b'Video,-200,"movies\\intro.MP4"\n0,0,bg\\back.jpg,0,0\n'
        b'Sprite,Background,Centre,"sb/a.png",320,240\n F,0,0,1000,0,1\n2,100,200\n'
    )
    assert meta.background == "bg/back.jpg"
    assert meta.video == "movies/intro.MP4"
    assert meta.video_offset == -200
    assert referenced_files(meta) == ["bg/back.jpg", "movies/intro.MP4"]
    typed = parse_osu(b'[Events]\n1,0,"clip.avi"\n')
    assert (typed.video, typed.background) == ("clip.avi", None)
    # Very old maps used type 1 for a background image.
    old = parse_osu(b'[Events]\n1,0,"picture.png"\n')
    assert (old.video, old.background) == (None, "picture.png")
    named = parse_osu(b'[Events]\nBackground,0,"named.jpg"\n')
    assert named.background == "named.jpg"


def test_garbage_never_raises() -> None:
    for data in [b"", b"\x00\xff\xfe", b"[Metadata", b"[Difficulty]\nHPDrainRate:nan\n", b"::::"]:
        meta = parse_osu(data)
        assert meta.title == ""
        assert meta.hp_drain_rate == 5.0
    latin = parse_osu(b"[Metadata]\nTitle:Caf\xe9\n")
    assert latin.title == "Caf\ufffd"


def test_difficulty_defaults() -> None:
    meta = parse_osu(b"[Difficulty]\nOverallDifficulty:7\nCircleSize:4.2\n")
    assert meta.approach_rate == 7  # absent AR follows OD, as in the game
    assert meta.circle_size == 4.2
    assert (meta.slider_multiplier, meta.slider_tick_rate) == (1.4, 1.0)


def test_referenced_files_deduplicates() -> None:
    meta = parse_osu(b'[General]\nAudioFilename: a.jpg\n[Events]\n0,0,"a.jpg"\n')
    assert referenced_files(meta) == ["a.jpg"]
    assert referenced_files(parse_osu(b"")) == []


def test_file_names_are_cleaned() -> None:
    assert difficulty_filename("AC/DC", 'What?"', "me:you", "Hard*") == (
        "ACDC - What (meyou) [Hard].osu"
    )
    assert storyboard_filename("A", "B", "C") == "A - B (C).osb"
    assert difficulty_filename("美", "歌", "x", "y") == "美 - 歌 (x) [y].osu"


def test_write_round_trip() -> None:
    meta = OsuMetadata(
        format_version=14,
        title="Mihon no Uta",
        title_unicode="見本の歌",
        artist="Someone",
        artist_unicode="誰か",
        creator="peppy",
        version="Insane",
        source="osufs",
        tags="a b c",
        beatmap_id=77,
        beatmapset_id=7,
        audio_filename="見本.ogg",
        background="bg.jpg",
        video="video.mp4",
        mode=0,
        preview_time=1234,
        hp_drain_rate=6.5,
        circle_size=4.0,
        overall_difficulty=8.0,
        approach_rate=9.2,
        slider_multiplier=1.8,
        slider_tick_rate=2.0,
        video_offset=-50,
    )
    data = write_osu(
        meta,
        timing_points=["0,500,4,2,0,60,1,0"],
        hit_objects=["256,192,1000,1,0,0:0:0:0:"],
        events=["2,2000,4000"],
        bookmarks=[1000, 2000],
        colours=[(1, 2, 3)],
    )
    text = data.decode("utf-8")
    assert text.startswith("osu file format v14\r\n")
    for section in ["General", "Editor", "Metadata", "Difficulty", "Events", "TimingPoints"]:
        assert f"\r\n[{section}]\r\n" in text
    assert text.index("[TimingPoints]") < text.index("[HitObjects]")
    assert parse_osu(data) == meta
