"""The mount lifecycle, in one place: everything opened in one exit stack and nursery, closed in
reverse; SIGINT and SIGTERM end the FUSE loop, which unmounts."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable
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


@dataclass
class MountConfig:
    mountpoint: Path
    cache_dir: Path
    sources: list[SourceSpec]
    cookie: str | None = None
    no_video: bool = False
    fetch_timeout: float = 120.0
    offline: bool = False
    limits: Limits = field(default_factory=Limits)
    allow_other: bool = False
    read_ahead: int = READ_AHEAD_SETS


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"fsname=osufs", "subtype=osufs", "ro"}
    if config.allow_other:
        options.add("allow_other")
    return options


async def run_mount(config: MountConfig, ready: Callable[[], None] = lambda: None) -> None:
    """Mount, serve until unmounted or signalled, then unmount and close everything."""
    with contextlib.ExitStack() as stack:
        store = Store(config.cache_dir)
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
            if store.catalogue_count() == 0 and sources:
                # A first mount waits for the set list so the root is not empty at first sight.
                with trio.move_on_after(config.fetch_timeout):
                    await library.refresh_catalogue()
            pyfuse3.init(Operations(library), str(config.mountpoint), fuse_options(config))
            try:
                nursery.start_soon(_terminate_on_signals)
                nursery.start_soon(_refresh_catalogue_forever, library)
                log.info("mounted %s (cache %s)", config.mountpoint, config.cache_dir)
                ready()
                await pyfuse3.main()
            finally:
                pyfuse3.close(unmount=True)
                nursery.cancel_scope.cancel()
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
