"""kernelcache.py's KernelListings below FUSE, over a fake library and a stand-in for the
kernel's invalidation: a request that sees a catalogue change returns only once the kernel's
copy of the root is gone, even when the index watch noticed the change first."""

from __future__ import annotations

import threading

import pyfuse3
import pytest
import trio

from osufs.kernelcache import KernelListings


class FakeLibrary:
    """A catalogue whose stamp is a counter; no listings."""

    def __init__(self) -> None:
        self.stamp = 0

    def catalogue_stamp(self) -> int:
        return self.stamp

    def listings_completed(self) -> int:
        return 0


class SlowKernel:
    """invalidate_inode that blocks its worker thread until released, as the kernel may."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.done: list[int] = []

    def invalidate_inode(self, inode: int, attr_only: bool) -> None:
        self.started.set()
        assert self.release.wait(10), "never released"
        self.done.append(inode)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> SlowKernel:
    slow = SlowKernel()
    monkeypatch.setattr(pyfuse3, "invalidate_inode", slow.invalidate_inode)
    return slow


def test_a_lookup_after_the_watch_saw_the_change_waits_for_its_invalidation(
    kernel: SlowKernel,
) -> None:
    library = FakeLibrary()
    listings = KernelListings(library, lambda set_id, index: set_id)  # type: ignore[arg-type]
    returned: list[str] = []

    async def session() -> None:
        await listings.served_root(library.stamp)  # the kernel holds the root as of stamp 0
        library.stamp = 1  # a lookup by id adds a set; its commit wakes the index watch
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listings.catalogue_changed)  # the watch, first
            await trio.to_thread.run_sync(kernel.started.wait)

            async def lookup() -> None:
                await listings.catalogue_changed()
                returned.append("lookup")

            nursery.start_soon(lookup)
            await trio.sleep(0.05)
            assert returned == [], "the lookup answered while the kernel still held the root"
            kernel.release.set()
        assert returned == ["lookup"]
        assert kernel.done == [pyfuse3.ROOT_INODE]  # one invalidation: the lookup's was not needed

    trio.run(session)


def test_an_unchanged_catalogue_invalidates_nothing(kernel: SlowKernel) -> None:
    library = FakeLibrary()
    listings = KernelListings(library, lambda set_id, index: set_id)  # type: ignore[arg-type]

    async def session() -> None:
        await listings.served_root(library.stamp)
        await listings.catalogue_changed()

    trio.run(session)
    assert kernel.done == []
