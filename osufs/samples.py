"""The synthetic demo library: deterministic `<id>.osz` files for demos, tests and benchmarks.

Archives are written by a small zip writer of our own rather than `zipfile`, because the tests
need control `zipfile` does not give: Shift-JIS member names without the UTF-8 flag (what
osu! stable produces), extended-timestamp extra fields, and byte-identical output for a seed.
"""

from __future__ import annotations

import os
import random
import re
import struct
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from osufs.osufile import (
    OsuMetadata,
    difficulty_filename,
    parse_osu,
    storyboard_filename,
    write_osu,
)

STORED = 0
DEFLATED = 8
_UTF8_FLAG = 0x800

_ARTISTS = [
    "Soleily", "xi", "Camellia", "Kano", "ARForest", "Yooh", "Frums", "DJ Noriken", "nekodex",
    "Lime", "t+pazolite", "Aitsuki Nakuru", "Silentroom", "Kobaryo", "Team Grimoire", "sakuzyo",
]  # fmt: skip
_TITLES = [
    "Renatus", "Blue Zenith", "Ghost", "Daydream", "Raise Your Fist", "Azure Sky", "Parallel",
    "Starlight", "Moonrise", "Crystal Garden", "Neon Rain", "Last Letter", "Afterglow", "Echoes",
]  # fmt: skip
_CREATORS = ["Deif", "Gamu", "ExPew", "MMzz", "peppy", "Sotarks", "Monstrata", "pishifat"]
_VERSIONS = ["Easy", "Normal", "Hard", "Insane", "Expert"]
# The set that carries non-ASCII metadata and a Shift-JIS member name.
_JAPANESE = ("Yoasobi", "YOASOBI", "Mihon no Uta", "見本の歌", "見本.ogg", "背景.jpg")
SHARED_HITSOUND = "soft-hitclap.wav"


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    data: bytes
    method: int = DEFLATED
    # None: ASCII or UTF-8 with the flag; otherwise the legacy code page to encode the name in.
    codepage: str | None = None
    mtime: int = 0


def _dos_time(unix: int) -> tuple[int, int]:
    # DOS times are local time by convention; osufs reads them as UTC, so write UTC.
    t = datetime.fromtimestamp(unix, UTC)
    time = (t.hour << 11) | (t.minute << 5) | (t.second // 2)
    date = ((t.year - 1980) << 9) | (t.month << 5) | t.day
    return time, date


def _write_zip(path: Path, members: list[_Member]) -> None:
    """Write `members` as a zip, atomically (temp file + rename): the server may be reading."""
    body = bytearray()
    central = bytearray()
    for m in members:
        if m.codepage is None:
            raw = m.name.encode("utf-8")
            flags = 0 if raw.isascii() else _UTF8_FLAG
        else:
            raw, flags = m.name.encode(m.codepage), 0
        is_dir = m.name.endswith("/")
        if m.method == DEFLATED and not is_dir:
            comp = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = comp.compress(m.data) + comp.flush()
        else:
            payload = m.data
        method = m.method if not is_dir else STORED
        crc = zlib.crc32(m.data)
        dtime, ddate = _dos_time(m.mtime)
        extra = struct.pack("<2sHBI", b"UT", 5, 1, m.mtime)
        offset = len(body)
        body += struct.pack(
            "<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, method, dtime, ddate,
            crc, len(payload), len(m.data), len(raw), len(extra),
        )  # fmt: skip
        body += raw + extra + payload
        external = ((0o40755 if is_dir else 0o100644) << 16) | (0x10 if is_dir else 0)
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", (3 << 8) | 20, 20, flags, method, dtime,
            ddate, crc, len(payload), len(m.data), len(raw), len(extra), 0, 0, 0, external,
            offset,
        )  # fmt: skip
        central += raw + extra
    end = struct.pack(
        "<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(body), 0
    )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(bytes(body + central + end))
    os.replace(tmp, path)


# Blobs: valid-looking headers and pseudo-random bodies, so sizes are realistic and content
# does not compress away, while every byte still follows from the seed.


def _mp3(rng: random.Random, size: int) -> bytes:
    head = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64"
    return head + rng.randbytes(max(0, size - len(head)))


def _ogg(rng: random.Random, size: int) -> bytes:
    head = b"OggS\x00\x02" + bytes(8) + rng.randbytes(4) + bytes(4) + b"\x01\x1e\x01vorbis"
    return head + rng.randbytes(max(0, size - len(head)))


def _wav(rng: random.Random, frames: int) -> bytes:
    data = rng.randbytes(frames * 2)
    fmt = struct.pack("<HHIIHH", 1, 1, 44100, 88200, 2, 16)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


def _jpg(rng: random.Random, size: int) -> bytes:
    head = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return head + rng.randbytes(max(0, size - len(head) - 2)) + b"\xff\xd9"


def _png(rng: random.Random, width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    raw = b"".join(b"\x00" + rng.randbytes(width * 4) for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def _mp4(rng: random.Random, size: int) -> bytes:
    head = struct.pack(">I", 24) + b"ftypmp42" + bytes(4) + b"mp42isom"
    return head + rng.randbytes(max(0, size - len(head)))


def _blob_for(name: str, rng: random.Random, audio_size: int) -> bytes:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext == "mp3":
        return _mp3(rng, audio_size)
    if ext == "ogg":
        return _ogg(rng, audio_size)
    if ext in {"jpg", "jpeg"}:
        return _jpg(rng, rng.randrange(20_000, 60_000))
    if ext == "png":
        return _png(rng, 16, 16)
    if ext == "wav":
        return _wav(rng, rng.randrange(500, 3000))
    return _mp4(rng, audio_size)


def _chart(rng: random.Random, level: int) -> tuple[list[str], list[str], list[int]]:
    """Timing points, hit objects and bookmarks for a short playable-looking chart."""
    beat = rng.choice([300.0, 333.333333333333, 375.0, 400.0, 461.538461538462])
    offset = rng.randrange(0, 400)
    timing = [f"{offset},{beat!r},4,2,0,60,1,0", f"{offset + int(beat * 32)},-100,4,2,0,70,0,1"]
    objects = []
    step = beat / (1 + level // 2)
    t = float(offset)
    for n in range(40 + 30 * level):
        x, y, time = rng.randrange(0, 512), rng.randrange(0, 384), int(t)
        if n % 7 == 6:
            ex, ey = rng.randrange(0, 512), rng.randrange(0, 384)
            objects.append(f"{x},{y},{time},2,0,B|{ex}:{ey},1,{rng.randrange(80, 200)}")
            t += step * 2
        else:
            objects.append(
                f"{x},{y},{time},{5 if n % 8 == 0 else 1},{rng.choice([0, 2, 8])},0:0:0:0:"
            )
            t += step
    objects.append(f"256,192,{int(t + beat)},12,0,{int(t + beat * 8)},0:0:0:0:")
    return timing, objects, [offset + int(beat * 16 * k) for k in range(1, 4)]


def _storyboard(sprites: list[str]) -> bytes:
    lines = ["[Events]", "//Background and Video events", "//Storyboard Layer 0 (Background)"]
    for k, sprite in enumerate(sprites):
        lines += [
            f'Sprite,Background,Centre,"{sprite}",320,240',
            f" F,0,{k * 1000},{k * 1000 + 900},0,1",
        ]
    lines += [
        "//Storyboard Layer 1 (Fail)",
        "//Storyboard Layer 2 (Pass)",
        "//Storyboard Sound Samples",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


# Corpus mode: real .osu files as difficulties, with only the [Metadata] ids rewritten.

_METADATA_HEADER = re.compile(rb"^\[Metadata\][ \t]*\r?$", re.MULTILINE)
_ID_LINE = re.compile(rb"^(BeatmapID|BeatmapSetID)[ \t]*:.*?(\r?)$", re.MULTILINE)
_VERSION_LINE = re.compile(rb"^Version[ \t]*:.*?(\r?)$", re.MULTILINE)


def _corpus_pool(corpus: Path) -> list[bytes]:
    complete = []
    for path in sorted(corpus.glob("*.osu")):
        data = path.read_bytes()
        # Only whole files: the corpus also holds fragments ("[HitObjects]" alone) for decoders.
        if b"osu file format v" in data[:64] and b"[HitObjects]" in data:
            complete.append(data)
    # Prefer real-sized charts (the median real difficulty is several KB) over tiny test maps.
    return [data for data in complete if len(data) >= 2048] or complete


def _retag(data: bytes, fallback: OsuMetadata, beatmap_id: int, set_id: int) -> bytes:
    """Set BeatmapID/BeatmapSetID, adding a [Metadata] section (from `fallback`) if none."""
    newline = b"\r\n" if b"\r\n" in data[:256] else b"\n"
    ids = {b"BeatmapID": b"%d" % beatmap_id, b"BeatmapSetID": b"%d" % set_id}
    if not _METADATA_HEADER.search(data):
        section = [
            b"[Metadata]",
            *(
                f"{k}:{v}".encode()
                for k, v in (
                    ("Title", fallback.title),
                    ("TitleUnicode", fallback.title_unicode),
                    ("Artist", fallback.artist),
                    ("ArtistUnicode", fallback.artist_unicode),
                    ("Creator", fallback.creator),
                    ("Version", fallback.version),
                    ("Source", ""),
                    ("Tags", fallback.tags),
                )
            ),
            *(k + b":" + v for k, v in ids.items()),
        ]
        block = newline.join(section) + newline + newline
        at = data.find(b"\n[")
        at = at + 1 if at >= 0 else len(data)
        return data[:at] + block + data[at:]
    seen: set[bytes] = set()

    def swap(match: re.Match[bytes]) -> bytes:
        seen.add(match.group(1))
        return match.group(1) + b":" + ids[match.group(1)] + match.group(2)

    data = _ID_LINE.sub(swap, data)
    missing = b"".join(k + b":" + v + newline for k, v in ids.items() if k not in seen)
    if missing:
        header = _METADATA_HEADER.search(data)
        assert header is not None
        end = data.find(b"\n", header.start()) + 1 or len(data)
        data = data[:end] + missing + data[end:]
    return data


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    candidate, n = name, 2
    while candidate.lower() in taken:
        candidate = f"{stem} ({n}).{ext}" if dot else f"{name} ({n})"
        n += 1
    taken.add(candidate.lower())
    return candidate


def _build_set(
    set_id: int,
    index: int,
    count: int,
    seed: int,
    audio_size: int,
    with_video: bool,
    pool: list[bytes],
) -> list[_Member]:
    rng = random.Random(f"osufs-samples:{seed}:{index}")
    japanese = index == (2 if count > 2 else count - 1)
    if japanese:
        artist, artist_u, title, title_u, audio, background = _JAPANESE
    else:
        artist = artist_u = _ARTISTS[(index + seed) % len(_ARTISTS)]
        title = title_u = f"{_TITLES[(index * 5 + seed) % len(_TITLES)]} {set_id}"
        audio, background = "audio.mp3", "bg.jpg"
    creator = rng.choice(_CREATORS)
    video = "video.mp4" if with_video and index % 3 == 0 else None
    base = 1_577_836_800 + index * 86_400 + (seed % 1000) * 3600  # 2020-01-01 UTC onwards
    tags = f"osufs sample {'japanese' if japanese else 'english'} set{set_id}"

    members: list[_Member] = []
    taken: set[str] = set()
    levels = rng.randrange(2, 6)
    extra_refs: list[str] = []
    for level in range(levels):
        meta = OsuMetadata(
            format_version=14, title=title, title_unicode=title_u, artist=artist,
            artist_unicode=artist_u, creator=creator, version=_VERSIONS[level], source="osufs",
            tags=tags, beatmap_id=set_id * 10 + level, beatmapset_id=set_id,
            audio_filename=audio, background=background, video=video, mode=0,
            preview_time=rng.randrange(10_000, 60_000), hp_drain_rate=2.0 + level,
            circle_size=3.0 + level * 0.5, overall_difficulty=3.0 + level * 1.5,
            approach_rate=4.0 + level * 1.5, slider_multiplier=1.4 + level * 0.2,
            slider_tick_rate=1.0,
        )  # fmt: skip
        if pool:
            real = pool[rng.randrange(len(pool))]
            data = _retag(real, meta, set_id * 10 + level, set_id)
            parsed = parse_osu(data)
            extra_refs += [r for r in (parsed.audio_filename, parsed.background) if r]
            name = difficulty_filename(
                parsed.artist, parsed.title, parsed.creator, parsed.version or _VERSIONS[level]
            )
            if name.lower() in taken and parsed.version:
                # The same real file drawn twice: osu! names every difficulty of a set apart,
                # so rename it as a mapper would, in its own metadata (its file name follows).
                version = f"{parsed.version} {level}"
                line = b"Version:" + version.encode().replace(b"\\", b"\\\\") + rb"\1"
                data = _VERSION_LINE.sub(line, data, 1)
                name = difficulty_filename(parsed.artist, parsed.title, parsed.creator, version)
        else:
            timing, objects, bookmarks = _chart(rng, level)
            data = write_osu(
                meta, timing_points=timing, hit_objects=objects, bookmarks=bookmarks,
                events=[f"2,{bookmarks[0]},{bookmarks[0] + 4000}"],
                colours=[(255, 128, 64), (64, 192, 255)],
            )  # fmt: skip
            name = difficulty_filename(artist, title, creator, meta.version)
        members.append(_Member(_unique(name, taken), data, DEFLATED, None, base + 600 + level))

    # Audio is usually stored (already compressed); everything else deflated.
    members.append(
        _Member(audio, _blob_for(audio, rng, audio_size), STORED, "cp932" if japanese else None,
                base + 10)
    )  # fmt: skip
    taken.add(audio.lower())
    members.append(
        _Member(background, _blob_for(background, rng, audio_size), DEFLATED,
                "cp932" if japanese else None, base + 20)
    )  # fmt: skip
    taken.add(background.lower())
    for ref in extra_refs:
        if ref.lower() not in taken and ".." not in ref and not ref.startswith("/"):
            taken.add(ref.lower())
            members.append(_Member(ref, _blob_for(ref, rng, audio_size), STORED, None, base + 30))
    if video:
        members.append(_Member(video, _mp4(rng, audio_size), STORED, None, base + 40))

    sprites = [
        f"sb/{kind}.png" for kind in ("star", "glow", "flare", "ring")[: rng.randrange(2, 5)]
    ]
    if index % 2:
        # Some archives carry explicit directory entries, as many real ones do.
        members.append(_Member("sb/", b"", STORED, None, base + 50))
    members += [_Member(s, _png(rng, 16, 16), STORED, None, base + 50) for s in sprites]
    members.append(
        _Member(storyboard_filename(artist, title, creator), _storyboard(sprites), DEFLATED, None,
                base + 60)
    )  # fmt: skip
    if index < 2 and count >= 2:
        # The same bytes in two sets, for the content store's dedup; seeded by `seed` alone.
        shared = _wav(random.Random(f"osufs-samples:{seed}:hitsound"), 2000)
        members.append(_Member(SHARED_HITSOUND, shared, DEFLATED, None, base + 70))
    else:
        members.append(_Member("normal-hitnormal.wav", _wav(rng, 800), DEFLATED, None, base + 70))
    return members


def build_sample_library(
    folder: Path,
    count: int = 36,
    *,
    seed: int = 0,
    first_id: int = 100001,
    audio_size: int = 200_000,
    with_video: bool = False,
    osu_corpus: Path | None = None,
) -> list[int]:
    """Write `count` sets as `<id>.osz` into `folder`; return their ids. Same seed, same bytes.

    Set 0 and set 1 share an identical `soft-hitclap.wav`; set 2 (or the last, when fewer) has
    Japanese metadata and Shift-JIS member names (`見本.ogg`); with `with_video` every third
    set from set 0 has `video.mp4`. With `osu_corpus`, difficulties are real `.osu` files from
    that folder with their [Metadata] ids rewritten.
    """
    folder.mkdir(parents=True, exist_ok=True)
    pool = _corpus_pool(osu_corpus) if osu_corpus is not None else []
    if osu_corpus is not None and not pool:
        raise ValueError(f"no complete .osu files in {osu_corpus}")
    ids = []
    for index in range(count):
        set_id = first_id + index
        members = _build_set(set_id, index, count, seed, audio_size, with_video, pool)
        _write_zip(folder / f"{set_id}.osz", members)
        ids.append(set_id)
    return ids


__all__ = ["SHARED_HITSOUND", "build_sample_library"]
