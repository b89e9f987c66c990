"""The fetching run: ranged requests carrying one run of a streaming member to its stop.

A `RunFetcher` asks its archive for the bytes a run still needs, writes them (inflated, for a
deflated member) into the member's partial file, and resumes a broken range where it stopped.
The member's data starts after its local header, whose extra field has a length the central
directory does not give: the first range from the member's start reads the header with the
data; a range from further in asks for the header alongside, so it costs no round trip more.

Memory stays bounded: a run holds one chunk (and, for a deflated member, the inflater's window)
at a time, and every run of every stream shares one limiter of ranges in flight. Trio thread.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import trio

from osufs import archive
from osufs.archive import MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.fetch.stream_file import PartialFile
from osufs.fetch.stream_runs import Run

log = logging.getLogger("osufs.fetch.streaming")

# Attempts at a run that bring no new byte before it fails its readers.
RESUMES = 3
# Inflated output taken from zlib at a time (bounds memory however well a member compresses).
INFLATE_CHUNK = 256 << 10
# The local header's name and extra field are read with the data; a longer extra field costs a
# resumed request.
LOCAL_HEADER_SLACK = 1024


class RangeReader(Protocol):
    """Where a member's archive bytes come from (a RemoteArchive)."""

    size: int

    def chunks(
        self, start: int, length: int
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class RunFetcher:
    """Carries runs of one member from `reader` into `file`; `progress` is told of every write."""

    def __init__(
        self,
        *,
        member: ZipMember,
        reader: RangeReader,
        file: PartialFile,
        nursery: trio.Nursery,
        pool: trio.CapacityLimiter,
        progress: Callable[[], None],
        label: str,
    ) -> None:
        self.member = member
        self._reader = reader
        self._file = file
        self._nursery = nursery
        self._pool = pool
        self._progress = progress
        self._label = label
        self._data_start: int | None = None  # archive offset of the member's first data byte
        self._header: trio.Event | None = None
        self._header_error: OsufsError | MemberError | None = None

    def __repr__(self) -> str:
        return self._label

    async def carry(self, run: Run) -> None:
        """Carry the run to its stop, resuming a broken range where it stopped. A run that gets
        nowhere RESUMES times raises OsufsError; a member that lies raises MemberError."""
        failures = 0
        inflater = zlib.decompressobj(-15) if self.member.method == 8 else None
        while not run.done:
            before = run.filled
            try:
                async with self._pool:
                    await self._fetch(run, inflater)
            except OsufsError as error:
                failures = failures + 1 if run.filled == before else 1
                if failures >= RESUMES:
                    raise
                log.info("%s: resuming at byte %d after: %s", self, run.filled, error)
                continue
            if run.filled == before and not run.done:
                failures += 1  # an empty answer: do not spin on it
                if failures >= RESUMES:
                    raise OsufsError.io(f"{self}: the source sends no more")

    async def _fetch(self, run: Run, inflater: zlib._Decompress | None) -> None:
        """One range request carrying the run on (for a deflated member, run.consumed counts
        the compressed bytes the inflater has taken, so a resumed range goes on from there)."""
        member = self.member
        compressed = run.consumed if inflater is not None else run.filled
        need = (member.compressed_size if inflater is not None else run.stop) - compressed
        name_end = member.header_offset + archive.LOCAL_HEADER_SIZE + len(member.raw_name)
        head: bytearray | None = None
        if self._data_start is not None:
            start, length = self._data_start + compressed, need
        elif compressed == 0:
            # From the local header: it tells where the data starts (after an extra field of
            # unknown length; one longer than the slack costs a resumed range).
            start = member.header_offset
            length = name_end - start + LOCAL_HEADER_SLACK + need
            head = bytearray()
        else:
            # From where the data would be without a local extra field, while the header
            # itself is asked for alongside: one round trip, not two.
            start, length = name_end + compressed, LOCAL_HEADER_SLACK + need
            self._learn_header()
        async with self._reader.chunks(start, length) as chunks:
            position = start  # archive offset of the chunk's first byte
            async for chunk in chunks:
                if head is not None:
                    head += chunk
                    if len(head) < archive.LOCAL_HEADER_SIZE:
                        continue
                    if self._data_start is None:
                        fixed = bytes(head[: archive.LOCAL_HEADER_SIZE])
                        self._data_start = archive.data_offset(member, fixed)
                        self._header_known()
                    chunk, head = bytes(head), None
                if self._data_start is None:
                    await self._header_wait()
                assert self._data_start is not None
                wanted = self._data_start + compressed  # archive offset of the next byte needed
                if position + len(chunk) <= wanted:
                    position += len(chunk)
                    continue
                if position > wanted:
                    raise OsufsError.io(f"{self}: the range began past the member's data")
                chunk = chunk[wanted - position : wanted - position + need]
                position = wanted + len(chunk)
                compressed += len(chunk)
                need -= len(chunk)
                if inflater is None:
                    self._write(run, chunk)
                else:
                    self._inflate(run, inflater, chunk)
                    run.consumed = compressed
                if run.done or need <= 0:
                    break
        if inflater is not None and compressed >= member.compressed_size and not run.done:
            self._write(run, inflater.flush())
            if not run.done:
                raise MemberError(
                    f"{member.raw_name!r}: {run.filled} bytes, {member.size} declared"
                )

    def _inflate(self, run: Run, inflater: zlib._Decompress, data: bytes) -> None:
        while data and not inflater.eof:
            try:
                out = inflater.decompress(data, INFLATE_CHUNK)
            except zlib.error as error:
                raise MemberError(
                    f"{self.member.raw_name!r}: corrupt deflate data: {error}"
                ) from error
            self._write(run, out)
            data = inflater.unconsumed_tail

    def _write(self, run: Run, data: bytes) -> None:
        if not data:
            return
        run.filled += self._file.write(run.filled, data, run.stop)
        self._progress()

    # the local header

    def _learn_header(self) -> trio.Event:
        """Ask for the local header (once, alongside the range that needs it)."""
        if self._header is None:
            self._header = trio.Event()
            self._header_error = None
            self._nursery.start_soon(self._fetch_header, self._header)
        return self._header

    async def _fetch_header(self, done: trio.Event) -> None:
        try:
            head = await _read(self._reader, self.member.header_offset, archive.LOCAL_HEADER_SIZE)
            self._data_start = archive.data_offset(self.member, head)
        except (OsufsError, MemberError) as error:
            self._header_error = error
        finally:
            done.set()

    def _header_known(self) -> None:
        if self._header is None:
            self._header = trio.Event()
        self._header.set()

    async def _header_wait(self) -> None:
        await self._learn_header().wait()
        if self._data_start is None:
            error = self._header_error or OsufsError.io(f"{self}: no local header")
            self._header = None  # the next attempt asks again
            raise error


async def _read(reader: RangeReader, start: int, length: int) -> bytes:
    parts = bytearray()
    async with reader.chunks(start, length) as chunks:
        async for chunk in chunks:
            parts += chunk
    if len(parts) != length:
        raise OsufsError.io(f"short range: {len(parts)} of {length} bytes")
    return bytes(parts)


__all__ = ["RangeReader", "RunFetcher"]
