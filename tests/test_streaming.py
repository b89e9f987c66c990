"""The streaming primitive (osufs/fetch/streaming.py) below FUSE: a fake ranged source that
counts what it sends, can hold bytes back, or close mid-range, over a real temporary store."""

from __future__ import annotations

import errno
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from osufs import archive
from osufs.archive import Limits, MemberError, ZipMember
from osufs.errors import OsufsError
from osufs.fetch.ingest import commit_blobs
from osufs.fetch.streaming import SEEK_GAP, MemberStream
from osufs.store import PendingBlob, Store
from tests.hostile import Raw, build_zip

SIZE = 3 << 20
CHUNK = 64 << 10


class FakeRanges:
    """An archive served by byte ranges, in CHUNK pieces; `sent` counts the bytes handed out,
    `requests` the (start, length) asked for. `hold_at`: no byte past it until `release` is
    set. `cut`: archive offsets at which a range ends early, once each."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.sent = 0
        self.requests: list[tuple[int, int]] = []
        self.hold_at: int | None = None
        self.release = trio.Event()
        self.cut: set[int] = set()
        self.cut_always = False

    @asynccontextmanager
    async def chunks(self, start: int, length: int) -> AsyncIterator[AsyncIterator[bytes]]:
        self.requests.append((start, length))
        yield self._body(start, min(start + length, self.size))

    async def _body(self, position: int, end: int) -> AsyncIterator[bytes]:
        if self.cut_always:
            raise OsufsError.io("connection reset")
        while position < end:
            stop = min(end, position + CHUNK)
            if self.hold_at is not None and position >= self.hold_at:
                await self.release.wait()
            for at in sorted(self.cut):
                if position <= at < stop:
                    self.cut.discard(at)
                    if at > position:
                        self.sent += at - position
                        yield self.data[position:at]
                    raise OsufsError.io("connection reset mid-range")
            await trio.sleep(0)
            self.sent += stop - position
            yield self.data[position:stop]
            position = stop


def payload(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    # Half noise, half text: deflate shrinks it somewhat, like real media and .osu files.
    return bytes(rng.getrandbits(8) for _ in range(size // 2)) + b"abcdefgh" * (size // 16)


def built(raw: Raw) -> tuple[bytes, ZipMember]:
    data = build_zip([Raw(b"before.osu", b"x" * 5000), raw])
    tail = data[-archive.TAIL_BYTES :]
    offset, size, _ = archive.find_central_directory(tail, len(data))
    members = archive.parse_central_directory(data[offset : offset + size], Limits())
    return data, members[1]


class Harness:
    def __init__(self, tmp_path: Path, nursery: trio.Nursery, data: bytes) -> None:
        self.store = Store(tmp_path / "cache")
        self.source = FakeRanges(data)
        self.nursery = nursery
        self.refused: list[MemberError] = []
        self.runs = trio.CapacityLimiter(4)

    async def commit(self, blob: PendingBlob) -> None:
        await trio.to_thread.run_sync(commit_blobs, self.store, [blob])

    def stream(self, member: ZipMember, timeout: float = 30.0) -> MemberStream:
        stream = MemberStream(
            set_id=7,
            index=2,
            member=member,
            reader=self.source,
            store=self.store,
            nursery=self.nursery,
            runs=self.runs,
            commit=self.commit,
            refuse=self.refused.append,
            timeout=timeout,
            limits=Limits(),
        )
        stream.acquire()
        return stream


def run_with(tmp_path: Path, data: bytes, body: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            harness = Harness(tmp_path, nursery, data)
            try:
                await body(harness)
            finally:
                harness.store.close()
                nursery.cancel_scope.cancel()

    trio.run(main)


@pytest.mark.parametrize("method", [0, 8])
def test_first_bytes_return_before_the_member_has_arrived(tmp_path: Path, method: int) -> None:
    content = payload(SIZE)
    data, member = built(Raw(b"audio.mp3", content, method=method))

    async def body(h: Harness) -> None:
        h.source.hold_at = member.header_offset + (1 << 20)
        stream = h.stream(member)
        first = await stream.read(0, 128 << 10)
        assert first == content[: 128 << 10]
        assert h.source.sent < member.compressed_size  # the rest is still held back
        assert h.store.blob_path(7, 2) is None  # nothing unverified is indexed
        h.source.release.set()
        await stream.wait_complete()
        path = h.store.blob_path(7, 2)
        assert path is not None and path.read_bytes() == content
        assert await stream.read(SIZE - 10, 100) == content[-10:]
        assert len(h.source.requests) == 1

    run_with(tmp_path, data, body)


def test_a_read_far_ahead_in_a_stored_member_starts_a_range_there(tmp_path: Path) -> None:
    content = payload(8 << 20)
    data, member = built(Raw(b"audio.mp3", content, method=0))

    async def body(h: Harness) -> None:
        stream = h.stream(member)
        at = int(len(content) * 0.6)
        assert await stream.read(at, 64 << 10) == content[at : at + (64 << 10)]
        # The header alongside, and one range from near the offset: nothing from the start.
        assert len(h.source.requests) == 2
        assert min(start for start, _ in h.source.requests) == member.header_offset
        ranged = max(start for start, _ in h.source.requests)
        assert at - (64 << 10) <= ranged - member.header_offset <= at
        assert h.source.sent < len(content) - at + (64 << 10) + 4096
        # A read at the start then has a run of its own, which stops where the other began.
        assert await stream.read(0, 4096) == content[:4096]
        await stream.wait_complete()
        path = h.store.blob_path(7, 2)
        assert path is not None and path.read_bytes() == content
        assert h.source.sent < len(content) + 2 * CHUNK + 4096  # nothing fetched twice

    run_with(tmp_path, data, body)


def test_a_first_read_near_the_start_of_a_stored_member_starts_there(tmp_path: Path) -> None:
    content = payload(SIZE)
    data, member = built(Raw(b"audio.mp3", content, method=0))

    async def body(h: Harness) -> None:
        h.source.hold_at = member.header_offset + (2 << 20)  # the link is slow past 2 MiB
        stream = h.stream(member)
        at = 1 << 20  # well inside SEEK_GAP, but nothing is running there yet
        assert await stream.read(at, 4096) == content[at : at + 4096]
        ranged = max(start for start, _ in h.source.requests) - member.header_offset
        assert at - (64 << 10) <= ranged <= at + 100  # the local header's length past it
        assert h.source.sent <= (2 << 20) - at + (64 << 10) + 4096  # not the first MiB
        h.source.release.set()

    run_with(tmp_path, data, body)


def test_a_stored_member_stops_streaming_when_its_last_reader_closes(tmp_path: Path) -> None:
    content = payload(8 << 20)
    data, member = built(Raw(b"audio.mp3", content, method=0))

    async def body(h: Harness) -> None:
        stream = h.stream(member)
        at = int(len(content) * 0.6)
        assert await stream.read(at, 64 << 10) == content[at : at + (64 << 10)]
        stream.release()  # a preview read, then the player closes the file
        await trio.sleep(0.05)
        stopped = h.source.sent
        await trio.sleep(0.05)
        assert h.source.sent == stopped
        assert stopped < (len(content) - at) // 2  # not the rest of the audio
        # Opened again within the linger: the bytes in are served, the run goes on from there.
        stream.acquire()
        more = at + (128 << 10)
        assert await stream.read(more, 64 << 10) == content[more : more + (64 << 10)]
        await stream.wait_complete()
        path = h.store.blob_path(7, 2)
        assert path is not None and path.read_bytes() == content
        assert h.source.sent < len(content) + 3 * CHUNK + 4096  # nothing fetched twice

    run_with(tmp_path, data, body)


def test_a_deflated_member_only_streams_from_its_start(tmp_path: Path) -> None:
    content = payload(SIZE)
    data, member = built(Raw(b"video.avi", content, method=8))

    async def body(h: Harness) -> None:
        stream = h.stream(member)
        at = SIZE - SEEK_GAP // 4
        assert await stream.read(at, 4096) == content[at : at + 4096]
        assert len(h.source.requests) == 1
        assert h.source.requests[0][0] == member.header_offset

    run_with(tmp_path, data, body)


def test_a_member_failing_its_crc_is_dropped_after_serving_bytes(tmp_path: Path) -> None:
    content = payload(SIZE)
    data, member = built(Raw(b"audio.mp3", content, method=0, crc=zlib.crc32(content) ^ 1))

    async def body(h: Harness) -> None:
        stream = h.stream(member)
        assert await stream.read(0, 4096) == content[:4096]  # the source's bytes, as they came
        with pytest.raises(OsufsError) as failed:
            await stream.wait_complete()
        assert failed.value.errno == errno.EIO
        with pytest.raises(OsufsError):
            await stream.read(0, 4096)
        assert [str(e) for e in h.refused] == ["b'audio.mp3': CRC32 mismatch"]
        assert h.store.blob_path(7, 2) is None
        assert not Path(stream.path).exists()
        assert h.store.content_bytes() == 0

    run_with(tmp_path, data, body)


@pytest.mark.parametrize("method", [0, 8])
def test_a_range_cut_short_resumes_where_it_stopped(tmp_path: Path, method: int) -> None:
    content = payload(SIZE)
    data, member = built(Raw(b"audio.mp3", content, method=method))

    async def body(h: Harness) -> None:
        cut = member.header_offset + 700_001
        h.source.cut = {cut}
        stream = h.stream(member)
        await stream.wait_complete()
        path = h.store.blob_path(7, 2)
        assert path is not None and path.read_bytes() == content
        assert [start for start, _ in h.source.requests][1] == cut
        assert h.source.sent <= member.compressed_size + 1024

    run_with(tmp_path, data, body)


def test_a_source_that_keeps_failing_fails_the_reader(tmp_path: Path) -> None:
    content = payload(SIZE)
    data, member = built(Raw(b"audio.mp3", content, method=0))

    async def body(h: Harness) -> None:
        h.source.cut_always = True
        stream = h.stream(member)
        with pytest.raises(OsufsError) as failed:
            await stream.read(0, 4096)
        assert "connection reset" in str(failed.value)
        assert len(h.source.requests) == 3
        assert h.store.blob_path(7, 2) is None and not h.refused

    run_with(tmp_path, data, body)


def test_a_read_that_does_not_come_in_time_fails(tmp_path: Path) -> None:
    content = payload(SIZE)
    data, member = built(Raw(b"audio.mp3", content, method=0))

    async def body(h: Harness) -> None:
        h.source.hold_at = 0
        stream = h.stream(member, timeout=0.2)
        with pytest.raises(OsufsError) as failed:
            await stream.read(0, 4096)
        assert failed.value.errno == errno.EIO and "did not come" in str(failed.value)

    run_with(tmp_path, data, body)


def test_a_local_extra_field_longer_than_the_slack(tmp_path: Path) -> None:
    content = payload(1 << 20)
    data, member = built(Raw(b"audio.mp3", content, method=0, extra=b"\x99\x99" + b"\0" * 5000))

    async def body(h: Harness) -> None:
        stream = h.stream(member)
        at = 900_000
        assert await stream.read(at, 1000) == content[at : at + 1000]
        assert await stream.read(0, 1000) == content[:1000]
        await stream.wait_complete()
        path = h.store.blob_path(7, 2)
        assert path is not None and path.read_bytes() == content

    run_with(tmp_path, data, body)
