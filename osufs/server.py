"""`osufs serve`: a folder of `<id>.osz` over the Hexide API.

A test and benchmark stand-in for a real mirror. Sets are indexed lazily, one at a time, with
the same reader (`osufs.archive`) and tree (`osufs.listing`) the filesystem uses, so names and
layout agree with what a mount shows. Archive bodies are streamed from disk, never held whole.

Beyond the Hexide API: `GET /_stats` (request, download and byte counters, and the most
requests answered at once), a `path` field in each version record (its path in the set's
listing), and the options `latency`, `bandwidth`, `link`, `ranges` and `cut_after` for shaping
the service in benchmarks and tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import anyio
import anyio.to_thread
import hypercorn.trio
import trio
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from osufs import archive
from osufs.archive import ArchiveError, Limits, MemberError, ZipMember
from osufs.listing import SetListing, build_listing
from osufs.names import MAX_SET_ID, set_folder_name
from osufs.osufile import VIDEO_EXTENSIONS, OsuMetadata, parse_osu, referenced_files

__all__ = [
    "RangeNotSatisfiable",
    "ServerStats",
    "create_app",
    "parse_range",
    "serve",
    "serve_app",
    "survey",
]

log = logging.getLogger(__name__)

CHUNK = 256 << 10
# A difficulty's record id (Hexide's `id`, a database id) is set_id * RECORD_STRIDE + its index
# in the set: unique across the folder even where real BeatmapIDs repeat between archives, as
# they do in osu!'s own test archives. The real BeatmapID is `m_beatmap`.
RECORD_STRIDE = 1000
OSU_LIMIT = 4 << 20  # bytes; larger ".osu" members are not read as difficulties
ARCHIVE_TYPE = "application/x-osu-beatmap-archive"
_OSZ_NAME = re.compile(r"([0-9]+)\.osz")
_MD5 = re.compile(r"[0-9A-Fa-f]{32}")
_SHA1 = re.compile(r"[0-9A-Fa-f]{40}")
_VIDEO_SUFFIXES = tuple(sorted(VIDEO_EXTENSIONS))
_RAW_VIDEO_SUFFIXES = tuple(ext.encode() for ext in _VIDEO_SUFFIXES)


# Counters


@dataclass(slots=True)
class ServerStats:
    """Per-app counters; `/_stats` itself is not counted, so polling does not disturb them."""

    requests: int = 0
    downloads: Counter[int] = field(default_factory=Counter)
    bytes_sent: int = 0  # response body bytes of every counted request
    in_flight: int = 0  # requests being answered now
    peak_in_flight: int = 0  # the most answered at once: over 1 means requests overlapped
    cut_short: int = 0  # archive bodies ended early on purpose (`cut_after`)

    def snapshot(self) -> dict[str, Any]:
        """The `/_stats` JSON: ids become strings, as JSON object keys must."""
        return {
            "requests": self.requests,
            "downloads": {str(k): v for k, v in sorted(self.downloads.items())},
            "bytes_sent": self.bytes_sent,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "cut_short": self.cut_short,
        }


class Link:
    """A downlink shared by every archive body: each chunk waits for its turn on the wire."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._free_at = 0.0

    def reserve(self, size: int) -> float:
        """When a chunk of `size` bytes sent now would have fully arrived."""
        start = max(anyio.current_time(), self._free_at)
        self._free_at = start + size / self.rate
        return self._free_at


class Shaping:
    """ASGI middleware: counts requests and body bytes and adds the configured latency; with
    a bandwidth, holds every response body to it (for apps whose bodies do not pace
    themselves, like the loopback emulation of the official site in the benchmarks)."""

    def __init__(
        self,
        app: ASGIApp,
        stats: ServerStats,
        latency: float,
        bandwidth: int | None = None,
        link: Link | None = None,
    ) -> None:
        self.app = app
        self.stats = stats
        self.latency = latency
        self.bandwidth = bandwidth
        self.link = link

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/_stats":
            await self.app(scope, receive, send)
            return
        self.stats.requests += 1
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        try:
            await self._counted(scope, receive, send)
        finally:
            self.stats.in_flight -= 1

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.latency > 0:
            await anyio.sleep(self.latency)
        began = anyio.current_time()
        sent = 0

        async def counting_send(message: Message) -> None:
            nonlocal sent
            if message["type"] != "http.response.body":
                await send(message)
                return
            body = message.get("body", b"")
            self.stats.bytes_sent += len(body)
            if not (self.bandwidth or self.link) or not body:
                await send(message)
                return
            # As _FileResponse does: about ten sends a second, each held until the capped
            # rates would have delivered it.
            step = CHUNK
            for rate in (self.bandwidth, self.link and self.link.rate):
                if rate:
                    step = max(1024, min(step, rate // 10))
            more = message.get("more_body", False)
            for start in range(0, len(body), step):
                piece = body[start : start + step]
                sent += len(piece)
                if self.bandwidth:
                    await anyio.sleep_until(began + sent / self.bandwidth)
                if self.link:
                    await anyio.sleep_until(self.link.reserve(len(piece)))
                last = start + step >= len(body)
                await send(
                    {"type": "http.response.body", "body": piece, "more_body": more or not last}
                )

        await self.app(scope, receive, counting_send)


# Ranges


class RangeNotSatisfiable(Exception):
    """The Range header asks only for bytes past the end (answer 416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte, inclusive, of a single `bytes=` range; None to send everything.

    Malformed headers, other units and multiple ranges are ignored (RFC 9110 allows that);
    a suffix longer than the file means the whole file, as a 206."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - suffix), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None  # syntactically invalid, so ignored rather than unsatisfiable
    if start >= size:
        raise RangeNotSatisfiable
    return start, min(int(last), size - 1) if last else size - 1


class _FileResponse(Response):
    """Streams an open file with Range support, an optional bandwidth cap and a shared link."""

    def __init__(
        self,
        file: BinaryIO,
        *,
        filename: str,
        range_header: str | None,
        if_range: str | None,
        ranges: bool,
        bandwidth: int | None,
        link: Link | None,
        cut_after: int | None = None,
        stats: ServerStats | None = None,
    ) -> None:
        stat = os.fstat(file.fileno())
        self.file = file
        self.size = stat.st_size
        self.bandwidth = bandwidth
        self.link = link
        self.cut_after = cut_after
        self.stats = stats
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        headers = {
            "content-type": ARCHIVE_TYPE,
            "content-disposition": f'attachment; filename="{filename}"',
            "etag": etag,
            "last-modified": _http_date(stat.st_mtime),
        }
        self.start, self.end = 0, self.size - 1
        self.status_code = 200
        if ranges:
            headers["accept-ranges"] = "bytes"
            # If-Range naming another version of the file means "send it all".
            if if_range is None or if_range in (etag, headers["last-modified"]):
                try:
                    chosen = parse_range(range_header, self.size)
                except RangeNotSatisfiable:
                    self.status_code = 416
                    self.start, self.end = 0, -1
                    headers["content-range"] = f"bytes */{self.size}"
                else:
                    if chosen is not None:
                        self.status_code = 206
                        self.start, self.end = chosen
                        headers["content-range"] = f"bytes {self.start}-{self.end}/{self.size}"
        headers["content-length"] = str(self.end - self.start + 1)
        self.background = None
        self.body = b""
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            remaining = self.end - self.start + 1
            if scope["method"] == "HEAD" or remaining <= 0:
                await send({"type": "http.response.body", "body": b""})
                return
            await self._stream(send, remaining)
        finally:
            self.file.close()

    async def _stream(self, send: Send, remaining: int) -> None:
        chunk = CHUNK
        for rate in (self.bandwidth, self.link and self.link.rate):
            if rate:
                # About ten sends a second keeps the pacing smooth without tiny writes.
                chunk = max(1024, min(chunk, rate // 10))
        began = anyio.current_time()
        sent = 0
        position = self.start
        while remaining > 0:
            want = min(chunk, remaining)
            data = await anyio.to_thread.run_sync(os.pread, self.file.fileno(), want, position)
            if not data:
                raise OSError(f"{self.file.name}: file shrank while being sent")
            if self.cut_after is not None and sent + len(data) > self.cut_after:
                await self._cut(send, data[: self.cut_after - sent])
            position += len(data)
            remaining -= len(data)
            sent += len(data)
            # Hold each chunk until the capped rates would have delivered it in full, so
            # even a one-chunk body takes size / bandwidth seconds.
            if self.bandwidth:
                await anyio.sleep_until(began + sent / self.bandwidth)
            if self.link:
                await anyio.sleep_until(self.link.reserve(len(data)))
            await send({"type": "http.response.body", "body": data, "more_body": remaining > 0})


    async def _cut(self, send: Send, last: bytes) -> None:
        """End the body before its length, as a dropped connection would."""
        if last:
            await send({"type": "http.response.body", "body": last, "more_body": True})
        if self.stats is not None:
            self.stats.cut_short += 1
        raise CutShort(f"body cut after {self.cut_after} bytes, as asked")


class CutShort(Exception):
    """An archive body ended early on purpose (`cut_after`); the server drops the connection."""


def _http_date(timestamp: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(timestamp))


# Indexing a set


@dataclass(frozen=True, slots=True)
class _Version:
    """One difficulty: its Hexide record and where its bytes are."""

    record: dict[str, Any]
    member: ZipMember


@dataclass(slots=True)
class _SetIndex:
    set_id: int
    path: Path
    key: tuple[int, int]  # (mtime_ns, size) of the file this was read from
    listing: SetListing
    versions: list[_Version]
    artist: str
    title: str
    video_members: frozenset[int]  # member indices the no-video archive leaves out
    hashes: tuple[str, str] | None = None  # (md5, sha1) of the .osz, computed on demand

    def summary(self) -> dict[str, Any]:
        """The `/beatmaps/` record."""
        has_name = bool(self.versions)
        return {
            "id": self.set_id,
            "ranked_id": self.set_id,
            "name": set_folder_name(self.set_id, self.artist, self.title)
            if has_name
            else str(self.set_id),
            "title": f"{self.artist} - {self.title}" if has_name else "",
            "type": "osz",
            "size": self.key[1],
            # The newest member time, not the file's: it survives copying the archive around
            # and matches the set directory's mtime in the filesystem.
            "date": datetime.fromtimestamp(self.listing.entries[0].mtime_ns / 1e9, UTC).strftime(
                "%Y-%m-%d %H:%M:%S"
            ),
        }

    def layout(self, index: int = 0) -> dict[str, Any]:
        """The `content/raw/layout` tree below listing entry `index`."""
        directories: dict[str, Any] = {}
        files: list[str] = []
        for child in self.listing.children(index):
            entry = self.listing.entries[child]
            if entry.is_dir:
                directories[entry.name] = self.layout(child)
            else:
                files.append(entry.name)
        return {"directories": directories, "files": files}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _text(value: str) -> str | None:
    return value or None  # Hexide answers null for empty columns


def _version_record(
    set_id: int, did: int, path: str, data: bytes, meta: OsuMetadata
) -> dict[str, Any]:
    name = path.rsplit("/", 1)[-1]
    if name.lower().endswith(".osu"):
        name = name[:-4]
    return {
        "id": did,
        "map": set_id,
        "name": name,
        "size": len(data),
        "hash_md5": hashlib.md5(data).hexdigest(),
        "hash_sha1": hashlib.sha1(data).hexdigest(),
        "m_title": _text(meta.title),
        "m_artist": _text(meta.artist),
        "m_creator": _text(meta.creator),
        "m_version": _text(meta.version),
        "m_source": _text(meta.source),
        "m_tags": _text(meta.tags),
        "m_beatmap": meta.beatmap_id if meta.beatmap_id is not None else 0,
        "m_beatmapset": meta.beatmapset_id if meta.beatmapset_id is not None else 0,
        "d_drain": _number(meta.hp_drain_rate),
        "d_size": _number(meta.circle_size),
        "d_diff": _number(meta.overall_difficulty),
        "d_smult": _number(meta.slider_multiplier),
        "d_srate": _number(meta.slider_tick_rate),
        "version": meta.format_version,
        "path": path,
    }


def _read_member(file: BinaryIO, member: ZipMember, limits: Limits) -> bytes:
    file.seek(member.header_offset)
    start = archive.data_offset(member, file.read(archive.LOCAL_HEADER_SIZE))
    file.seek(start)
    out = bytearray()
    archive.extract(file.read, member, out.extend, limits)
    return bytes(out)


def _index_set(set_id: int, path: Path, limits: Limits) -> _SetIndex:
    """Read one archive's directory and its .osu files (blocking; run in a thread)."""
    with open(path, "rb") as file:
        stat = os.fstat(file.fileno())
        members = archive.read_members(file, limits)
        texts: dict[int, bytes] = {}
        for i, m in enumerate(members):
            # Real difficulties are kilobytes; a huge ".osu" is not worth holding in memory.
            if not m.is_dir and m.raw_name.lower().endswith(b".osu") and m.size <= OSU_LIMIT:
                try:
                    texts[i] = _read_member(file, m, limits)
                except MemberError as error:
                    log.warning("%s: skipping %r: %s", path, m.raw_name, error)
    metas = {i: parse_osu(data) for i, data in texts.items()}
    references = [ref for meta in metas.values() for ref in referenced_files(meta)]
    listing = build_listing(members, references, log)

    versions: list[_Version] = []
    first: OsuMetadata | None = None
    videos = {meta.video.lower() for meta in metas.values() if meta.video}
    video_members = {
        i for i, m in enumerate(members) if m.raw_name.lower().endswith(_RAW_VIDEO_SUFFIXES)
    }
    for index, entry in enumerate(listing.entries):
        if entry.is_dir:
            continue
        entry_path = listing.path(index)
        lowered = entry_path.lower()
        if lowered in videos or lowered.endswith(_VIDEO_SUFFIXES):
            video_members.add(entry.member)
        meta = metas.get(entry.member)
        if meta is None or not lowered.endswith(".osu"):
            continue
        first = first or meta
        if len(versions) >= RECORD_STRIDE:
            continue  # no real set has that many difficulties
        did = set_id * RECORD_STRIDE + len(versions)
        record = _version_record(set_id, did, entry_path, texts[entry.member], meta)
        versions.append(_Version(record, members[entry.member]))
    return _SetIndex(
        set_id=set_id,
        path=path,
        key=(stat.st_mtime_ns, stat.st_size),
        listing=listing,
        versions=versions,
        artist=first.artist if first else "",
        title=first.title if first else "",
        video_members=frozenset(video_members),
    )


def _file_hashes(path: Path) -> tuple[str, str]:
    md5, sha1 = hashlib.md5(), hashlib.sha1()
    with open(path, "rb") as file:
        while data := file.read(CHUNK):
            md5.update(data)
            sha1.update(data)
    return md5.hexdigest(), sha1.hexdigest()


# The no-video archive: a byte-for-byte copy of the kept members' local records and central
# directory entries (offsets patched), so CRCs, times and names stay exactly the original's.

_CDH = struct.Struct("<4s6H3I5H2I")


def _central_records(file: BinaryIO, size: int) -> list[bytes]:
    file.seek(max(0, size - archive.TAIL_BYTES))
    offset, cd_size, _count = archive.find_central_directory(file.read(), size)
    file.seek(offset)
    data = file.read(cd_size)
    records = []
    pos = 0
    while pos + _CDH.size <= len(data):
        fields = _CDH.unpack_from(data, pos)
        end = pos + _CDH.size + fields[10] + fields[11] + fields[12]
        records.append(data[pos:end])
        pos = end
    return records


def _patch_offset(record: bytes, offset: int) -> bytes:
    """The central record with its local header offset set, in the zip64 extra if it lives there."""
    fields = _CDH.unpack_from(record)
    if fields[16] != 0xFFFFFFFF:
        return record[:42] + struct.pack("<I", offset) + record[46:]
    name_len, extra_len = fields[10], fields[11]
    pos = _CDH.size + name_len
    end = pos + extra_len
    out = bytearray(record)
    while pos + 4 <= end:
        tag, length = struct.unpack_from("<HH", record, pos)
        if tag == 0x0001:
            # Only overflowed fields are present, in the order size, compressed size, offset.
            skip = 8 * sum(1 for value in (fields[9], fields[8]) if value == 0xFFFFFFFF)
            struct.pack_into("<Q", out, pos + 4 + skip, offset)
            return bytes(out)
        pos += 4 + length
    raise ArchiveError("zip64 offset without a zip64 extra field")


def _copy_range(src: BinaryIO, dst: BinaryIO, start: int, length: int) -> None:
    src.seek(start)
    while length > 0:
        data = src.read(min(CHUNK, length))
        if not data:
            raise ArchiveError("archive shorter than its directory says")
        dst.write(data)
        length -= len(data)


def _write_without(source: Path, target: Path, drop: frozenset[int], limits: Limits) -> None:
    """Copy `source` to `target` leaving out members `drop` (blocking; deterministic bytes)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        members = archive.read_members(src, limits)
        records = _central_records(src, size)
        if len(records) != len(members):
            raise ArchiveError("central directory changed while reading")
        src.seek(max(0, size - archive.TAIL_BYTES))
        cd_offset = archive.find_central_directory(src.read(), size)[0]
        # A member's local record (header, data, data descriptor) runs to the next one.
        starts = sorted({m.header_offset for m in members} | {cd_offset})
        following = dict(itertools.pairwise(starts))
        new_offsets: dict[int, int] = {}
        for i in sorted(range(len(members)), key=lambda i: members[i].header_offset):
            old = members[i].header_offset
            if i in drop or old in new_offsets:
                continue
            new_offsets[old] = dst.tell()
            _copy_range(src, dst, old, following[old] - old)
        central_start = dst.tell()
        kept = [i for i in range(len(members)) if i not in drop]
        for i in kept:
            dst.write(_patch_offset(records[i], new_offsets[members[i].header_offset]))
        _write_end(dst, len(kept), central_start, dst.tell() - central_start)
    os.replace(tmp, target)


def _write_end(dst: BinaryIO, count: int, cd_offset: int, cd_size: int) -> None:
    if count >= 0xFFFF or cd_offset >= 0xFFFFFFFF or cd_size >= 0xFFFFFFFF:
        record = dst.tell()
        dst.write(struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                              cd_size, cd_offset))  # fmt: skip
        dst.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, record, 1))
        count, cd_offset, cd_size = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    dst.write(struct.pack("<4s4HIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0))


# The folder


class ArchiveProvider(Protocol):
    """What writes a set's archive into the folder when it is first asked for (serve --from)."""

    async def ensure(self, set_id: int) -> None: ...


class _Folder:
    """The served folder: per-set indexes cached by (mtime, size), built on first use."""

    def __init__(self, folder: Path, limits: Limits, provider: ArchiveProvider | None) -> None:
        self.folder = folder
        self.limits = limits
        self.provider = provider
        self._sets: dict[int, _SetIndex] = {}
        self._locks: dict[int, anyio.Lock] = {}
        self._generation = 0
        self._lookup_generation = -1
        self._by_key: dict[str, tuple[_SetIndex, _Version]] = {}
        self._tmp: Path | None = None

    def path(self, set_id: int) -> Path:
        return self.folder / f"{set_id}.osz"

    def ids(self) -> list[int]:
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as it:
            for entry in it:
                match = _OSZ_NAME.fullmatch(entry.name)
                if match and 1 <= int(match.group(1)) <= MAX_SET_ID and entry.is_file():
                    found.append(int(match.group(1)))
        return sorted(found)

    def _lock(self, set_id: int) -> anyio.Lock:
        return self._locks.setdefault(set_id, anyio.Lock())

    async def get(self, set_id: int) -> _SetIndex | None:
        """The set's index, rebuilt when its file changed; None when there is no such file."""
        if self.provider is not None:
            await self.provider.ensure(set_id)
        path = self.path(set_id)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            if self._sets.pop(set_id, None) is not None:
                self._generation += 1
            return None
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._sets.get(set_id)
        if cached is not None and cached.key == key:
            return cached
        async with self._lock(set_id):
            cached = self._sets.get(set_id)
            if cached is not None and cached.key == key:
                return cached
            index = await anyio.to_thread.run_sync(_index_set, set_id, path, self.limits)
            self._sets[set_id] = index
            self._generation += 1
            return index

    async def all(self) -> list[_SetIndex]:
        """Every readable set, in id order; unreadable archives are logged and left out."""
        ids = self.ids()
        for gone in set(self._sets) - set(ids):
            del self._sets[gone]
            self._generation += 1
        found = []
        for set_id in ids:
            try:
                index = await self.get(set_id)
            except (ArchiveError, OSError) as error:
                log.warning("set %d: unreadable archive: %s", set_id, error)
                continue
            if index is not None:
                found.append(index)
        return found

    async def hashes(self, index: _SetIndex) -> tuple[str, str]:
        if index.hashes is None:
            index.hashes = await anyio.to_thread.run_sync(_file_hashes, index.path)
        return index.hashes

    async def version(self, key: str) -> tuple[_SetIndex, _Version] | None:
        """A difficulty by id, md5 or sha1; the lowest set id wins when several match."""
        sets = await self.all()
        if self._lookup_generation != self._generation:
            table: dict[str, tuple[_SetIndex, _Version]] = {}
            for index in sets:
                for version in index.versions:
                    for field_name in ("id", "hash_md5", "hash_sha1"):
                        table.setdefault(str(version.record[field_name]), (index, version))
            self._by_key, self._lookup_generation = table, self._generation
        # Hashes are hex of a fixed length; anything else of digits only is an id.
        if _MD5.fullmatch(key) or _SHA1.fullmatch(key):
            return self._by_key.get(key.lower())
        return self._by_key.get(str(int(key))) if key.isdigit() else None

    async def read_version(self, index: _SetIndex, version: _Version) -> bytes:
        def read() -> bytes:
            with open(index.path, "rb") as file:
                return _read_member(file, version.member, self.limits)

        return await anyio.to_thread.run_sync(read)

    async def novid_path(self, index: _SetIndex) -> Path:
        """The archive without video members (built once per file version), or the original."""
        if not index.video_members:
            return index.path
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="osufs-serve-"))
        mtime_ns, size = index.key
        target = self._tmp / f"{index.set_id}-{mtime_ns}-{size}.osz"
        async with self._lock(index.set_id):
            if not target.exists():
                for stale in self._tmp.glob(f"{index.set_id}-*.osz"):
                    stale.unlink(missing_ok=True)
                await anyio.to_thread.run_sync(
                    _write_without, index.path, target, index.video_members, self.limits
                )
        return target

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


# What is served


@dataclass(frozen=True, slots=True)
class Survey:
    """What a folder offers: the set ids of its readable archives, and each file left out
    with why."""

    served: list[int]
    skipped: list[tuple[str, str]]


def survey(folder: Path, limits: Limits | None = None) -> Survey:
    """Read every archive's directory (blocking): what `serve` will answer for, and what not."""
    limits = limits or Limits()
    served: list[int] = []
    skipped: list[tuple[str, str]] = []
    with os.scandir(folder) as found:
        entries = sorted(found, key=lambda entry: entry.name)
    for entry in entries:
        if not entry.name.lower().endswith(".osz") or not entry.is_file():
            continue
        match = _OSZ_NAME.fullmatch(entry.name)
        if match is None:
            skipped.append((entry.name, "not named <set id>.osz"))
            continue
        set_id = int(match.group(1))
        if not 1 <= set_id <= MAX_SET_ID:
            skipped.append((entry.name, f"set ids run from 1 to {MAX_SET_ID}"))
            continue
        try:
            with open(entry.path, "rb") as file:
                archive.read_members(file, limits)
        except (ArchiveError, OSError) as error:
            skipped.append((entry.name, f"not a readable zip archive: {error}"))
            continue
        served.append(set_id)
    served.sort()
    return Survey(served, skipped)


# Endpoints


def _not_found(what: str) -> JSONResponse:
    return JSONResponse({"error": f"{what} not found"}, status_code=404)


def _broken(set_id: int, error: Exception) -> JSONResponse:
    # 422, not 500: the archive will not become readable by asking again, so clients must not
    # retry as they do a server's transient failure.
    return JSONResponse({"error": f"set {set_id}: unreadable archive: {error}"}, status_code=422)


def _folder(request: Request) -> _Folder:
    folder: _Folder = request.app.state.folder
    return folder


async def _set_or_error(request: Request) -> _SetIndex | JSONResponse:
    set_id = int(request.path_params["set_id"])
    try:
        index = await _folder(request).get(set_id)
    except (ArchiveError, OSError) as error:
        return _broken(set_id, error)
    return index if index is not None else _not_found(f"beatmap {set_id}")


async def list_sets(request: Request) -> JSONResponse:
    return JSONResponse([index.summary() for index in await _folder(request).all()])


async def set_info(request: Request) -> JSONResponse:
    index = await _set_or_error(request)
    if isinstance(index, JSONResponse):
        return index
    md5, sha1 = await _folder(request).hashes(index)
    info = {**index.summary(), "hash_md5": md5, "hash_sha1": sha1}
    info["versions"] = [version.record for version in index.versions]
    return JSONResponse(info)


async def set_layout(request: Request) -> JSONResponse:
    index = await _set_or_error(request)
    if isinstance(index, JSONResponse):
        return index
    return JSONResponse(index.layout())


async def download(request: Request, *, novid: bool) -> Response:
    set_id = int(request.path_params["set_id"])
    request.app.state.stats.downloads[set_id] += 1
    folder = _folder(request)
    options = request.app.state.options
    path = folder.path(set_id)
    # Every endpoint refuses what it cannot read, /download too: a mirror that passes on
    # garbage with a 200 only moves the failure to the client. (With `as_is`, for testing
    # clients, whole downloads are sent unread, like a mirror that never looks inside.)
    if novid or not options["as_is"]:
        index = await _set_or_error(request)
        if isinstance(index, JSONResponse):
            return index
        path = index.path
    if novid:
        try:
            path = await folder.novid_path(index)
        except (ArchiveError, OSError) as error:
            return _broken(set_id, error)
    try:
        file = open(path, "rb")  # noqa: SIM115 - the response closes it after streaming
    except (FileNotFoundError, NotADirectoryError):
        return _not_found(f"beatmap {set_id}")
    return _FileResponse(
        file,
        filename=f"{set_id} [no video].osz" if novid else f"{set_id}.osz",
        range_header=request.headers.get("range"),
        if_range=request.headers.get("if-range"),
        ranges=options["ranges"],
        bandwidth=options["bandwidth"],
        link=options["link"],
        cut_after=options["cut_after"],
        stats=request.app.state.stats,
    )


async def metadata(request: Request, *, raw: bool = False) -> Response:
    key = request.path_params["key"]
    if not (key.isdigit() or _MD5.fullmatch(key) or _SHA1.fullmatch(key)):
        return _not_found(f"difficulty {key}")
    found = await _folder(request).version(key)
    if found is None:
        return _not_found(f"difficulty {key}")
    index, version = found
    if not raw:
        return JSONResponse(version.record)
    try:
        data = await _folder(request).read_version(index, version)
    except (ArchiveError, MemberError, OSError) as error:
        return _broken(index.set_id, error)
    return Response(data, media_type="text/plain; charset=utf-8")


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.stats.snapshot())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    folder: Path,
    *,
    latency: float = 0.0,
    bandwidth: int | None = None,
    link: int | None = None,
    ranges: bool = True,
    limits: Limits | None = None,
    as_is: bool = False,
    cut_after: int | None = None,
    provider: ArchiveProvider | None = None,
) -> Starlette:
    """The Hexide API over `folder`; counters in `app.state.stats` (a ServerStats).

    latency: seconds slept before handling each request; bandwidth: bytes per second each
    archive body is held to; link: bytes per second all archive bodies share (a client's
    downlink); ranges=False ignores Range and omits Accept-Ranges; as_is=True sends whole
    archives unread, readable or not (to test what clients make of broken ones); cut_after:
    every archive body longer than this many bytes ends there, its connection dropped;
    provider writes a set's archive into the folder when it is first asked for."""
    state = _Folder(Path(folder), limits or Limits(), provider)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            state.close()

    number = "{set_id:int}"
    full, novid = partial(download, novid=False), partial(download, novid=True)
    routes = [
        Route("/beatmaps", list_sets, methods=["GET"]),
        Route("/beatmaps/", list_sets, methods=["GET"]),
        Route(f"/beatmaps/{number}", set_info, methods=["GET"]),
        Route(f"/beatmaps/{number}/content/raw/layout", set_layout, methods=["GET"]),
        # novid first: "/download/novid" would otherwise match "/download/{rest}".
        Route(f"/beatmaps/{number}/download/novid", novid, methods=["GET"]),
        Route(f"/beatmaps/{number}/download/novid/{{rest:path}}", novid, methods=["GET"]),
        Route(f"/beatmaps/{number}/download", full, methods=["GET"]),
        Route(f"/beatmaps/{number}/download/{{rest:path}}", full, methods=["GET"]),
        Route("/metadata/{key}", metadata, methods=["GET"]),
        Route("/metadata/{key}/raw", partial(metadata, raw=True), methods=["GET"]),
        Route("/_stats", stats, methods=["GET"]),
    ]
    stats_ = ServerStats()
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Shaping, stats=stats_, latency=latency)],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.folder = state
    app.state.stats = stats_
    app.state.options = {
        "bandwidth": bandwidth,
        "link": Link(link) if link else None,
        "ranges": ranges,
        "as_is": as_is,
        "cut_after": cut_after,
    }
    return app


# Serving


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve_app(
    app: Starlette,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` with hypercorn on trio until cancelled; reports the bound port."""
    config = Config()
    config.bind = [_bind(host, port)]
    # Cancelling the serving task should end it promptly, not wait for slow clients.
    config.graceful_timeout = 1.0
    config.accesslog = None
    config.loglevel = "WARNING"  # callers announce the port themselves
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(partial(hypercorn.trio.serve, app, config))
            task_status.started(int(binds[0].rsplit(":", 1)[1]))
    finally:
        # Cancellation can cut the lifespan shutdown short; the no-video cache must still go.
        folder = getattr(app.state, "folder", None)
        if isinstance(folder, _Folder):
            folder.close()


async def serve(
    folder: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    **app_options: Any,
) -> None:
    """Serve `folder` (see create_app for the options) until cancelled; reports the bound port."""
    app = create_app(folder, **app_options)
    await serve_app(app, host, port, task_status=task_status)
