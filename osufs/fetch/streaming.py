"""A cold member streamed into its cache file while it is read.

A `MemberStream` fills one temporary file in the store (`PartialFile`, stream_file.py) with a
member's bytes as ranged requests bring them. Each stretch of the file is filled in order by a
*run* (`Runs`, stream_runs.py), carried by one range request and resumed where it stopped when
the connection breaks (`RunFetcher`, stream_fetch.py); a read waits only until its own bytes
are in the file. A stored member can be read far ahead of a run: the read starts a run of its
own there, and the run behind it stops where the new one begins. A deflated member can only be
inflated from its start, so it has one run and a read far ahead waits for it.

Until the member is complete, the bytes served are the source's as they came (the rule
mount-zip and ratarmount follow for large members, docs/archives.md). When every byte is in,
the file is checked (size, CRC32) and hashed in a thread, fsynced, and handed to `commit` (the
store's write protocol: rename by SHA-256, then index). A member that fails its check is never
indexed: its stream fails, every later read raises, and `refuse` hears of it once.

Memory stays bounded: a run holds one chunk at a time; at most `runs` (a limiter shared by
every stream) are in flight at once.

Everything here runs in the trio thread except the final check, which runs in a worker.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

from osufs import archive
from osufs.archive import MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.fetch.stream_fetch import RangeReader, RunFetcher
from osufs.fetch.stream_file import PartialFile
from osufs.fetch.stream_runs import SEEK_GAP, Run, Runs
from osufs.store import PendingBlob, Store

log = logging.getLogger(__name__)

# A stream nobody has open keeps its partial file this long (a player that probes a file,
# closes it and opens it again), then is abandoned, the file deleted. A stored member's runs
# stop when the last reader closes (a preview read must not pull in the rest of the audio,
# taking the link from the next reads); a deflated member's one run goes on, since inflating
# cannot resume mid-way.
LINGER = 10.0
# Ranges in flight at once across every stream: each holds about one chunk, so this bounds
# the memory many readers of many members can take.
MAX_RUNS = 16


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
        self._nursery = nursery
        self._commit = commit
        self._refuse = refuse
        self.timeout = timeout
        self._file = PartialFile(store, member, repr(self))
        self.path = self._file.path
        self.fd = self._file.fd
        self._fetcher = RunFetcher(
            member=member,
            reader=reader,
            file=self._file,
            nursery=nursery,
            pool=runs,
            progress=self._notify,
            label=repr(self),
        )
        self._seekable = member.method != 8
        self._runs = Runs(self.size, seekable=self._seekable, launch=self._launch)
        self._progress = trio.Event()
        self.error: OsufsError | None = None  # the stream failed: every read raises it
        self.complete = False  # checked and committed
        self._handles = 0
        self._verifying = False
        # Told once when the stream is over (complete or failed), so its owner forgets it.
        self.on_finish: Callable[[MemberStream], None] = lambda stream: None
        if not self._seekable or self.size == 0:
            self._runs.start(0, self.size)  # inflating starts only at the start

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
            self._file.close()
            return
        if self._seekable:
            self._runs.pause()
        self._nursery.start_soon(self._linger)

    async def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes at `offset`, as soon as they are in the file."""
        end = min(offset + size, self.size)
        with trio.move_on_after(self.timeout):
            while True:
                self._raise_if_failed()
                if offset >= end:
                    return b""
                if self.complete or self._runs.covered(offset, end):
                    return self._file.read(offset, end - offset)
                self._runs.serving(offset)
                await self._progress.wait()
        raise OsufsError(
            errno.EIO, f"{self}: {end - offset} bytes at {offset} did not come in {self.timeout} s"
        )

    async def wait_complete(self) -> None:
        """Fetch whatever no read asked for, until the member is checked and committed."""
        self._runs.fill_gaps()
        while not self.complete:
            self._raise_if_failed()
            await self._progress.wait()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # runs

    def _launch(self, run: Run) -> None:
        self._nursery.start_soon(self._run, run)

    async def _run(self, run: Run) -> None:
        """Carry one run to its stop; a run that fails fails the stream."""
        with run.scope:
            try:
                await self._fetcher.carry(run)
            except MemberError as error:
                self._fail(OsufsError(error.errno, f"{self}: {error}"), error)
                return
            except OsufsError as error:
                self._fail(error, None)
                return
            except Exception as error:
                log.exception("%s: the stream failed", self)
                self._fail(OsufsError.io(f"{self}: {error}"), None)
                return
        self._maybe_finish()

    # completion

    def _maybe_finish(self) -> None:
        if self._verifying or self.over or not self._runs.covered(0, self.size):
            return
        self._verifying = True
        self._nursery.start_soon(self._finish)

    async def _finish(self) -> None:
        """Check the whole file, then commit it through the store's write protocol."""
        try:
            digest = await trio.to_thread.run_sync(self._file.check)
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
            self._file.close()

    def _fail(self, error: OsufsError, refused: MemberError | None) -> None:
        """The stream is over: every read raises `error`; a refused member is reported."""
        if self.over:
            return
        self.error = error
        log.warning("%s: dropped: %s", self, error)
        self._runs.cancel()
        if refused is not None:
            self._refuse(refused)
        self._notify()
        self.on_finish(self)
        self._file.discard()
        if self._handles == 0:
            self._file.close()

    async def _linger(self) -> None:
        await trio.sleep(LINGER)
        if self._handles == 0 and not self.over and not self._verifying:
            self._fail(OsufsError.io(f"{self}: abandoned: nobody reads it"), None)


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


__all__ = ["SEEK_GAP", "MemberStream", "RangeReader", "Streams"]
