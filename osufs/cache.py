"""`osufs cache ...`: looking after the cache directory (see docs/cache.md), and cache sizes.

Every command opens the store as a mount does, so it is safe to run beside live mounts: the
index is LMDB (many processes, one writer at a time) and file changes hold content.lock.
The commands that draw tables and progress bars import rich themselves: `osufs mount` imports
this module, and rich would be a tenth of its start.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from osufs import tls
from osufs.errors import OsufsError
from osufs.space import SpaceBound
from osufs.store import Store, StoreError

if TYPE_CHECKING:
    from osufs.prefetch import SetIds

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """Bytes from `20G`, `512M`, `1.5GiB`, `100000`: suffixes are powers of 1024, as in du."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (try 20G, 512M or a number of bytes)")
    number, unit, _ = match.groups()
    return int(float(number) * 1024 ** _UNITS[unit.lower()])


def format_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def share_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A click callback for --min-free-space: a share of the disk like `10%`."""
    if value is None:
        return None
    number = value.strip().removesuffix("%")
    try:
        share = float(number) / 100
    except ValueError:
        share = -1.0
    if not value.strip().endswith("%") or not 0 <= share < 1:
        raise click.BadParameter(f"{value!r} is not a share of the disk like 10% (0% to 99%)")
    return share


def size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A click callback for --cache-size."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _default_cache_dir() -> Path:
    from osufs.cli import default_cache_dir  # the cli imports this module

    return default_cache_dir()


def _cache_dir_option(command: Callable[..., None]) -> Callable[..., None]:
    return click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="The cache directory (default: the one `osufs mount` uses).",
    )(command)


@contextmanager
def _open(cache_dir: Path | None) -> Iterator[Store]:
    root = cache_dir or _default_cache_dir()
    if not (root / "index").is_dir():
        raise click.ClickException(f"no cache at {root}")
    try:
        store = Store(root)
    except StoreError as error:
        raise click.ClickException(str(error)) from None
    try:
        yield store
    finally:
        store.close()


def _ids(specs: tuple[str, ...]) -> SetIds:
    from osufs.prefetch import parse_ids

    try:
        return parse_ids(specs)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="IDS") from None


@click.group()
def cache() -> None:
    """Inspect and look after the cache."""


@cache.command()
@_cache_dir_option
def stats(cache_dir: Path | None) -> None:
    """Sets, members, bytes, dedup savings and hit rate."""
    from rich.console import Console
    from rich.table import Table

    with _open(cache_dir) as store:
        s = store.stats()
        bound = store.space(budget=s.budget)
        root = store.root
    rate = "no opens recorded" if s.hit_rate is None else f"{s.hit_rate:.1%}"
    budget = "unlimited" if s.budget is None else format_size(s.budget)
    saving = s.dedup_saving / s.logical_bytes if s.logical_bytes else 0.0
    table = Table(show_header=False, box=None, title=str(root), title_justify="left")
    rows: list[tuple[str, Any]] = [
        ("sets cached", f"{s.sets} of {s.listed_sets} listed ({s.listings} with a known tree)"),
        ("members cached", s.members),
        ("members' bytes", f"{format_size(s.logical_bytes)} ({s.logical_bytes} B)"),
        (
            "stored bytes",
            f"{format_size(s.stored_bytes)} ({s.stored_bytes} B) in {s.content_files} files",
        ),
        (
            "dedup saving",
            f"{format_size(s.dedup_saving)} ({s.dedup_saving} B, {saving:.1%} of members' bytes)",
        ),
        ("budget (last mount)", budget),
        ("free-space bound (last mount)", describe_free_space(bound)),
        ("bound in force", describe_bound(bound)),
        ("pinned sets", s.pinned),
        ("hit rate", f"{rate} ({s.hits} hits, {s.misses} misses)"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    Console().print(table)


def describe_free_space(bound: SpaceBound) -> str:
    return (
        f"keeps {bound.fraction:.0%} of the disk free ({format_size(bound.keep_free)} of "
        f"{format_size(bound.fs_size)}); {format_size(bound.fs_free)} free now"
    )


def describe_bound(bound: SpaceBound) -> str:
    """The most the cache may hold now, and which bound says so."""
    return (
        f"at most {format_size(bound.limit)} ({bound.first} comes first): room for "
        f"{format_size(bound.room)} more"
    )


@cache.command(name="ls")
@_cache_dir_option
@click.option(
    "--sort",
    type=click.Choice(["id", "recent", "size"]),
    default="id",
    show_default=True,
    help="recent: most recently used first, as eviction sees them (it takes the last first).",
)
def list_sets(cache_dir: Path | None, sort: str) -> None:
    """The cached sets: members, bytes, bytes evicting frees, last use, pins."""
    with _open(cache_dir) as store:
        rows = store.cached_sets()
        names = {row.set_id: store.catalogue_get(row.set_id) for row in rows}
    if sort == "recent":
        rows.sort(key=lambda row: row.last_access_ns, reverse=True)
    elif sort == "size":
        rows.sort(key=lambda row: row.size, reverse=True)
    from rich.console import Console
    from rich.table import Table

    table = Table("set", "folder", "members", "size", "own", "last used", "pinned")
    for row in rows:
        record = names[row.set_id]
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.last_access_ns / 1e9))
        table.add_row(
            str(row.set_id),
            record.folder if record else "",
            str(row.members),
            format_size(row.size),
            format_size(row.own_size),
            used if row.last_access_ns else "",
            "yes" if row.pinned else "",
        )
    Console().print(table)
    click.echo(f"{len(rows)} sets")


@cache.command()
@click.argument("ids", nargs=-1, required=True)
@_cache_dir_option
def pin(ids: tuple[str, ...], cache_dir: Path | None) -> None:
    """Keep sets IDS (ids or ranges like 1-500) through any eviction; it does not fetch them."""
    wanted = _ids(ids)
    with _open(cache_dir) as store:
        store.pin(wanted)
    click.echo(f"{len(wanted)} sets pinned")


@cache.command()
@click.argument("ids", nargs=-1, required=True)
@_cache_dir_option
def unpin(ids: tuple[str, ...], cache_dir: Path | None) -> None:
    """Let sets IDS be evicted again."""
    wanted = _ids(ids)
    with _open(cache_dir) as store:
        store.unpin(wanted)
    click.echo(f"{len(wanted)} sets unpinned")


@cache.command()
@click.argument("ids", nargs=-1, required=True)
@_cache_dir_option
def evict(ids: tuple[str, ...], cache_dir: Path | None) -> None:
    """Drop the cached members of sets IDS (their listings stay; pinned sets are kept)."""
    with _open(cache_dir) as store:
        report = store.evict(_ids(ids))
    click.echo(f"{len(report.evicted)} sets evicted, {format_size(report.bytes_freed)} freed")
    if report.pinned:
        click.echo(f"pinned, kept (unpin them first): {_id_list(report.pinned)}")
    if report.not_cached:
        click.echo(f"not cached: {_id_list(report.not_cached)}")


@cache.command()
@_cache_dir_option
def verify(cache_dir: Path | None) -> None:
    """Re-hash every content file; drop and report members whose content is damaged or gone."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with _open(cache_dir) as store:
        total = store.content_bytes()
        columns = (TextColumn("verifying"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=True) as progress:
            task = progress.add_task("verify", total=total)
            report = store.verify(lambda n: progress.advance(task, n))
        lines = []
        for damage in report.damaged:
            listing = store.listing_get_uncached(damage.set_id)
            name = listing.path(damage.entry) if listing is not None else f"#{damage.entry}"
            lines.append(f"damaged: set {damage.set_id}: {name}: {damage.reason}")
        for set_id, entry in report.dangling:
            lines.append(f"dangling: set {set_id}: member #{entry} had no content entry")
    for line in lines:
        click.echo(line)
    click.echo(
        f"{report.files_checked} files ({format_size(report.bytes_checked)}) checked: "
        f"{len(report.damaged)} damaged, {len(report.dangling)} dangling, "
        f"{report.refs_repaired} reference counts repaired"
    )
    if report.damaged or report.dangling:
        click.echo("the members dropped are fetched again when next read")
        raise SystemExit(1)


@cache.command()
@_cache_dir_option
def gc(cache_dir: Path | None) -> None:
    """Remove content files no member refers to, and temporary files of crashed mounts."""
    with _open(cache_dir) as store:
        report = store.gc()
    click.echo(
        f"{report.files_removed} unreferenced files removed "
        f"({format_size(report.bytes_removed)}), "
        f"{report.temp_dirs_removed} orphan temporary directories removed"
    )


def _id_list(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)


@cache.command(name="import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@_cache_dir_option
@click.option(
    "--onlinedb",
    "onlinedb",
    metavar="PATH|URL",
    help="lazer's online.db to identify .osu files by md5 (a file, or a URL of its .bz2). "
    "Default: the copy `--source onlinedb` keeps in the cache, else lazer's own, else none "
    "(files are then identified by their [Metadata] ids).",
)
def import_files(paths: tuple[Path, ...], cache_dir: Path | None, onlinedb: str | None) -> None:
    """Take .osu files, the data.ppy.sh .osu tarball (.tar.bz2), .osz archives and osu!'s
    Songs folder into the cache; what is cached already is skipped."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from osufs.importer import Importer, ImportError_, ImportTally
    from osufs.sources.onlinedb import OnlineDbError

    root = cache_dir or _default_cache_dir()
    try:
        store = Store(root)
    except (StoreError, OSError) as error:
        raise click.ClickException(f"cannot use {root} as the cache: {error}") from None
    try:
        db = _import_db(root, onlinedb)
    except OnlineDbError as error:
        store.close()
        raise click.ClickException(str(error)) from None
    except OSError as error:  # no room in the cache for its copy, say
        store.close()
        raise click.ClickException(f"cannot keep online.db in {root}: {error}") from None
    columns = (
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[files]} files"),
        TimeRemainingColumn(),
    )
    interrupted: str | None = None
    importer = None
    # A write the disk has no room for ends the import with the store's own words as its error
    # line; the warning the store logs for a mount's log would say it twice.
    logging.getLogger("osufs.store").setLevel(logging.ERROR)
    try:
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("import", total=None, files=0)
            shown = [0]

            def show(tally: ImportTally) -> None:
                if tally.files - shown[0] >= 64 or tally.files == 0:
                    shown[0] = tally.files
                    progress.update(
                        task, completed=tally.read, total=tally.total, files=tally.files
                    )

            importer = Importer(store, db, show)
            try:
                importer.run(list(paths))
            except KeyboardInterrupt:
                interrupted = "interrupted; what was imported is kept: run it again to go on"
            except ImportError_ as error:
                interrupted = str(error)
            except OsufsError as error:  # the cache's disk is full, or its index fails
                interrupted = f"{error}; what was imported before is kept"
            tally = importer.tally
            progress.update(task, completed=tally.read, total=tally.total, files=tally.files)
    finally:
        if db is not None:
            db.close()
        store.close()
    for note in tally.notes:
        click.echo(note)
    click.echo(
        f"{tally.imported} imported, {tally.already} already there, {tally.unmatched} "
        f"unmatched, {tally.refused} refused"
    )
    if interrupted:
        raise click.ClickException(interrupted)


def _import_db(root: Path, location: str | None) -> Any:
    """The OnlineDb an import matches against (see --onlinedb), or None."""
    import httpx
    import trio

    from osufs import __version__
    from osufs.sources.onlinedb import OnlineDb, WorkingCopy, ensure_copy, lazer_data_folder

    copy = WorkingCopy(root)
    if location is None:
        lazer = lazer_data_folder() / "online.db"
        if copy.exists():
            return OnlineDb(copy.path)
        if not lazer.is_file():
            return None
        location = str(lazer)

    async def fetch() -> None:
        headers = {"User-Agent": f"osufs/{__version__}"}
        client = httpx.AsyncClient(verify=tls.context(), headers=headers, timeout=120.0)
        async with client:
            await ensure_copy(copy, location, client)

    trio.run(fetch)
    return OnlineDb(copy.path)
