"""The root's listing over a real index: its time is saved, so a later mount's first stat of the
root builds nothing, and a changed set list is never answered from what was saved."""

from __future__ import annotations

from array import array
from pathlib import Path

import trio

from osufs.catalogue import Catalogue
from osufs.rootdir import RootListing
from osufs.sources import Source
from osufs.store import CatalogueRecord, Store


class ListedLibrary:
    """What RootListing asks of the library, over a real Store and Catalogue; counts builds."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.builds = 0

    def catalogue_stamp(self) -> tuple[int, bytes]:
        return self.catalogue.stamp()

    def catalogue_columns(self) -> tuple[array[int], array[int], list[bytes]]:
        self.builds += 1
        return self.catalogue.columns()

    def saved_newest(self, stamp: tuple[int, bytes]) -> int | None:
        return self.catalogue.saved_newest(stamp)

    def save_newest(self, stamp: tuple[int, bytes], mtime_ns: int) -> None:
        self.catalogue.save_newest(stamp, mtime_ns)


class ListsById(Source):
    """A source that lists sets by id and names none (as online.db does)."""

    label = "ids"

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def listed_sets(self) -> list[int]:
        return self.ids


def add_sets(store: Store, times: dict[int, int]) -> None:
    store.catalogue_add(
        [(i, CatalogueRecord(f"{i} A - T", ns, "test")) for i, ns in times.items()]
    )


def root_time(store: Store, sources: list[Source], file: Path | None = None) -> tuple[int, int]:
    """What a fresh mount's first stat of the root answers, and how many builds it took."""

    async def main() -> tuple[int, int]:
        async with trio.open_nursery() as nursery:
            catalogue = Catalogue(store, sources, nursery, offline=True, catalogue_file=file)
            library = ListedLibrary(catalogue)
            newest = await RootListing(library).newest()  # type: ignore[arg-type]
            return newest, library.builds

    return trio.run(main)


def test_a_later_mount_answers_the_roots_time_without_building(tmp_path: Path):
    store = Store(tmp_path / "cache")
    try:
        add_sets(store, {1: 100, 2: 300, 3: 200})
        assert root_time(store, []) == (300, 1)
        assert root_time(store, []) == (300, 0)
        add_sets(store, {4: 400})  # a set joins: the saved time is not the root's any more
        assert root_time(store, []) == (400, 1)
        assert root_time(store, []) == (400, 0)
    finally:
        store.close()


def test_a_changed_set_list_is_built_again(tmp_path: Path):
    store = Store(tmp_path / "cache")
    try:
        add_sets(store, {1: 100, 2: 300, 3: 200})
        assert root_time(store, [ListsById([1, 2, 3])]) == (300, 1)
        # online.db downloaded again lists fewer sets; the index still holds them all.
        assert root_time(store, [ListsById([1, 3])]) == (200, 1)
        assert root_time(store, [ListsById([1, 3])]) == (200, 0)
        listed = tmp_path / "sets.txt"
        listed.write_text("1\n")
        assert root_time(store, [], listed) == (100, 1)
        assert root_time(store, [], listed) == (100, 0)
    finally:
        store.close()
