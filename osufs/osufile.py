"""`.osu` text: metadata, referenced files; writing v14 files for the sample library.

Parsing follows osu!lazer's `LegacyBeatmapDecoder` where the formats are ambiguous, because
lazer's behaviour is documented in code and stable's is not: whole-line `//` comments are
skipped everywhere, trailing `//` comments are stripped outside `[Metadata]`, keys and values
are split at the first colon and trimmed, and paths have backslashes turned into slashes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from osufs.names import clean_filename

LATEST_VERSION = 14
"""Assumed when the `osu file format vN` header is missing, as lazer does."""

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".avi", ".flv", ".mpg", ".wmv", ".m4v"})

_HEADER = re.compile(r"osu file format v(\d+)")


@dataclass(frozen=True, slots=True)
class OsuMetadata:
    """What one `.osu` file says about itself; strings are "" and ids None when absent."""

    format_version: int
    title: str
    title_unicode: str
    artist: str
    artist_unicode: str
    creator: str
    version: str
    source: str
    tags: str
    beatmap_id: int | None
    beatmapset_id: int | None
    audio_filename: str
    background: str | None
    video: str | None
    # Extensions beyond the brief's fields: the Hexide `d_*` numbers and a few [General] values.
    mode: int = 0
    preview_time: int = -1
    hp_drain_rate: float = 5.0
    circle_size: float = 5.0
    overall_difficulty: float = 5.0
    approach_rate: float = 5.0
    slider_multiplier: float = 1.4
    slider_tick_rate: float = 1.0
    video_offset: int = 0


def _decode(data: bytes) -> str:
    # utf-8-sig drops the BOM; undecodable bytes (old cp1252 files) become U+FFFD rather than
    # failing the whole file, matching .NET's StreamReader that lazer and stable use.
    return data.decode("utf-8-sig", errors="replace")


def _path(value: str) -> str:
    return value.strip().strip('"').replace("\\", "/")


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value.strip())
    except ValueError:
        try:
            # Some old files write ids or times as floats.
            return int(float(value.strip()))
        except (ValueError, OverflowError):
            return None


def _float(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value.strip())
    except ValueError:
        return default
    return number if number == number and abs(number) != float("inf") else default


# The sections parse_osu reads ("" is what comes before the first header).
_READ_SECTIONS = frozenset({"", "general", "metadata", "difficulty", "events"})


def _sections(text: str) -> tuple[int, dict[str, dict[str, str]], list[str]]:
    """Split into (format version, key/values per section, raw [Events] lines)."""
    version = LATEST_VERSION
    sections: dict[str, dict[str, str]] = {}
    events: list[str] = []
    section = ""
    seen_content = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if not seen_content:
            if not line.strip():
                continue
            seen_content = True
            # lazer accepts headers with garbage before them ("ow computerosu file format v14").
            match = _HEADER.search(line)
            if match:
                version = int(match.group(1))
                continue
        if section not in _READ_SECTIONS and not line.startswith("["):
            continue  # timing points, colours, hit objects: most of a file, and never read
        stripped = line.lstrip()
        if not stripped or stripped.startswith("//"):
            continue
        if section != "metadata":
            cut = line.find("//")
            if cut > 0:
                line = line[:cut].rstrip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        if section == "events":
            # Storyboard commands start with a space or underscore; they name no top-level file.
            if not line.startswith((" ", "_")):
                events.append(line)
            continue
        key, sep, value = line.partition(":")
        if sep:
            sections.setdefault(section, {})[key.strip().lower()] = value.strip()
    return version, sections, events


def _events(events: Iterable[str]) -> tuple[str | None, str | None, int]:
    background: str | None = None
    video: str | None = None
    video_offset = 0
    for line in events:
        fields = line.split(",")
        if len(fields) < 3:
            continue
        kind = fields[0].strip().lower()
        filename = _path(fields[2])
        if not filename:
            continue
        if kind in {"0", "background"}:
            background = filename  # later backgrounds win, as in lazer
        elif kind in {"1", "video"}:
            ext = filename[filename.rfind(".") :].lower() if "." in filename else ""
            if ext in VIDEO_EXTENSIONS:
                video = filename
                video_offset = _int(fields[1]) or 0
            elif background is None:
                # Very old maps used type 1 for their background image.
                background = filename
    return background, video, video_offset


def parse_osu(data: bytes) -> OsuMetadata:
    """Read the metadata and referenced files of one `.osu` file; never raises on bad input."""
    version, sections, events = _sections(_decode(data))
    general = sections.get("general", {})
    meta = sections.get("metadata", {})
    diff = sections.get("difficulty", {})
    background, video, video_offset = _events(events)
    overall = _float(diff.get("overalldifficulty"), 5.0)
    return OsuMetadata(
        format_version=version,
        title=meta.get("title", ""),
        title_unicode=meta.get("titleunicode", ""),
        artist=meta.get("artist", ""),
        artist_unicode=meta.get("artistunicode", ""),
        creator=meta.get("creator", ""),
        version=meta.get("version", ""),
        source=meta.get("source", ""),
        tags=meta.get("tags", ""),
        beatmap_id=_int(meta.get("beatmapid")),
        beatmapset_id=_int(meta.get("beatmapsetid")),
        audio_filename=_path(general.get("audiofilename", "")),
        background=background,
        video=video,
        mode=_int(general.get("mode")) or 0,
        preview_time=_int(general.get("previewtime")) or -1,
        hp_drain_rate=_float(diff.get("hpdrainrate"), 5.0),
        circle_size=_float(diff.get("circlesize"), 5.0),
        overall_difficulty=overall,
        # Old files have no ApproachRate; the game then uses OverallDifficulty.
        approach_rate=_float(diff.get("approachrate"), overall),
        slider_multiplier=_float(diff.get("slidermultiplier"), 1.4),
        slider_tick_rate=_float(diff.get("slidertickrate"), 1.0),
        video_offset=video_offset,
    )


def referenced_files(meta: OsuMetadata) -> list[str]:
    """Audio, background and video paths the difficulty names, without duplicates or blanks."""
    found: list[str] = []
    for path in (meta.audio_filename, meta.background, meta.video):
        if path and path not in found:
            found.append(path)
    return found


def difficulty_filename(artist: str, title: str, creator: str, version: str) -> str:
    """The name osu! gives a difficulty file: `Artist - Title (Creator) [Version].osu`."""
    return clean_filename(f"{artist} - {title} ({creator}) [{version}].osu")


def storyboard_filename(artist: str, title: str, creator: str) -> str:
    """The name of a set's shared storyboard: `Artist - Title (Creator).osb`."""
    return clean_filename(f"{artist} - {title} ({creator}).osb")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_osu(
    meta: OsuMetadata,
    *,
    timing_points: Sequence[str],
    hit_objects: Sequence[str],
    events: Sequence[str] = (),
    bookmarks: Sequence[int] = (),
    colours: Sequence[tuple[int, int, int]] = (),
) -> bytes:
    """A complete v14 file (CRLF, as stable writes) from `meta` and preformatted lines.

    `meta.format_version` is ignored: the output is always v14. `events` are extra [Events]
    lines (breaks, storyboard) written after the background and video.
    """
    ids = [
        f"BeatmapID:{meta.beatmap_id if meta.beatmap_id is not None else 0}",
        f"BeatmapSetID:{meta.beatmapset_id if meta.beatmapset_id is not None else -1}",
    ]
    lines = [
        f"osu file format v{LATEST_VERSION}",
        "",
        "[General]",
        f"AudioFilename: {meta.audio_filename}",
        "AudioLeadIn: 0",
        f"PreviewTime: {meta.preview_time}",
        "Countdown: 0",
        "SampleSet: Soft",
        "StackLeniency: 0.7",
        f"Mode: {meta.mode}",
        "LetterboxInBreaks: 0",
        "WidescreenStoryboard: 1",
        "",
        "[Editor]",
        *([f"Bookmarks: {','.join(str(b) for b in bookmarks)}"] if bookmarks else []),
        "DistanceSpacing: 1",
        "BeatDivisor: 4",
        "GridSize: 32",
        "TimelineZoom: 1",
        "",
        "[Metadata]",
        f"Title:{meta.title}",
        f"TitleUnicode:{meta.title_unicode or meta.title}",
        f"Artist:{meta.artist}",
        f"ArtistUnicode:{meta.artist_unicode or meta.artist}",
        f"Creator:{meta.creator}",
        f"Version:{meta.version}",
        f"Source:{meta.source}",
        f"Tags:{meta.tags}",
        *ids,
        "",
        "[Difficulty]",
        f"HPDrainRate:{_number(meta.hp_drain_rate)}",
        f"CircleSize:{_number(meta.circle_size)}",
        f"OverallDifficulty:{_number(meta.overall_difficulty)}",
        f"ApproachRate:{_number(meta.approach_rate)}",
        f"SliderMultiplier:{_number(meta.slider_multiplier)}",
        f"SliderTickRate:{_number(meta.slider_tick_rate)}",
        "",
        "[Events]",
        "//Background and Video events",
    ]
    if meta.background:
        lines.append(f'0,0,"{meta.background}",0,0')
    if meta.video:
        lines.append(f'Video,{meta.video_offset},"{meta.video}"')
    lines += ["//Break Periods", *events, "", "[TimingPoints]", *timing_points, ""]
    if colours:
        lines.append("[Colours]")
        lines += [f"Combo{i} : {r},{g},{b}" for i, (r, g, b) in enumerate(colours, 1)]
        lines.append("")
    lines += ["[HitObjects]", *hit_objects, ""]
    return "\r\n".join(lines).encode("utf-8")
