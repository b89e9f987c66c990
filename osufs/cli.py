"""The command line: mount, umount, prefetch, cache, serve, demo."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import platformdirs
import trio

from osufs import overlay
from osufs import prefetch as prefetcher
from osufs.archive import Limits
from osufs.cache import cache, share_option, size_option
from osufs.catalogue import read_catalogue_file
from osufs.config import ConfigError, default_config_path, load_config
from osufs.library import READ_AHEAD_SETS
from osufs.mount import MountConfig, run_mount
from osufs.sources import SourceSpec
from osufs.sources.onlinedb import OnlineDbError
from osufs.store import StoreError
from osufs.tier.s3 import CredentialsError
from osufs.tier.shared import SharedRefused, TierSettings

log = logging.getLogger("osufs")

READY_WAIT = 60.0
# The detached mount's pipe to the `osufs mount` waiting for it: NOTE lines, then READY.
NOTE = "osufs: "
READY = b"ready"


class _Redact(logging.Filter):
    """Defence in depth: a secret that reaches a log line is replaced, whatever logged it."""

    def __init__(self, secret: str, label: str = "<cookie>") -> None:
        super().__init__()
        self.secret = secret
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, self.label), None
        return True


def setup_logging(
    debug: bool,
    secret: str | None = None,
    client_secret: str | None = None,
    s3_secrets: Sequence[str] = (),
) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if secret:
        handler.addFilter(_Redact(secret))
    if client_secret:
        handler.addFilter(_Redact(client_secret, "<client secret>"))
    for s3_secret in s3_secrets:
        handler.addFilter(_Redact(s3_secret, "<s3 credential>"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    # botocore logs each canonical request and signature at debug level: never wanted.
    for noisy in ("httpx", "httpcore", "hpack", "hypercorn.access", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _private_text(path: Path, what: str) -> str:
    """A secret file's text; refused when other users can read it."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise click.UsageError(f"{path} can be read by other users; {what}. Run: chmod 600 {path}")
    return path.read_text()


def read_cookie(cookie_file: Path | None) -> str | None:
    """The site's session cookie, from an owner-only file or OSUFS_COOKIE; never from argv."""
    if cookie_file is None:
        return os.environ.get("OSUFS_COOKIE", "").strip() or None
    text = _private_text(cookie_file, "the cookie is your osu! login").strip()
    return text.removeprefix("Cookie:").strip() or None


def read_client(client_file: Path | None) -> tuple[str, str] | None:
    """The osu! API's OAuth client id and secret: `client_id=...` and `client_secret=...` lines
    in an owner-only file, or OSUFS_CLIENT_ID and OSUFS_CLIENT_SECRET; never from argv."""
    if client_file is None:
        found = {
            "client_id": os.environ.get("OSUFS_CLIENT_ID", ""),
            "client_secret": os.environ.get("OSUFS_CLIENT_SECRET", ""),
        }
    else:
        text = _private_text(client_file, "the client secret is your OAuth application's key")
        found = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in ("client_id", "client_secret"):
                found[key.strip()] = value.strip().strip("'\"")
    client_id = found.get("client_id", "").strip()
    secret = found.get("client_secret", "").strip()
    if client_file is not None and not (client_id and secret):
        raise click.UsageError(f"{client_file} needs client_id=... and client_secret=... lines")
    return (client_id, secret) if client_id and secret else None


def _check_client_file(ctx: click.Context, param: click.Parameter, value: Path | None):
    read_client(value)  # refuse a readable or incomplete file before anything starts
    return value


def _check_catalogue_file(ctx: click.Context, param: click.Parameter, value: Path | None):
    if value is not None:
        try:
            read_catalogue_file(value)
        except (OSError, ValueError) as error:
            raise click.BadParameter(str(error)) from None
    return value


def default_cache_dir() -> Path:
    return platformdirs.user_cache_path("osufs")


def usable_cache_dir(cache_dir: Path | None) -> Path:
    """The cache directory, created if need be; a Mistake when it cannot be."""
    cache_dir = cache_dir or default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Mistake(f"cannot use {cache_dir} as the cache: {error.strerror}") from None
    return cache_dir


class Mistake(click.ClickException):
    """A command-line mistake the user can fix: one line on stderr and exit code 2."""

    exit_code = 2


class OneLineGroup(click.Group):
    """Every error is one line on stderr, "Error: ...", never a usage block or a traceback:
    exit code 2 for what was typed wrong, the error's own code for the rest."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.Abort:
            click.echo("Error: interrupted", err=True)
            sys.exit(1)
        except click.ClickException as error:
            code = 2 if isinstance(error, click.UsageError) else error.exit_code
            text = " ".join(error.format_message().split())
            if isinstance(error, click.UsageError) and error.ctx is not None:
                text += f" (see {error.ctx.command_path} --help)"
            click.echo(f"Error: {text}", err=True)
            sys.exit(code)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=OneLineGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"TOML settings; flags override them. [default: {default_config_path()}]",
)
@click.version_option(package_name="osufs")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Mount the osu! beatmap library as a lazy FUSE filesystem."""
    ctx.obj = {"config_path": config_path or default_config_path(), "config_error": None}
    doctoring = ctx.invoked_subcommand == "doctor"  # it reports a bad config as a check
    if config_path is not None and not config_path.is_file():
        if not doctoring:
            raise click.UsageError(f"no config file at {config_path}")
        ctx.obj["config_error"] = f"no config file at {config_path}"
    try:
        settings = load_config(config_path or default_config_path())
    except ConfigError as error:
        if not doctoring:
            raise click.UsageError(str(error)) from None
        settings, ctx.obj["config_error"] = {}, str(error)
    # Each command takes the keys it has options for; click ignores the rest.
    ctx.default_map = {name: settings for name in main.commands}


main.add_command(cache)


def _parse_sources(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]):
    specs = []
    for value in values:
        try:
            spec = SourceSpec.parse(value)
        except ValueError as error:
            raise click.BadParameter(str(error)) from None
        parts = urlsplit(spec.url)
        # onlinedb also takes a local file (or, with no value, lazer's own copy).
        local_file = spec.kind == "onlinedb" and "://" not in spec.url
        if not local_file and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise click.BadParameter(
                f"{value!r}: {spec.url!r} is not an http:// or https:// URL with a host"
            )
        specs.append(spec)
    return specs


LIBRARY_OPTIONS = [
    click.option(
        "--source",
        "sources",
        multiple=True,
        callback=_parse_sources,
        help="kind=URL, tried in the order given: hexide=URL (a Hexide mirror), osu=URL (the "
        "official site; needs the cookie), url=TEMPLATE (a plain mirror: {id} is the set id, "
        "{novideo:TEXT} or {novideo:TEXT|ELSE} is TEXT with --no-video and ELSE, or nothing, "
        "without; e.g. url=https://catboy.best/d/{id}{novideo:n}); catboy, nerinyan, osudirect, "
        "sayobot (mirrors by name; NAME=URL for another host of the same mirror); osuapi (the "
        "osu! API at https://osu.ppy.sh: names, the set list, .osu files; no archives). "
        "See docs/sources.md.",
    ),
    click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where fetched files and the index are kept. [default: "
        f"{platformdirs.user_cache_path('osufs')}]",
    ),
    click.option(
        "--cache-size",
        callback=size_option,
        help="Most bytes of content the cache keeps (like 20G); least recently used sets go "
        "first. Default: no limit (the free space kept bounds it).",
    ),
    click.option(
        "--min-free-space",
        callback=share_option,
        help="Share of the cache's disk that always stays free (like 10%): a write that would "
        "cut into it evicts first, or fails with ENOSPC. Whichever of this and --cache-size "
        "comes first applies. [default: the last mount's, else 10%]",
    ),
    click.option(
        "--cookie-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="File holding the osu! session cookie (mode 600). Or set OSUFS_COOKIE.",
    ),
    click.option(
        "--client-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        callback=_check_client_file,
        help="File (mode 600) with client_id=... and client_secret=... lines: the OAuth client "
        "the osuapi source uses. Or set OSUFS_CLIENT_ID and OSUFS_CLIENT_SECRET.",
    ),
    click.option(
        "--catalogue",
        type=click.Choice(["ranked", "loved", "all", "none"]),
        help="Which sets the osuapi source lists at the root: ranked (and approved), loved, all "
        "(graveyard too: many hours to sync), none. [default: ranked; none with "
        "--catalogue-file]",
    ),
    click.option(
        "--catalogue-query",
        help="Search text the osuapi set list must match (the site's search syntax, e.g. "
        "'artist=camellia').",
    ),
    click.option(
        "--catalogue-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        callback=_check_catalogue_file,
        help="Set ids, one a line (# comments): the root lists exactly these.",
    ),
    click.option(
        "--api-per-minute",
        type=click.FloatRange(min=0, min_open=True),
        help="Requests the osuapi source sends in any minute, to the API and /osu/ together "
        "(10 at once at most), shared by every osufs on the cache directory. Raise it only for "
        "a service that allows more (a private API-compatible one): the osu! API asks for at "
        "most 60. [default: 60]",
    ),
    click.option(
        "--mirror-per-minute",
        type=click.FloatRange(min=0, min_open=True),
        help="Requests the catboy and osudirect sources send in any minute, every endpoint "
        "together (10 at once at most), shared by every osufs on the cache directory. Mino "
        "allows 60 and bans a client that goes on past its 429s; raise it only for a mirror "
        "that allows more. [default: 60]",
    ),
    click.option(
        "--no-video",
        is_flag=True,
        help="Ask sources for archives without video: /download/novid (hexide), ?noVideo=1 "
        "(osu), the {novideo:...} part of a url= template.",
    ),
    click.option(
        "--fetch-timeout",
        type=click.FloatRange(min=1),
        default=120.0,
        show_default=True,
        help="Seconds a read may wait for the network before it fails with EIO; a source "
        "silent for half the time left (30 s at most) is passed over for the next.",
    ),
    click.option(
        "--max-member-size",
        callback=size_option,
        help="Largest file a set may hold (like 512M); a larger one fails with EFBIG, "
        "unread. [default: 512M]",
    ),
    click.option(
        "--max-ratio",
        type=click.IntRange(min=1),
        help="Highest compression ratio of a file over 4 MiB; a higher one is taken for a "
        "zip bomb and fails with EFBIG, unread. [default: 200]",
    ),
    click.option(
        "--shared",
        metavar="s3://BUCKET[/PREFIX]",
        help="A bucket shared by a group's mounts: looked in (ranged GETs, every object "
        "checked against its hash) before any source is asked, and given what this mount "
        "fetched. Credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE in "
        "~/.aws/credentials, or --s3-credentials-file; the region: AWS_REGION.",
    ),
    click.option(
        "--s3-endpoint",
        metavar="URL",
        help="The S3 service of --shared when it is not AWS (Ceph RGW, MinIO, R2, B2), "
        "addressed path-style: like http://127.0.0.1:7480.",
    ),
    click.option(
        "--s3-credentials-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="File (mode 600, the AWS credentials format; profile AWS_PROFILE or default) with "
        "the keys of --shared.",
    ),
    click.option("--debug", is_flag=True, help="Log every step, not only what matters."),
]


def library_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options every command that reaches the sources and the cache shares."""
    for option in reversed(LIBRARY_OPTIONS):
        command = option(command)
    return command


def library_config(
    sources: list[SourceSpec],
    cache_dir: Path | None,
    cookie_file: Path | None,
    no_video: bool,
    fetch_timeout: float,
    debug: bool,
    max_member_size: int | None = None,
    max_ratio: int | None = None,
    client_file: Path | None = None,
    shared: str | None = None,
    s3_endpoint: str | None = None,
    s3_credentials_file: Path | None = None,
    **settings: Any,
) -> MountConfig:
    """A MountConfig from the shared options, with logging set up (the secrets redacted)."""
    cookie = read_cookie(cookie_file)
    client = read_client(client_file)
    tier = shared_settings(shared, s3_endpoint, s3_credentials_file)
    setup_logging(debug, cookie, client[1] if client else None, tier.secrets() if tier else ())
    if settings.get("catalogue_query") is None:
        settings["catalogue_query"] = ""
    cache_dir = usable_cache_dir(cache_dir)
    return MountConfig(
        cache_dir=cache_dir,
        sources=sources,
        cookie=cookie,
        client_id=client[0] if client else None,
        client_secret=client[1] if client else None,
        no_video=no_video,
        fetch_timeout=fetch_timeout,
        limits=Limits().overridden(max_member_size, max_ratio),
        shared=tier,
        **settings,
    )


def shared_settings(
    shared: str | None, endpoint: str | None, credentials_file: Path | None
) -> TierSettings | None:
    """The shared tier's settings; a usage error for a bad location, endpoint or keys."""
    if shared is None:
        if endpoint or credentials_file:
            raise click.UsageError("--s3-endpoint and --s3-credentials-file need --shared")
        return None
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise click.UsageError(f"--s3-endpoint {endpoint!r} is not an http(s):// URL")
    try:
        return TierSettings.load(shared, endpoint, credentials_file)
    except (ValueError, CredentialsError) as error:
        raise click.UsageError(f"--shared: {error}") from None


MOUNT_OPTIONS = [
    click.option(
        "--offline", is_flag=True, help="Serve only what is cached; never use the network."
    ),
    click.option("--allow-other", is_flag=True, help="Let other users see the mount."),
    click.option(
        "--read-ahead",
        type=click.IntRange(min=0),
        default=READ_AHEAD_SETS,
        show_default=True,
        help="Sets whose .osu files are fetched ahead of a scan (0: off).",
    ),
    click.option(
        "--writable",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder for a writable layer: what is written, created, renamed or deleted in the "
        "mount is kept there, never in the cache or on a source.",
    ),
    click.option(
        "--overlay",
        type=click.Choice(overlay.ENGINES),
        default="auto",
        show_default=True,
        help="The writable layer's engine: kernel (the kernel's overlayfs; needs root), "
        "fuse-overlayfs (any user; needs the fuse-overlayfs package), or auto (the kernel's where "
        "it may mount, else fuse-overlayfs).",
    ),
    click.option(
        "--allow-non-empty",
        is_flag=True,
        help="Mount over a folder that holds files (they are hidden while mounted).",
    ),
]


def mount_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options `osufs mount` and `osufs doctor` share beyond the library's."""
    for option in reversed(MOUNT_OPTIONS):
        command = option(command)
    return command


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@library_options
@mount_options
@click.option("--foreground", "-f", is_flag=True, help="Stay attached; Ctrl-C unmounts.")
@click.option("--ready-fd", type=int, hidden=True)
def mount(
    mountpoint: Path,
    offline: bool,
    allow_other: bool,
    read_ahead: int,
    writable: Path | None,
    allow_non_empty: bool,
    foreground: bool,
    ready_fd: int | None,
    **options: Any,
) -> None:
    """Mount the library at MOUNTPOINT."""
    if not mountpoint.is_dir():
        raise click.UsageError(f"{mountpoint} is not a directory")
    mounted = os.path.ismount(mountpoint)
    if writable is None and mounted:
        # Linux would stack a second mount on top; nobody wants that. (With --writable,
        # clear_stale says so, or takes down the overlay a killed mount left.)
        raise click.UsageError(f"{mountpoint} is mounted already; osufs umount it first")
    if not (mounted or allow_non_empty) and _holds_files(mountpoint):
        raise click.UsageError(
            f"{mountpoint} is not empty; its files would be hidden while mounted (mount on "
            "an empty folder, or pass --allow-non-empty)"
        )
    if not options["sources"] and not offline:
        raise click.UsageError("give at least one --source (or --offline to serve the cache)")
    read_cookie(options["cookie_file"])  # refuse a readable cookie file before detaching
    shared_settings(options["shared"], options["s3_endpoint"], options["s3_credentials_file"])
    usable_cache_dir(options["cache_dir"])
    if writable is not None:
        try:  # say what is missing or wrong before detaching
            overlay.check_engine(options["overlay"])
            overlay.clear_stale(overlay.plan(mountpoint, writable))
        except overlay.OverlayError as error:
            raise click.ClickException(str(error)) from None
    if not foreground:
        _mount_in_background(mountpoint)
        return
    config = library_config(
        mountpoint=mountpoint,
        offline=offline,
        allow_other=allow_other,
        read_ahead=read_ahead,
        writable=writable,
        **options,
    )

    def told(lines: list[str]) -> None:
        if ready_fd is not None:  # the waiting `osufs mount` prints them (_mount_in_background)
            os.write(ready_fd, "".join(f"{NOTE}{line}\n" for line in lines).encode())

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, READY)
            os.close(ready_fd)

    try:
        trio.run(run_mount, config, ready, told)
    except (overlay.OverlayError, StoreError, OnlineDbError, SharedRefused) as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.argument("mountpoint", required=False, type=click.Path(file_okay=False, path_type=Path))
@library_options
@mount_options
@click.pass_context
def doctor(ctx: click.Context, mountpoint: Path | None, **options: Any) -> None:
    """Check what a mount with these options needs, one line each with the fix: FUSE, the
    cache directory, its free space and bound, the config file, and every source (the mount's
    preflight) with its allowance. Exit code 1 on a failure."""
    from osufs.doctor import Doctor

    checkup = Doctor(ctx.obj["config_path"], ctx.obj["config_error"])
    try:
        config = library_config(
            mountpoint=mountpoint or Path(),
            offline=options.pop("offline"),
            allow_other=options.pop("allow_other"),
            read_ahead=options.pop("read_ahead"),
            writable=options.pop("writable"),
            **{k: v for k, v in options.items() if k != "allow_non_empty"},
        )
    except click.ClickException as error:  # an unusable cookie or client file, cache dir
        checkup.failed("options", " ".join(error.format_message().split()))
        config = None
    # Only what goes wrong beyond the checks' own lines reaches the terminal.
    logging.getLogger().setLevel(logging.DEBUG if options["debug"] else logging.ERROR)
    if not checkup.run(config, mountpoint, allow_non_empty=options["allow_non_empty"]):
        sys.exit(1)


@main.command()
@click.argument("ids", nargs=-1, required=True)
@library_options
@click.option("--only", type=click.Choice(["osu"]), help="Only the .osu files of each set.")
@click.option("--all", "whole", is_flag=True, help="Whole sets (the default).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Sets fetched at once.",
)
def prefetch(
    ids: tuple[str, ...], only: str | None, whole: bool, concurrency: int, **options: Any
) -> None:
    """Fill the cache ahead of use: IDS are set ids and ranges like 1-5000."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    if only and whole:
        raise click.UsageError("--only osu and --all exclude each other")
    try:
        wanted = prefetcher.parse_ids(ids)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="IDS") from None
    config = library_config(**options)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[moved]}  {task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("sets", total=len(wanted), moved="0 B", rate="")
        started = time.monotonic()

        def show(tally: prefetcher.PrefetchTally) -> None:
            done = tally.fetched + tally.cached + tally.missing + tally.failed
            rate = tally.bytes / max(time.monotonic() - started, 1e-3)
            progress.update(task, completed=done, moved=_size(tally.bytes), rate=f"{_size(rate)}/s")

        try:
            tally = trio.run(
                partial(
                    prefetcher.prefetch,
                    config,
                    wanted,
                    only_osu=only == "osu",
                    concurrency=concurrency,
                    on_progress=show,
                )
            )
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; what was fetched is kept") from None
        except (StoreError, SharedRefused) as error:
            raise click.ClickException(str(error)) from None
    click.echo(
        f"{tally.fetched} fetched, {tally.cached} already cached, {tally.missing} missing, "
        f"{tally.failed} failed, {_size(tally.bytes)} moved"
    )
    if tally.failed:
        sys.exit(1)


def _holds_files(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError as error:
        raise click.UsageError(f"cannot read {folder}: {error.strerror}") from None


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _mount_in_background(mountpoint: Path) -> None:
    """Start the mount as a detached process and return once it is ready, like sshfs."""
    log_path = platformdirs.user_log_path("osufs") / "mount.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    command = [
        sys.executable,
        "-m",
        "osufs",
        *sys.argv[1:],
        "--foreground",
        "--ready-fd",
        str(write_end),
    ]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            pass_fds=(write_end,),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    os.close(write_end)
    deadline = time.monotonic() + READY_WAIT
    heard = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([read_end], [], [], 0.2)
        if readable:
            chunk = os.read(read_end, 4096)
            heard += chunk
            *lines, heard = heard.split(b"\n")
            for line in lines:  # the preflight's: what is wrong with each source
                click.echo(line.decode(errors="replace"), err=True)
            if heard == READY:
                click.echo(f"mounted {mountpoint} (log: {log_path})")
                return
            if not chunk:
                break  # the pipe closed: the process ended before it was ready
        if process.poll() is not None:
            break
    process.terminate()
    last: list[str] = []
    with contextlib.suppress(OSError):  # the child's own last words, usually "Error: ..."
        last = log_path.read_text(errors="replace").strip().splitlines()[-1:]
    said = f": {last[0].removeprefix('Error: ')}" if last else ""
    raise click.ClickException(f"the mount did not start{said} (log: {log_path})")


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
def umount(mountpoint: Path) -> None:
    """Unmount MOUNTPOINT (with its writable layer, the overlay and then the library)."""
    if overlay.mounted_at(mountpoint) is None and not overlay.lower_mounts(mountpoint):
        raise click.UsageError(f"{mountpoint} is not mounted")
    try:
        overlay.unmount(mountpoint)
    except overlay.OverlayError as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.argument(
    "folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--from",
    "bucket",
    metavar="s3://BUCKET[/PREFIX]",
    help="Serve a shared tier's sets instead of a folder (each asked for is fetched from the "
    "bucket, checked, cached under --cache-dir and written there as an archive); keys and "
    "--s3-endpoint as for mount --shared.",
)
@click.option("--s3-endpoint", metavar="URL", help="The S3 service of --from when not AWS.")
@click.option(
    "--s3-credentials-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File (mode 600, the AWS credentials format) with the keys of --from.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --from: this node's cache. [default: the user's cache directory]",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8727,
    show_default=True,
    help="TCP port to listen on (0: any free one).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; loopback unless you mean to share.",
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds added before every answer (to emulate a distant mirror).",
)
@click.option(
    "--bandwidth",
    type=click.IntRange(min=1),
    default=None,
    help="Cap on body bytes per second (to emulate a slow link).",
)
@click.option(
    "--link",
    type=click.IntRange(min=1),
    default=None,
    help="Cap on body bytes per second that all answers share (to emulate a client's link).",
)
@click.option("--no-ranges", is_flag=True, help="Ignore Range headers, like a plain mirror.")
@click.option(
    "--as-is",
    is_flag=True,
    help="Send whole archives unread, readable or not, like a mirror that never looks inside "
    "(to test what clients make of broken ones); other endpoints still answer 422.",
)
@click.option(
    "--cut-after",
    type=click.IntRange(min=1),
    default=None,
    help="Drop the connection after this many bytes of any archive body (a flaky mirror).",
)
@click.option("--debug", is_flag=True, help="Log every step, not only what matters.")
def serve(
    folder: Path | None,
    bucket: str | None,
    s3_endpoint: str | None,
    s3_credentials_file: Path | None,
    cache_dir: Path | None,
    port: int,
    host: str,
    latency: float,
    bandwidth: int | None,
    link: int | None,
    no_ranges: bool,
    as_is: bool,
    cut_after: int | None,
    debug: bool,
) -> None:
    """Serve a folder of <id>.osz files (or a shared bucket's sets) over the Hexide mirror
    API."""
    from osufs.server import serve as serve_folder
    from osufs.server import survey

    if (folder is None) == (bucket is None):
        raise click.UsageError("give a FOLDER or --from s3://BUCKET, one of them")
    shaping = {
        "latency": latency,
        "bandwidth": bandwidth,
        "link": link,
        "ranges": not no_ranges,
        "as_is": as_is,
        "cut_after": cut_after,
    }
    if bucket is not None:
        tier = shared_settings(bucket, s3_endpoint, s3_credentials_file)
        assert tier is not None
        setup_logging(debug, s3_secrets=tier.secrets())
        _check_port(host, port)
        _serve_bucket(tier, usable_cache_dir(cache_dir), host, port, shaping)
        return
    assert folder is not None
    setup_logging(debug)
    _check_port(host, port)
    try:
        found = survey(folder)
    except OSError as error:
        raise Mistake(f"cannot read {folder}: {error.strerror}") from None
    for name, why in found.skipped[:SKIPPED_SHOWN]:
        log.warning("skipping %s: %s", name, why)
    if len(found.skipped) > SKIPPED_SHOWN:
        log.warning("and %d more skipped", len(found.skipped) - SKIPPED_SHOWN)
    log.info(
        "%d archives to serve from %s, %d files skipped",
        len(found.served),
        folder,
        len(found.skipped),
    )

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                partial(
                    serve_folder,
                    folder,
                    host,
                    port,
                    **shaping,
                )
            )
            log.info("serving %s on http://%s:%d", folder, host, bound)

    with contextlib.suppress(KeyboardInterrupt):
        try:
            trio.run(run)
        except* OSError as group:  # the port was taken between the check and the bind
            raise Mistake(f"cannot listen on {host}:{port}: {_first_reason(group)}") from None


def _serve_bucket(
    tier: TierSettings, cache_dir: Path, host: str, port: int, shaping: dict[str, Any]
) -> None:
    from osufs.bucket_serve import serve_bucket

    config = MountConfig(cache_dir=cache_dir, sources=[], shared=tier)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(partial(serve_bucket, config, host, port, **shaping))
            log.info("serving %s on http://%s:%d (cache %s)", tier.location, host, bound, cache_dir)

    with contextlib.suppress(KeyboardInterrupt):
        try:
            trio.run(run)
        except* SharedRefused as group:
            raise click.ClickException(_first_reason(group)) from None
        except* OSError as group:
            raise Mistake(f"cannot listen on {host}:{port}: {_first_reason(group)}") from None


SKIPPED_SHOWN = 20


def _check_port(host: str, port: int) -> None:
    """A Mistake, before anything starts, when host:port cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as hypercorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            why = "the port is in use" if error.errno == errno.EADDRINUSE else error.strerror
            raise Mistake(f"cannot listen on {host}:{port}: {why}") from None
        except socket.gaierror as error:
            raise Mistake(f"cannot listen on {host}:{port}: {error.strerror}") from None


def _first_reason(group: BaseExceptionGroup) -> str:
    error = group.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return getattr(error, "strerror", None) or str(error)


@main.command()
@click.argument(
    "mountpoint", type=click.Path(file_okay=False, path_type=Path), default="osufs-demo"
)
@click.option(
    "--sets",
    type=click.IntRange(1, 1000),
    default=36,
    show_default=True,
    help="How many sample sets the demo library holds.",
)
@click.option("--debug", is_flag=True, help="Log every step, not only what matters.")
def demo(mountpoint: Path, sets: int, debug: bool) -> None:
    """Build a sample library, serve it on loopback and mount it; Ctrl-C stops."""
    from osufs.samples import build_sample_library
    from osufs.server import serve as serve_folder

    setup_logging(debug)
    root = platformdirs.user_data_path("osufs") / "demo"
    archives = root / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    build_sample_library(archives, count=sets)
    mountpoint.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_folder, archives, "127.0.0.1", 0)
            config = MountConfig(
                mountpoint=mountpoint,
                cache_dir=root / "cache",
                sources=[SourceSpec("hexide", f"http://127.0.0.1:{port}")],
            )

            def ready() -> None:
                click.echo(f"demo library of {sets} sets mounted at {mountpoint}; Ctrl-C stops")

            await run_mount(config, ready)
            nursery.cancel_scope.cancel()

    trio.run(run)
