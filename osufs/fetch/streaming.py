"""A cold member streamed into its cache file while it is read.

A `MemberStream` fills one temporary file in the store with a member's bytes as ranged
requests bring them. Each stretch of the file is filled in order by a *run* (one range
request, resumed where it stopped when the connection breaks); a read waits only until its own
bytes are in the file. A stored member can be read far ahead of a run: the read starts a run of
its own there, and the run behind it stops where the new one begins. A deflated member can only
be inflated from its start, so it has one run and a read far ahead waits for it.

Until the member is complete, the bytes served are the source's as they came (the rule
mount-zip and ratarmount follow for large members, docs/archives.md). When every byte is in,
the file is checked (size, CRC32) and hashed in a thread, fsynced, and handed to `commit` (the
store's write protocol: rename by SHA-256, then index). A member that fails its check is never
indexed: its stream fails, every later read raises, and `refuse` hears of it once.

Memory stays bounded: a run holds one chunk (and, for a deflated member, the inflater's
window) at a time; at most `runs` (a limiter shared by every stream) are in flight at once.

Everything here runs in the trio thread except the final check, which runs in a worker.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import logging
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from osufs import archive
from osufs.archive import MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.store import PendingBlob, Store

log = logging.getLogger(__name__)

# A read this far (or less) past the point a run has filled waits for that run; further
# ahead, in a stored member, it starts a run of its own. About what a fast link brings in the
# time a new request takes to answer.
SEEK_GAP = 2 << 20
# Runs started at a read's place begin at a multiple of this, so the kernel's next
# read-ahead requests land in the same run.
SEEK_ALIGN = 64 << 10
# Attempts at a run that bring no new byte before it fails its readers.
RESUMES = 3
# Inflated output taken from zlib at a time (bounds memory however well a member compresses).
INFLATE_CHUNK = 256 << 10
# The local header's name and extra field are read with the data; a longer extra field costs a
# resumed request.
LOCAL_HEADER_SLACK = 1024
# A stream nobody has open is kept going this long (a player that probes a file, closes it
# and opens it again), then abandoned, its partial file deleted.
LINGER = 10.0
VERIFY_CHUNK = 1 << 20
# Ranges in flight at once across every stream: each holds about one chunk, so this bounds
# the memory many readers of many members can take.
MAX_RUNS = 16


class RangeReader(Protocol):
    """Where a member's archive bytes come from (a RemoteArchive)."""

    size: int

    def chunks(
        self, start: int, length: int
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


@dataclass(slots=True)
class _Run:
    """Member bytes [start, filled) are in the file; the run goes on until `stop`."""

    start: int
    filled: int
    stop: int
    scope: trio.CancelScope
    consumed: int = 0  # compressed bytes fed to the run's inflater (a deflated member)

    @property
    def done(self) -> bool:
        return self.filled >= self.stop


class MemberStream:
    """One member's bytes arriving into a partial cache file; see the module docstring."""

    def __init__(
        self,
        *,
        set_id: int,
        index: int,
        member: ZipMember,
        reader: RangeReader,
        store: Store,
        nursery: trio.Nursery,
        runs: trio.CapacityLimiter,
        commit: Callable[[PendingBlob], Awaitable[None]],
        refuse: Callable[[MemberError], None],
        timeout: float,
        limits: archive.Limits,
    ) -> None:
        archive.check_member(member, limits)
        self.set_id = set_id
        self.index = index
        self.member = member
        self.size = member.size
        self._reader = reader
        self._nursery = nursery
        self._pool = runs
        self._commit = commit
        self._refuse = refuse
        self.timeout = timeout
        self.path, created = store.new_temp()
        created.close()
        self._file = open(self.path, "r+b")  # noqa: SIM115 - closed when the stream is over
        self.fd = self._file.fileno()
        self._runs: list[_Run] = []
        self._starts: list[int] = []  # the runs' starts, for bisect
        self._data_start: int | None = None  # archive offset of the member's first data byte
        self._header: trio.Event | None = None
        self._header_error: OsufsError | MemberError | None = None
        self._progress = trio.Event()
        self.error: OsufsError | None = None  # the stream failed: every read raises it
        self.complete = False  # checked and committed
        self._handles = 0
        self._verifying = False
        self._closed = False
        # Told once when the stream is over (complete or failed), so its owner forgets it.
        self.on_finish: Callable[[MemberStream], None] = lambda stream: None
        if member.method == 8 or self.size == 0:
            self._start_run(0, self.size)  # inflating starts only at the start

    def __repr__(self) -> str:
        return f"set {self.set_id}: member {self.index}"

    @property
    def over(self) -> bool:
        return self.complete or self.error is not None

    # readers

    def acquire(self) -> None:
        self._handles += 1

    def release(self) -> None:
        self._handles -= 1
        if self._handles:
            return
        if self.over:
            self._close()
        else:
            self._nursery.start_soon(self._linger)

    async def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`, as soon as they are in the file."""
        end = min(offset + size, self.size)
        with trio.move_on_after(self.timeout):
            while True:
                self._raise_if_failed()
                if offset >= end:
                    return b""
                if self.complete or self._covered(offset, end):
                    return os.pread(self.fd, end - offset, offset)
                self._serving(offset)
                await self._progress.wait()
        raise OsufsError(
            errno.EIO, f"{self}: {end - offset} bytes at {offset} did not come in {self.timeout} s"
        )

    async def wait_complete(self) -> None:
        """Fetch whatever no read asked for, until the member is checked and committed."""
        self._fill_gaps()
        while not self.complete:
            self._raise_if_failed()
            await self._progress.wait()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _first_missing(self, offset: int) -> int:
        """The first member byte at or after offset that is not in the file."""
        i = bisect.bisect_right(self._starts, offset) - 1
        while 0 <= i < len(self._runs) and self._runs[i].start <= offset < self._runs[i].filled:
            offset = self._runs[i].filled
            if not self._runs[i].done:
                break
            i += 1
        return offset

    def _covered(self, offset: int, end: int) -> bool:
        return self._first_missing(offset) >= end

    def _serving(self, offset: int) -> _Run:
        """The run that will bring the first missing byte at or after offset; started here
        when none will soon."""
        missing = self._first_missing(offset)
        i = bisect.bisect_right(self._starts, missing) - 1
        if i >= 0 and missing < self._runs[i].stop:
            run = self._runs[i]
            if self.member.method == 8 or missing - run.filled <= SEEK_GAP:
                return run
            # Far ahead of this run: a run of its own from there, and this one stops there.
            start = max(run.filled, missing - missing % SEEK_ALIGN)
            stop = run.stop
            self._cut(run, start)
            return self._start_run(start, stop)
        # In a gap no run will fill: from its start if that is near, else from the read's place.
        gap_start = self._runs[i].stop if i >= 0 else 0
        gap_end = self._starts[i + 1] if i + 1 < len(self._starts) else self.size
        start = gap_start
        if missing - gap_start > SEEK_GAP:
            start = max(gap_start, missing - missing % SEEK_ALIGN)
        return self._start_run(start, gap_end)

    def _fill_gaps(self) -> None:
        """Start runs for every stretch no run will fill."""
        position = 0
        for run in list(self._runs):
            if run.start > position:
                self._start_run(position, run.start)
            position = max(position, run.stop)
        if position < self.size:
            self._start_run(position, self.size)

    # runs

    def _start_run(self, start: int, stop: int) -> _Run:
        run = _Run(start, start, stop, trio.CancelScope())
        at = bisect.bisect_left(self._starts, start)
        self._runs.insert(at, run)
        self._starts.insert(at, start)
        self._nursery.start_soon(self._run, run)
        return run

    def _cut(self, run: _Run, stop: int) -> None:
        run.stop = stop
        if run.done:
            run.scope.cancel()

    async def _run(self, run: _Run) -> None:
        """Carry one run to its stop, resuming a broken range where it stopped; a run that
        gets nowhere RESUMES times fails the stream."""
        with run.scope:
            failures = 0
            inflater = zlib.decompressobj(-15) if self.member.method == 8 else None
            try:
                while not run.done and self.error is None:
                    before = run.filled
                    try:
                        async with self._pool:
                            await self._fetch(run, inflater)
                    except OsufsError as error:
                        failures = failures + 1 if run.filled == before else 1
                        if failures >= RESUMES:
                            self._fail(error, None)
                            return
                        log.info("%s: resuming at byte %d after: %s", self, run.filled, error)
                        continue
                    if run.filled == before and not run.done:
                        failures += 1  # an empty answer: do not spin on it
                        if failures >= RESUMES:
                            self._fail(OsufsError.io(f"{self}: the source sends no more"), None)
                            return
            except MemberError as error:
                self._fail(OsufsError(error.errno, f"{self}: {error}"), error)
                return
            except Exception as error:
                log.exception("%s: the stream failed", self)
                self._fail(OsufsError.io(f"{self}: {error}"), None)
                return
        self._maybe_finish()

    async def _fetch(self, run: _Run, inflater: zlib._Decompress | None) -> None:
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
                raise MemberError(f"{member.raw_name!r}: {run.filled} bytes, {self.size} declared")

    def _inflate(self, run: _Run, inflater: zlib._Decompress, data: bytes) -> None:
        while data and not inflater.eof:
            try:
                out = inflater.decompress(data, INFLATE_CHUNK)
            except zlib.error as error:
                raise MemberError(
                    f"{self.member.raw_name!r}: corrupt deflate data: {error}"
                ) from error
            self._write(run, out)
            data = inflater.unconsumed_tail

    def _write(self, run: _Run, data: bytes) -> None:
        if not data:
            return
        if run.filled + len(data) > self.size:
            raise MemberError(
                f"{self.member.raw_name!r} inflates past its declared size", errno.EFBIG
            )
        data = data[: run.stop - run.filled]
        try:
            os.pwrite(self.fd, data, run.filled)
        except OSError as error:
            code = errno.ENOSPC if error.errno in (errno.ENOSPC, errno.EDQUOT) else errno.EIO
            raise OsufsError(code, f"{self}: the cache cannot take it: {error}") from error
        run.filled += len(data)
        self._notify()

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

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # completion

    def _maybe_finish(self) -> None:
        if self._verifying or self.over or not self._covered(0, self.size):
            return
        self._verifying = True
        self._nursery.start_soon(self._finish)

    async def _finish(self) -> None:
        """Check the whole file, then commit it through the store's write protocol."""
        try:
            digest = await trio.to_thread.run_sync(self._check)
            await self._commit(PendingBlob(self.set_id, self.index, self.path, digest, self.size))
        except MemberError as error:
            self._fail(OsufsError(error.errno, f"{self}: {error}"), error)
            return
        except OsufsError as error:
            self._fail(error, None)
            return
        except Exception as error:
            log.exception("%s: storing it failed", self)
            self._fail(OsufsError.io(f"{self}: storing it failed: {error}"), None)
            return
        self.complete = True
        self._notify()
        log.info("%s: %d bytes streamed, checked and stored", self, self.size)
        self.on_finish(self)
        if self._handles == 0:
            self._close()

    def _check(self) -> bytes:
        """SHA-256 of the whole file, once its size and CRC32 are the directory's (blocking)."""
        sha = hashlib.sha256()
        crc = 0
        position = 0
        while position < self.size:
            block = os.pread(self.fd, min(VERIFY_CHUNK, self.size - position), position)
            if not block:
                break
            sha.update(block)
            crc = zlib.crc32(block, crc)
            position += len(block)
        if position != self.size:
            raise MemberError(f"{self.member.raw_name!r}: {position} bytes, {self.size} declared")
        if crc != self.member.crc32:
            raise MemberError(f"{self.member.raw_name!r}: CRC32 mismatch")
        os.fsync(self.fd)
        return sha.digest()

    def _fail(self, error: OsufsError, refused: MemberError | None) -> None:
        """The stream is over: every read raises `error`; a refused member is reported."""
        if self.over:
            return
        self.error = error
        log.warning("%s: dropped: %s", self, error)
        for run in self._runs:
            run.scope.cancel()
        if refused is not None:
            self._refuse(refused)
        self._notify()
        self.on_finish(self)
        Path(self.path).unlink(missing_ok=True)
        if self._handles == 0:
            self._close()

    async def _linger(self) -> None:
        await trio.sleep(LINGER)
        if self._handles == 0 and not self.over and not self._verifying:
            self._fail(OsufsError.io(f"{self}: abandoned: nobody reads it"), None)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._file.close()


class Streams:
    """The members streaming now, by (set id, entry), and the read handles open on them.

    A handle is a duplicate descriptor of the stream's partial file, so handles never collide
    with other open files. Trio thread only."""

    def __init__(
        self,
        store: Store,
        nursery: trio.Nursery,
        *,
        commit: Callable[[PendingBlob], Awaitable[None]],
        refuse: Callable[[int, int, MemberError], None],
        timeout: float,
        limits: archive.Limits,
        runs: int = MAX_RUNS,
    ) -> None:
        self._store = store
        self._nursery = nursery
        self._commit = commit
        self._refuse = refuse
        self._timeout = timeout
        self._limits = limits
        self._runs = trio.CapacityLimiter(runs)
        self._live: dict[tuple[int, int], MemberStream] = {}
        self._handles: dict[int, MemberStream] = {}

    def current(self, set_id: int, index: int) -> MemberStream | None:
        return self._live.get((set_id, index))

    def start(
        self, set_id: int, index: int, member: ZipMember, reader: RangeReader
    ) -> MemberStream:
        """A stream of the member (MemberError when it must not be extracted at all)."""
        stream = MemberStream(
            set_id=set_id,
            index=index,
            member=member,
            reader=reader,
            store=self._store,
            nursery=self._nursery,
            runs=self._runs,
            commit=self._commit,
            refuse=lambda error: self._refuse(set_id, index, error),
            timeout=self._timeout,
            limits=self._limits,
        )
        stream.on_finish = self._forget
        self._live[(set_id, index)] = stream
        return stream

    def _forget(self, stream: MemberStream) -> None:
        if self._live.get((stream.set_id, stream.index)) is stream:
            del self._live[(stream.set_id, stream.index)]

    def open(self, stream: MemberStream) -> int:
        handle = os.dup(stream.fd)
        stream.acquire()
        self._handles[handle] = stream
        return handle

    def of(self, handle: int) -> MemberStream | None:
        return self._handles.get(handle)

    def close(self, handle: int) -> bool:
        """Close a handle opened here; False when it is not one."""
        stream = self._handles.pop(handle, None)
        if stream is None:
            return False
        os.close(handle)
        stream.release()
        return True


async def _read(reader: RangeReader, start: int, length: int) -> bytes:
    parts = bytearray()
    async with reader.chunks(start, length) as chunks:
        async for chunk in chunks:
            parts += chunk
    if len(parts) != length:
        raise OsufsError.io(f"short range: {len(parts)} of {length} bytes")
    return bytes(parts)


__all__ = ["MemberStream", "RangeReader", "Streams"]
