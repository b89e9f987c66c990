"""The planner below FUSE (osufs/fetch/planner.py): fake sources whose allowances live in a real
temporary store, asked through `Planner.serve` the way the fetch modules ask, under the
priorities of fetch/context.py and the flights of osufs/flights.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from osufs.allowance import Shape
from osufs.errors import OsufsError
from osufs.fetch.context import background, in_background
from osufs.fetch.planner import DOWNLOAD, OSU, Planner
from osufs.flights import Flights
from osufs.sources import Source, SourceLimited, SourceMissing
from osufs.store import Store


class FakeSource(Source):
    """A source whose answer to every request is `answer(self)`, each paced on its allowance
    as real sources pace theirs; `asked` holds when each came."""

    def __init__(self, client: httpx.AsyncClient, name: str, shape: Shape | None = None) -> None:
        super().__init__(client, f"http://{name}.invalid", shape=shape)
        self.name = name
        self.asked: list[float] = []
        self.answer: Callable[[FakeSource], bytes] = lambda source: source.name.encode()

    async def request(self, source: Source) -> bytes:
        assert source is self
        await self._pace(self.allowance, background=in_background())
        self.asked.append(time.time())
        return self.answer(self)


def run(tmp_path: Path, body: Callable[[Store, list[FakeSource]], object], *shapes: Shape | None):
    """`body(store, sources)` under trio: one fake source per shape, sharing the store's ledger."""

    async def main() -> None:
        store = Store(tmp_path / "cache")
        try:
            async with httpx.AsyncClient() as client:
                sources = [FakeSource(client, f"s{n}", shape) for n, shape in enumerate(shapes)]
                for source in sources:
                    source.share_allowance(store)
                await body(store, sources)  # type: ignore[misc]
        finally:
            store.close()

    trio.run(main)


async def serve(planner: Planner, sources: list[FakeSource], kind: str = OSU) -> bytes:
    async def ask(source: Source) -> bytes:
        return await next(s for s in sources if s is source).request(source)

    return await planner.serve(list(sources), kind, ask, what="test")


def test_the_first_free_source_in_the_users_order_serves(tmp_path: Path):
    async def body(store: Store, sources: list[FakeSource]) -> None:
        planner = Planner(list(sources))
        assert await serve(planner, sources) == b"s0"
        # The first rests (another process spent it, say): the second serves at once.
        sources[0].rest(time.time() + 3600, "spent")
        assert await serve(planner, sources) == b"s1"
        assert (len(sources[0].asked), len(sources[1].asked)) == (1, 1)

    run(tmp_path, body, None, None)


def test_a_read_waits_for_a_source_free_before_its_deadline(tmp_path: Path):
    async def body(store: Store, sources: list[FakeSource]) -> None:
        planner = Planner(list(sources))
        free = time.time() + 0.3
        sources[0].rest(free, "Retry-After")
        with trio.fail_after(5):
            assert await serve(planner, sources) == b"s0"
        assert sources[0].asked[0] >= free  # never asked while it said to wait

    run(tmp_path, body, None)


def test_nothing_free_before_the_deadline_fails_at_once_and_says_when(tmp_path: Path):
    async def body(store: Store, sources: list[FakeSource]) -> None:
        planner = Planner(list(sources))
        free = time.time() + 60
        sources[0].rest(free, "Retry-After")
        with trio.move_on_after(5), pytest.raises(SourceLimited) as caught:
            await serve(planner, sources)
        assert caught.value.until == pytest.approx(free)
        assert time.strftime("%H:%M:%S", time.localtime(free)) in str(caught.value)
        assert sources[0].asked == []

    run(tmp_path, body, None)


def test_a_source_that_says_wait_is_asked_again_only_once_free(tmp_path: Path):
    async def body(store: Store, sources: list[FakeSource]) -> None:
        planner = Planner(list(sources))
        until = time.time() + 0.3

        def limited_once(source: FakeSource) -> bytes:
            if len(source.asked) == 1:
                raise SourceLimited("429", until)
            return b"served"

        sources[0].answer = limited_once
        with trio.fail_after(5):
            assert await serve(planner, sources) == b"served"
        assert len(sources[0].asked) == 2 and sources[0].asked[1] >= until

    run(tmp_path, body, None)


def test_a_failure_stays_with_its_source_and_its_type_is_kept(tmp_path: Path):
    async def body(store: Store, sources: list[FakeSource]) -> None:
        planner = Planner(list(sources))

        def missing(source: FakeSource) -> bytes:
            raise SourceMissing(f"{source.name}: no such set")

        sources[0].answer = missing
        assert await serve(planner, sources) == b"s1"  # the other source serves this request
        sources[1].answer = missing
        with pytest.raises(SourceMissing):
            await serve(planner, sources)
        # Failing a request never rests a source: the next request asks both again.
        sources[1].answer = lambda source: b"back"
        assert await serve(planner, sources) == b"back"
        assert (len(sources[0].asked), len(sources[1].asked)) == (3, 3)

    run(tmp_path, body, None, None)


def test_readers_go_where_the_allowance_is_and_background_leaves_them_a_share(tmp_path: Path):
    shape = Shape(limit=4, window=3600, burst=4, reserve=2)

    async def body(store: Store, sources: list[FakeSource]) -> None:
        planner = Planner(list(sources))
        metered = [sources[0]]
        with background():
            assert in_background()
            for _ in range(2):
                assert await serve(planner, metered, DOWNLOAD) == b"s0"
            # Two are left, both kept for readers: background work with a deadline (prefetch's
            # is its --fetch-timeout) does not wait the hour that frees a third.
            with trio.fail_after(5), pytest.raises(SourceLimited):
                await serve(planner, metered, DOWNLOAD)
        for _ in range(2):
            assert await serve(planner, metered, DOWNLOAD) == b"s0"
        assert len(sources[0].asked) == 4
        # Spent for an hour: a reader goes to the other source rather than wait.
        assert await serve(planner, sources, DOWNLOAD) == b"s1"

    run(tmp_path, body, shape, None)


def test_a_crowd_of_reads_spreads_over_the_sources_free_for_it(tmp_path: Path):
    shape = Shape(limit=3, window=3600, burst=3, reserve=0)

    async def body(store: Store, sources: list[FakeSource]) -> None:
        planner = Planner(list(sources))
        gate = trio.Event()

        async def slow(source: Source) -> bytes:
            fake = next(s for s in sources if s is source)
            await fake._pace(fake.allowance)
            fake.asked.append(time.time())
            await gate.wait()
            return fake.name.encode()

        answers: list[bytes] = []

        async def one() -> None:
            answers.append(await planner.serve(list(sources), OSU, slow, what="crowd"))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
            await trio.sleep(0.2)
            gate.set()
        # Three were promised to the metered source before any was answered: the rest went on.
        assert sorted(answers) == [b"s0"] * 3 + [b"s1"] * 3

    run(tmp_path, body, shape, None)


def test_a_reader_joining_background_work_makes_it_a_readers(tmp_path: Path):
    async def body(store: Store, sources: list[FakeSource]) -> None:
        seen: list[bool] = []
        started, go = trio.Event(), trio.Event()

        async def fetch() -> str:
            started.set()
            await go.wait()
            seen.append(in_background())
            return "listing"

        async def ahead(flights: Flights) -> None:
            with background(patient=False):
                await flights.run("set", fetch)

        async with trio.open_nursery() as nursery:
            flights = Flights(nursery, 10.0)
            nursery.start_soon(ahead, flights)
            await started.wait()
            nursery.start_soon(_set_later, go)
            assert await flights.run("set", fetch) == "listing"  # a reader joins it
        assert seen == [False]

    run(tmp_path, body)


async def _set_later(event: trio.Event) -> None:
    await trio.sleep(0.05)
    event.set()


def test_a_reader_reruns_what_reading_ahead_gave_up(tmp_path: Path):
    async def body(store: Store, sources: list[FakeSource]) -> None:
        calls: list[bool] = []

        async def fetch() -> str:
            calls.append(in_background())
            if in_background():
                raise OsufsError.io("not read ahead: the sources are busy")
            return "listing"

        async with trio.open_nursery() as nursery:
            flights = Flights(nursery, 10.0)
            with background(patient=False), pytest.raises(OsufsError):
                await flights.run("set", fetch)
            assert await flights.run("set", fetch) == "listing"
        assert calls == [True, False]

    run(tmp_path, body)
