"""The mount lifecycle, in one place: everything opened in one exit stack and nursery, closed in
reverse; SIGINT and SIGTERM end the FUSE loop, which unmounts.

With a writable layer the library is mounted read-only at a private lower directory and an
overlay (osufs/overlay/: the kernel's overlayfs or fuse-overlayfs) at the mountpoint; the overlay
goes first, then the lower mount, whether the stop comes from a signal or from someone unmounting
the overlay."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyfuse3
import trio

from osufs import __version__, overlay, tls
from osufs.archive import Limits
from osufs.errors import OsufsError
from osufs.fs import Operations, mode_line
from osufs.library import READ_AHEAD_SETS, Library
from osufs.overlay import LowerOperations, OverlayError, Writable
from osufs.preflight import log_findings, preflight
from osufs.sources import SourceSpec, build_sources
from osufs.store import Store
from osufs.tier.shared import SharedTier, TierSettings, open_tier

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
    min_free_space: float | None = None  # share of the cache's disk kept free; None: the last
    writable: Path | None = None  # the writable layer's folder; None: a read-only mount
    overlay: str = "auto"  # the writable layer's engine: overlay.ENGINES
    # The osu! API (osuapi=URL): its OAuth client, and which sets it lists (docs/sources.md).
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    catalogue: str | None = None  # ranked, loved, all, none; None: ranked, or none with a file
    catalogue_query: str = ""
    catalogue_file: Path | None = None  # set ids; the root then lists exactly those
    api_per_minute: float | None = None  # the API's and /osu/'s allowance a minute; None: 60
    mirror_per_minute: float | None = None  # Mino's and osu.direct's a minute; None: 60
    shared: TierSettings | None = None  # the shared tier (--shared); None: none


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options |= {"subtype=osufs", "ro"}
    if config.writable is None:
        options.add("fsname=osufs")
        if config.allow_other:
            options.add("allow_other")
    else:
        # The lower layer: only the overlay reads it, as the user who mounted both.
        options.add(f"fsname={overlay.lower_fsname(config.mountpoint)}")
    return options


@contextlib.asynccontextmanager
async def open_library(config: MountConfig) -> AsyncIterator[Library]:
    """The store, HTTP client, sources and library, opened together and closed in reverse."""
    with contextlib.ExitStack() as stack:
        store = Store(config.cache_dir, budget=config.cache_size, keep_free=config.min_free_space)
        stack.callback(store.close)
        timeout = httpx.Timeout(config.fetch_timeout, connect=min(10.0, config.fetch_timeout))
        headers = {"User-Agent": f"osufs/{__version__}"}
        async with (
            httpx.AsyncClient(
                verify=tls.context(), timeout=timeout, headers=headers, follow_redirects=False
            ) as client,
            _shared_tier(config) as shared,
            trio.open_nursery() as nursery,
        ):
            # Offline, only local sources (online.db) are built.
            sources = build_sources(client, config, store.osu_bytes, ledger=store)
            for source in sources:
                stack.callback(source.close)
                await source.prepare()
            library = Library(
                store,
                sources,
                nursery,
                limits=config.limits,
                fetch_timeout=config.fetch_timeout,
                offline=config.offline,
                read_ahead=config.read_ahead,
                catalogue_file=config.catalogue_file,
                shared=shared,
            )
            nursery.start_soon(_flush_usage_forever, store)
            try:
                yield library
                await library.close()
            finally:
                nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _shared_tier(config: MountConfig) -> AsyncIterator[SharedTier | None]:
    """The shared tier of --shared, or None; never opened offline."""
    if config.shared is None or config.offline:
        yield None
        return
    async with open_tier(config.shared) as tier:
        yield tier


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


def mount_owner() -> tuple[int, int]:
    """Whose the files are: the user who ran `sudo osufs mount`, since the mount is for them
    (a root-mounted kernel overlay is otherwise of no use to an osu! run as a desktop user);
    else this process's user."""
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if os.geteuid() == 0 and uid.isdigit() and gid.isdigit():
        return int(uid), int(gid)
    return os.getuid(), os.getgid()


async def run_mount(
    config: MountConfig,
    ready: Callable[[], None] = lambda: None,
    told: Callable[[list[str]], None] = lambda lines: None,
) -> None:
    """Mount, serve until unmounted or signalled, then unmount and close everything. Before
    it is ready, the preflight's lines (what is wrong with each source) are logged and `told`.

    Raises OverlayError when the writable layer cannot start (after undoing the rest)."""
    raise_open_file_limit()
    owner = mount_owner()
    if owner != (os.getuid(), os.getgid()):
        log.info("files are shown as owned by uid %d, gid %d (who ran sudo)", *owner)
    layer = None
    if config.writable is not None:
        layout = overlay.plan(config.mountpoint, config.writable)
        overlay.clear_stale(layout)
        layer = Writable(layout, engine=config.overlay, allow_other=config.allow_other, owner=owner)
    failures: list[OverlayError] = []
    async with open_library(config) as library:
        findings = await preflight(library.sources)
        told(log_findings(findings))
        # A catalogue file's root is whole from the first look: its names come first.
        await library.catalogue.name_file_sets()
        if library.catalogue_count() == 0 and any(f.ok for f in findings):
            # A first mount waits for the set list so the root is not empty at first sight
            # (not when no source answered the preflight: the list comes in the background).
            with trio.move_on_after(config.fetch_timeout):
                await library.refresh_catalogue()
        if layer is None:
            operations, target = Operations(library, owner), config.mountpoint
        else:
            operations, target = LowerOperations(library, owner), layer.layout.lower
        log.info("%s", mode_line(operations.supports_no_open))
        pyfuse3.init(operations, str(target), fuse_options(config))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(operations.housekeeping)
                stop = pyfuse3.terminate if layer is None else layer.terminate
                nursery.start_soon(_terminate_on_signals, stop)
                nursery.start_soon(_refresh_catalogue_forever, library)
                if layer is None:
                    log.info("mounted %s (cache %s)", config.mountpoint, config.cache_dir)
                    ready()
                else:
                    # The overlay reads the lower mount as it starts, so it runs beside it.
                    nursery.start_soon(_run_overlay, layer, ready, failures)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            pyfuse3.close(unmount=True)
            if layer is not None:
                with contextlib.suppress(OSError):
                    layer.layout.lower.rmdir()  # an empty private directory; gone when unused
    log.info("unmounted %s", target)
    if failures:
        raise failures[0]


async def _run_overlay(
    layer: Writable, ready: Callable[[], None], failures: list[OverlayError]
) -> None:
    """The overlay for as long as it is mounted; then the lower mount ends too."""
    try:
        await layer.run(ready)
    except OverlayError as error:
        log.error("%s", error)
        failures.append(error)
    finally:
        pyfuse3.terminate()


async def _terminate_on_signals(stop: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received; unmounting", signal.Signals(signum).name)
            stop()


async def _refresh_catalogue_forever(library: Library) -> None:
    await library.resume_catalogue()  # an unfinished paged sync goes on; listed sets get names
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
