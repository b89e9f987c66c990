"""One allowance per source (issue 14), below FUSE: kept in a real temporary store, shared by
processes, kept across reopening, and learned from what the source answers."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from osufs.allowance import BAN_REST, Allowance, MemoryLedger, Shape
from osufs.store import Store


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def busiest(times: list[float], window: float) -> int:
    """The most requests in any `window` seconds."""
    ordered = sorted(times)
    return max(sum(1 for t in ordered if start <= t < start + window) for start in ordered)


def test_a_burst_then_the_full_rate_and_never_more_than_the_limit_in_a_window():
    clock = FakeClock()
    allowance = Allowance("mirror", Shape.per_minute(60, burst=10), clock=clock)
    granted: list[float] = []
    for _ in range(10 * 600):  # a scan asking all it can, ten times a second, for ten minutes
        while allowance.take() == 0.0:
            granted.append(clock.now)
        clock.now += 0.1
    assert granted[:10] == [granted[0]] * 10  # the burst at once
    assert busiest(granted, 60.0) <= 60
    assert len(granted) >= 10 * 60 - 15, "the scan ran slower than the source allows"


def test_free_at_says_when_and_take_spends_only_when_free():
    clock = FakeClock()
    allowance = Allowance("api", Shape(30, 30.0, 3, reserve=1), clock=clock)  # 1 a second
    assert allowance.free_at() <= clock.now  # now
    assert [allowance.take() for _ in range(3)] == [0.0] * 3
    free = allowance.free_at()
    assert free == pytest.approx(clock.now + 1.0)
    assert allowance.take() == pytest.approx(free)  # refused: nothing was spent
    clock.now = free
    assert allowance.take() == 0.0


def test_background_work_leaves_the_reserve_to_readers():
    clock = FakeClock()
    allowance = Allowance("api", Shape(60, 60.0, 10, reserve=5), clock=clock)
    assert [allowance.take(background=True) for _ in range(5)] == [0.0] * 5
    assert allowance.take(background=True) > clock.now  # five stay for readers
    assert [allowance.take() for _ in range(5)] == [0.0] * 5  # who still get them
    assert allowance.take() > clock.now


def test_the_window_holds_even_when_the_bucket_would_allow_more():
    clock = FakeClock()
    allowance = Allowance("site", Shape(5, 100.0, 5, refill=1.0), clock=clock)
    assert [allowance.take() for _ in range(5)] == [0.0] * 5
    clock.now += 50  # the bucket is full again, the window is not
    assert allowance.take() >= clock.now + 50


def test_a_weighted_request_costs_its_weight():
    clock = FakeClock()
    allowance = Allowance("mino", Shape(10, 60.0, 10, reserve=0), clock=clock)
    assert allowance.take(4.0) == 0.0 and allowance.take(4.0) == 0.0
    assert allowance.take(4.0) > clock.now and allowance.take(2.0) == 0.0


def test_a_generous_limit_keeps_the_record_small_and_the_limit_held():
    clock = FakeClock()
    allowance = Allowance("api", Shape(2000, 60.0, 2000, reserve=0), clock=clock)
    granted = 0
    while allowance.take() == 0.0:
        granted += 1
        clock.now += 0.001
    assert granted == 2000
    record = allowance.ledger.allowance_get("api")
    assert record is not None and len(record) < 8192


def test_a_request_not_counted_is_given_back():
    clock = FakeClock()
    allowance = Allowance("site", Shape(2, 3600.0, 2), clock=clock)
    assert allowance.take() == 0.0
    allowance.give_back()
    assert [allowance.take() for _ in range(2)] == [0.0, 0.0]
    assert allowance.take() > clock.now


def test_the_state_survives_reopening_the_store(tmp_path: Path):
    shape = Shape(10, 600.0, 10)
    store = Store(tmp_path / "cache")
    first = Allowance("catboy https://catboy.best", shape, ledger=store)
    assert [first.take() for _ in range(10)] == [0.0] * 10
    first.rest(time.time() + 30, "it answered 429 (rate limited)")
    store.close()

    store = Store(tmp_path / "cache")
    try:
        again = Allowance("catboy https://catboy.best", shape, ledger=store)
        assert again.rested_until > time.time() + 25
        assert again.rest_reason == "it answered 429 (rate limited)"
        assert again.take() > time.time() + 25
        other = Allowance("osudirect https://osu.direct", shape, ledger=store)
        assert other.take() == 0.0, "another source's allowance was spent"
    finally:
        store.close()


def _spend(cache: str, window: float, seconds: float, out: str) -> None:
    """One process: take from the shared allowance as fast as it lets, for `seconds`."""
    store = Store(Path(cache))
    allowance = Allowance("mirror http://127.0.0.1:1", Shape(10, window, 4), ledger=store)
    granted: list[float] = []
    end = time.time() + seconds
    while time.time() < end:
        free = allowance.take()
        if free == 0.0:
            granted.append(time.time())
        else:
            time.sleep(min(max(free - time.time(), 0.0), 0.05))
    store.close()
    Path(out).write_text("\n".join(map(repr, granted)))


def test_two_processes_on_one_store_never_exceed_the_allowance_together(tmp_path: Path):
    Store(tmp_path / "cache").close()
    window, seconds = 1.0, 4.0
    context = multiprocessing.get_context("spawn")
    outs = [tmp_path / f"granted-{n}" for n in range(2)]
    workers = [
        context.Process(target=_spend, args=(str(tmp_path / "cache"), window, seconds, str(out)))
        for out in outs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    each = [[float(line) for line in out.read_text().split()] for out in outs]
    assert all(each), "a process never got a request through"
    together = each[0] + each[1]
    assert busiest(together, window) <= 10
    # Together they ran at the allowance's rate, not twice it, nor much below it.
    assert 10 * seconds / window * 0.6 <= len(together) <= 10 * (seconds / window + 1.5)


# learning from answers


def test_fewer_left_than_counted_is_held_as_spent_until_the_reset():
    clock = FakeClock()
    allowance = Allowance("mino", Shape(60, 60.0, 10, reserve=0), clock=clock)
    assert allowance.take() == 0.0
    # Another client on this address spent most of the minute: 2 left, reset in 20 s.
    allowance.learn({"x-ratelimit-remaining": "2", "x-ratelimit-reset": "20"}, 200)
    assert [allowance.take() for _ in range(2)] == [0.0, 0.0]
    assert allowance.take() == pytest.approx(clock.now + 20, abs=0.01)
    # More left than counted never frees anything.
    allowance.learn({"x-ratelimit-remaining": "50", "x-ratelimit-reset": "20"}, 200)
    assert allowance.take() > clock.now


def test_nothing_left_without_a_reset_holds_the_window_spent():
    clock = FakeClock()
    allowance = Allowance("api", Shape(60, 60.0, 10), clock=clock)
    allowance.learn({"x-ratelimit-remaining": "0"}, 200)  # osu-web's throttle: no reset
    assert allowance.rested_until == 0.0
    assert allowance.free_at() == pytest.approx(clock.now + Shape(60, 60.0, 10).span)


def test_nothing_left_or_a_spent_day_rests_the_source():
    clock = FakeClock()
    allowance = Allowance("mino", Shape.per_minute(60), clock=clock)
    allowance.learn({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "7"}, 200)
    assert allowance.rested_until == clock.now + 7 and "spent" in allowance.rest_reason
    allowance.learn({"x-daily-remaining": "0", "x-ratelimit-daily-reset": "5000"}, 200)
    assert allowance.rested_until == clock.now + 5000
    assert allowance.rest_reason == "its daily allowance is spent"
    assert allowance.free_at() == clock.now + 5000


def test_a_429_rests_until_its_retry_after_and_a_bare_429_for_the_default():
    clock = FakeClock()
    told = Allowance("api", Shape.per_minute(60), clock=clock)
    assert told.learn({"retry-after": "2"}, 429) == clock.now + 2
    assert told.take() == clock.now + 2, "asked again while told to wait"
    bare = Allowance("site", Shape(180, 3600.0, 60), default_rest=600.0, clock=clock)
    assert bare.learn({}, 429) == clock.now + 600  # osu-web's 429 says nothing more
    assert "without a Retry-After" in bare.rest_reason
    unmetered = Allowance("nerinyan", None, clock=clock)
    assert unmetered.take() == 0.0
    unmetered.learn({"retry-after": "30"}, 503)
    assert unmetered.take() == clock.now + 30


def test_a_418_rests_the_mirror_for_at_least_an_hour(caplog: pytest.LogCaptureFixture):
    clock = FakeClock()
    allowance = Allowance("mino", Shape.per_minute(60), label="catboy mino", clock=clock)
    assert allowance.learn({"retry-after": "10"}, 418) == clock.now + BAN_REST
    assert allowance.learn({"retry-after": str(2 * 3600)}, 418) == clock.now + 2 * 3600
    assert caplog.text.count("banned this address") == 1, "a rest is told once"


def test_a_rest_is_shared_through_the_ledger():
    ledger = MemoryLedger()
    mount = Allowance("catboy https://catboy.best", Shape.per_minute(60), ledger=ledger)
    prefetch = Allowance("catboy https://catboy.best", Shape.per_minute(60), ledger=ledger)
    mount.learn({"retry-after": "5"}, 429)
    assert prefetch.take() > time.time() + 4


def test_a_source_says_when_each_kind_of_request_could_go():
    import httpx

    from osufs.sources.mino import MinoSource

    # Nothing is sent: the allowance is asked and spent directly.
    source = MinoSource(httpx.AsyncClient(), "https://catboy.best", name="catboy", per_minute=60)
    assert source.request_kind("https://catboy.best/d/12n") == "download"
    assert source.request_kind("https://catboy.best/osu/34") == "osu"
    assert source.request_kind("https://catboy.best/api/v2/s/12") == "set"
    assert source.request_kind("https://catboy.best/api/v2/search?query=") == "search"
    assert source.free_at("osu") <= time.time()
    for _ in range(10):
        assert source.allowance.take(source.cost("download")) == 0.0
    assert source.free_at("osu") > time.time()  # the burst is spent, whatever the kind
    assert source.free_at("osu", background=True) > source.free_at("osu")

