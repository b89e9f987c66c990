#!/usr/bin/env python3
"""Walk a Songs folder the way osu! stable scans it, and say what it cost.

Lists every set folder, stats everything in it and reads every top-level .osu in full (osu!
hashes them for osu!.db). With media (the default; whether stable does this during its first
scan or only at song select is unconfirmed), it also opens the AudioFilename each .osu names and
reads 64 KiB at its PreviewTime (song select's preview: the byte offset at 128 kbit/s, as a
decoder seeks by bitrate, 40% in when there is none, clamped to the file), and reads the
background image in full (thumbnails). Prints sets, files, bytes read, bytes the mirror sent
(with --stats-url, an `osufs serve` /_stats endpoint) and time, split between listing (every
readdir and stat), .osu reads and the rest (audio and images).

    scripts/songs_scan.py MOUNTPOINT [--stats-url http://127.0.0.1:8727] [--no-media] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREVIEW_READ = 64 << 10
PREVIEW_BYTES_PER_MS = 16  # 128 kbit/s


@dataclass
class ScanReport:
    sets: int = 0
    files: int = 0
    osu_files: int = 0
    missing_references: int = 0
    bytes_read: int = 0
    bytes_sent: int | None = None
    seconds: float = 0.0
    listing_seconds: float = 0.0  # readdir and stat of every set folder and file
    osu_seconds: float = 0.0  # reading (and hashing) the .osu files
    media_seconds: float = 0.0  # the audio preview and the background
    errors: list[str] = field(default_factory=list)


def referenced(osu_text: str) -> tuple[str | None, int, str | None]:
    """(AudioFilename, PreviewTime in ms or -1, background) named by a .osu, as osu! reads
    them."""
    audio = background = None
    preview = -1
    section = ""
    for raw in osu_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[General]" and line.lower().startswith("audiofilename"):
            audio = line.split(":", 1)[1].strip()
        elif section == "[General]" and line.lower().startswith("previewtime"):
            value = line.split(":", 1)[1].strip()
            preview = int(value) if value.lstrip("-").isdigit() else -1
        elif section == "[Events]" and line.startswith(("0,0,", "0, 0,")):
            background = line.split(",")[2].strip().strip('"')
    return audio, preview, background


def read(path: Path, preview: int | None, report: ScanReport) -> None:
    """Read a file a .osu names: whole, or 64 KiB at the preview time (ms) of an audio file.
    One the set does not have is the set's own flaw, not an error."""
    try:
        with open(path, "rb") as file:
            if preview is None:
                report.bytes_read += len(file.read())
                return
            size = os.fstat(file.fileno()).st_size
            at = preview * PREVIEW_BYTES_PER_MS if preview >= 0 else size * 2 // 5
            file.seek(max(0, min(at, size - PREVIEW_READ)))
            report.bytes_read += len(file.read(PREVIEW_READ))
    except FileNotFoundError:
        report.missing_references += 1
    except OSError as error:
        report.errors.append(f"{path}: {error.strerror}")


def scan_set(folder: Path, report: ScanReport, media: bool) -> None:
    report.sets += 1
    began = time.monotonic()
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            try:
                os.stat(Path(dirpath) / name)
                report.files += 1
            except OSError as error:
                report.errors.append(f"{dirpath}/{name}: {error.strerror}")
    entries = sorted(os.listdir(folder))
    report.listing_seconds += time.monotonic() - began
    for entry in entries:
        if not entry.lower().endswith(".osu"):
            continue
        began = time.monotonic()
        try:
            data = (folder / entry).read_bytes()
        except OSError as error:
            report.errors.append(f"{folder / entry}: {error.strerror}")
            continue
        finally:
            report.osu_seconds += time.monotonic() - began
        report.osu_files += 1
        report.bytes_read += len(data)
        hashlib.md5(data).hexdigest()  # what osu! stores in osu!.db
        audio, preview, background = referenced(data.decode("utf-8", "replace"))
        if not media:
            continue
        began = time.monotonic()
        if audio:
            read(folder / audio.replace("\\", "/"), preview, report)
        if background:
            read(folder / background.replace("\\", "/"), None, report)
        report.media_seconds += time.monotonic() - began


def bytes_sent(stats_url: str | None) -> int | None:
    if stats_url is None:
        return None
    with urllib.request.urlopen(f"{stats_url.rstrip('/')}/_stats", timeout=10) as answer:
        return int(json.load(answer)["bytes_sent"])


def scan(songs: Path, stats_url: str | None = None, *, media: bool = True) -> ScanReport:
    report = ScanReport()
    sent_before = bytes_sent(stats_url)
    started = time.monotonic()
    names = sorted(os.listdir(songs))
    report.listing_seconds += time.monotonic() - started
    for name in names:
        folder = songs / name
        began = time.monotonic()
        is_set = folder.is_dir() and not folder.is_symlink()
        report.listing_seconds += time.monotonic() - began
        if is_set:
            scan_set(folder, report, media)
    report.seconds = time.monotonic() - started
    sent_after = bytes_sent(stats_url)
    if sent_before is not None and sent_after is not None:
        report.bytes_sent = sent_after - sent_before
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("songs", type=Path, help="the Songs folder (an osufs mount)")
    parser.add_argument("--stats-url", help="an osufs serve URL whose /_stats counts bytes sent")
    parser.add_argument("--no-media", action="store_true", help="stat and .osu reads only")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = scan(args.songs, args.stats_url, media=not args.no_media)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        sent = "" if report.bytes_sent is None else f", {report.bytes_sent:,} bytes sent"
        print(
            f"{report.sets} sets, {report.files} files, {report.osu_files} .osu, "
            f"{report.missing_references} references to files the sets lack, "
            f"{report.bytes_read:,} bytes read{sent}, {report.seconds:.2f} s (listing "
            f"{report.listing_seconds:.2f}, .osu {report.osu_seconds:.2f}, media "
            f"{report.media_seconds:.2f}), {len(report.errors)} errors"
        )
        for error in report.errors[:20]:
            print(f"  {error}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
