#!/usr/bin/env python3
"""Walk a Songs folder the way osu! stable scans it, and say what it cost.

Lists every set folder, stats everything in it, reads every top-level .osu in full (osu! hashes
them for osu!.db), opens the AudioFilename each one names and reads its head (the decoder probes
it), and reads the background image in full (thumbnails). Prints sets, files, bytes read, bytes
the mirror sent (with --stats-url, an `osufs serve` /_stats endpoint) and time.

    scripts/songs_scan.py MOUNTPOINT [--stats-url http://127.0.0.1:8727] [--json]
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

AUDIO_HEAD = 64 << 10


@dataclass
class ScanReport:
    sets: int = 0
    files: int = 0
    osu_files: int = 0
    missing_references: int = 0
    bytes_read: int = 0
    bytes_sent: int | None = None
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def referenced(osu_text: str) -> tuple[str | None, str | None]:
    """(AudioFilename, background) named by a .osu, as osu! reads them."""
    audio = background = None
    section = ""
    for raw in osu_text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line
        elif section == "[General]" and line.lower().startswith("audiofilename"):
            audio = line.split(":", 1)[1].strip()
        elif section == "[Events]" and line.startswith(("0,0,", "0, 0,")):
            background = line.split(",")[2].strip().strip('"')
    return audio, background


def read(path: Path, limit: int | None, report: ScanReport) -> None:
    """Read a file a .osu names; one the set does not have is the set's own flaw, not an error."""
    try:
        with open(path, "rb") as file:
            report.bytes_read += len(file.read() if limit is None else file.read(limit))
    except FileNotFoundError:
        report.missing_references += 1
    except OSError as error:
        report.errors.append(f"{path}: {error.strerror}")


def scan_set(folder: Path, report: ScanReport) -> None:
    report.sets += 1
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            try:
                os.stat(Path(dirpath) / name)
                report.files += 1
            except OSError as error:
                report.errors.append(f"{dirpath}/{name}: {error.strerror}")
    for entry in sorted(os.listdir(folder)):
        if not entry.lower().endswith(".osu"):
            continue
        try:
            data = (folder / entry).read_bytes()
        except OSError as error:
            report.errors.append(f"{folder / entry}: {error.strerror}")
            continue
        report.osu_files += 1
        report.bytes_read += len(data)
        hashlib.md5(data).hexdigest()  # what osu! stores in osu!.db
        audio, background = referenced(data.decode("utf-8", "replace"))
        if audio:
            read(folder / audio.replace("\\", "/"), AUDIO_HEAD, report)
        if background:
            read(folder / background.replace("\\", "/"), None, report)


def bytes_sent(stats_url: str | None) -> int | None:
    if stats_url is None:
        return None
    with urllib.request.urlopen(f"{stats_url.rstrip('/')}/_stats", timeout=10) as answer:
        return int(json.load(answer)["bytes_sent"])


def scan(songs: Path, stats_url: str | None = None) -> ScanReport:
    report = ScanReport()
    sent_before = bytes_sent(stats_url)
    started = time.monotonic()
    for name in sorted(os.listdir(songs)):
        folder = songs / name
        if folder.is_dir() and not folder.is_symlink():
            scan_set(folder, report)
    report.seconds = time.monotonic() - started
    sent_after = bytes_sent(stats_url)
    if sent_before is not None and sent_after is not None:
        report.bytes_sent = sent_after - sent_before
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("songs", type=Path, help="the Songs folder (an osufs mount)")
    parser.add_argument("--stats-url", help="an osufs serve URL whose /_stats counts bytes sent")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = scan(args.songs, args.stats_url)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        sent = "" if report.bytes_sent is None else f", {report.bytes_sent:,} bytes sent"
        print(
            f"{report.sets} sets, {report.files} files, {report.osu_files} .osu, "
            f"{report.missing_references} references to files the sets lack, "
            f"{report.bytes_read:,} bytes read{sent}, {report.seconds:.2f} s, "
            f"{len(report.errors)} errors"
        )
        for error in report.errors[:20]:
            print(f"  {error}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
