"""fetch/handles.py's EntryHandles, the no-open mode's reads by entry, over a fake opener:
one open per member however many read at once, a bounded LRU, leases that reads renew and
that end on their own, and a failed read that lets the next one open anew."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from osufs.errors import OsufsError
from osufs.fetch.handles import EntryHandles


class FakeHandles:
    """Opens count, descriptors are numbers, reads return the descriptor's bytes."""

    def __init__(self) -> None:
        self.opened: list[tuple[int, int]] = []
        self.closed: list[int] = []
        self.failing: set[int] = set()
        self._next = 100

    async def open_file(self, set_id: int, index: int) -> int:
        await trio.sleep(0.01)  # a fetch: others reading meanwhile must wait for this one
        self.opened.append((set_id, index))
        self._next += 1
        return self._next

    def close_file(self, fd: int) -> None:
        assert fd not in self.closed, "closed twice"
        self.closed.append(fd)

    async def read(self, fd: int, offset: int, size: int) -> bytes:
        await trio.sleep(0)
        if fd in self.failing:
            raise OsufsError.io("the stream failed")
        return str(fd).encode()[offset : offset + size]


def run(test) -> None:  # type: ignore[no-untyped-def]
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_one_open_per_member_and_reads_renew_the_lease() -> None:
    async def main() -> None:
        fake = FakeHandles()
        entries = EntryHandles(fake, capacity=4, lease=2.0)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(entries.keep_leases)
            results: list[bytes] = []

            async def read() -> None:
                results.append(await entries.read(7, 1, 0, 10))

            async with trio.open_nursery() as readers:
                for _ in range(5):
                    readers.start_soon(read)
            assert fake.opened == [(7, 1)] and results == [b"101"] * 5
            for _ in range(5):  # 1.5 s apart: each read renews the lease
                await trio.sleep(1.5)
                assert await entries.read(7, 1, 0, 10) == b"101"
            assert fake.closed == []
            await trio.sleep(3.0)  # no read for longer than the lease: it ends, the fd closes
            assert fake.closed == [101]
            assert await entries.read(7, 1, 0, 10) == b"102"  # opened anew
            nursery.cancel_scope.cancel()
        assert fake.closed == [101, 102]  # every handle closed at the end

    run(main)


def test_the_lru_is_bounded_and_a_failed_read_drops_its_handle() -> None:
    async def main() -> None:
        fake = FakeHandles()
        entries = EntryHandles(fake, capacity=2, lease=60.0)  # type: ignore[arg-type]
        for index in (1, 2, 3):
            await entries.read(1, index, 0, 10)
        assert fake.closed == [101]  # the least recently read went
        await entries.read(1, 2, 0, 10)
        await entries.read(1, 4, 0, 10)
        assert fake.closed == [101, 103]  # 2 was read again, so 3 went
        fake.failing.add(102)
        with pytest.raises(OsufsError):
            await entries.read(1, 2, 0, 10)
        assert fake.closed == [101, 103, 102]
        assert await entries.read(1, 2, 0, 10) == b"105"
        assert fake.opened == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 2)]

    run(main)
