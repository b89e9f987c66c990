"""The mount lifecycle, in one place: everything opened in one exit stack and nursery, closed in
reverse; SIGINT and SIGTERM end the FUSE loop, which unmounts."""

from __future__ import annotations

import contextlib
import logging
import resource
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyfuse3
import trio

from osufs import __version__
from osufs.archive import Limits
from osufs.errors import OsufsError
from osufs.fs import Operations
from osufs.library import READ_AHEAD_SETS, Library
from osufs.sources import SourceSpec, build_sources
from osufs.store import Store

log = logging.getLogger(__name__)

CATALOGUE_REFRESH = 3600.0
# Access times and hit counters are written to the index in batches this often (and at the end).
USAGE_FLUSH = 30.0


@dataclass
class MountConfig:
    """How the library is reached and cached; `osufs prefetch` uses it without a mountpoint."""

    cache_dir: Path
    sources: list[SourceSpec]
    mountpoint: Path = Path()
    cookie: str | None = None
    no_video: bool = False
    fetch_timeout: float = 120.0
    offline: bool = False
    limits: Limits = field(default_factory=Limits)
    allow_other: bool = False
    read_ahead: int = READ_AHEAD_SETS
    cache_size: int | None = None  # bytes of content the cache may hold; None: no limit


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"fsname=osufs", "subtype=osufs", "ro"}
    if config.allow_other:
        options.add("allow_other")
    return options


@contextlib.asynccontextmanager
async def open_library(config: MountConfig) -> AsyncIterator[Library]:
    """The store, HTTP client, sources and library, opened together and closed in reverse."""
    with contextlib.ExitStack() as stack:
        store = Store(config.cache_dir, budget=config.cache_size)
        stack.callback(store.close)
        timeout = httpx.Timeout(config.fetch_timeout, connect=min(10.0, config.fetch_timeout))
        headers = {"User-Agent": f"osufs/{__version__}"}
        async with (
            httpx.AsyncClient(timeout=timeout, headers=headers, follow_redirects=False) as client,
            trio.open_nursery() as nursery,
        ):
            sources = [] if config.offline else build_sources(client, config)
            library = Library(
                store,
                sources,
                nursery,
                limits=config.limits,
                fetch_timeout=config.fetch_timeout,
                offline=config.offline,
                read_ahead=config.read_ahead,
            )
            nursery.start_soon(_flush_usage_forever, store)
            try:
                yield library
            finally:
                nursery.cancel_scope.cancel()


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: every open member file holds a
    descriptor, and the usual soft limit of 1024 would make the 1025th open fail with EIO."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open file limit from %d: %s", soft, error)


async def run_mount(config: MountConfig, ready: Callable[[], None] = lambda: None) -> None:
    """Mount, serve until unmounted or signalled, then unmount and close everything."""
    raise_open_file_limit()
    async with open_library(config) as library:
        if library.store.catalogue_count() == 0 and library.sources:
            # A first mount waits for the set list so the root is not empty at first sight.
            with trio.move_on_after(config.fetch_timeout):
                await library.refresh_catalogue()
        pyfuse3.init(Operations(library), str(config.mountpoint), fuse_options(config))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_terminate_on_signals)
                nursery.start_soon(_refresh_catalogue_forever, library)
                log.info("mounted %s (cache %s)", config.mountpoint, config.cache_dir)
                ready()
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
    log.info("unmounted %s", config.mountpoint)


async def _terminate_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received; unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()


async def _refresh_catalogue_forever(library: Library) -> None:
    while True:
        await trio.sleep(CATALOGUE_REFRESH)
        try:
            await library.refresh_catalogue()
        except OsufsError as error:
            log.warning("catalogue refresh failed: %s", error)


async def _flush_usage_forever(store: Store) -> None:
    """Write access times and hit counters every USAGE_FLUSH seconds; Store.close writes the
    rest."""
    while True:
        await trio.sleep(USAGE_FLUSH)
        try:
            await trio.to_thread.run_sync(store.flush_usage)
        except Exception as error:
            log.warning("could not record access times (kept for the next try): %s", error)
