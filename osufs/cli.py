"""The command line: mount, umount, serve, demo."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import stat
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import click
import platformdirs
import trio

from osufs.library import READ_AHEAD_SETS
from osufs.mount import MountConfig, run_mount
from osufs.sources import SourceSpec

log = logging.getLogger("osufs")

READY_WAIT = 60.0


class _Redact(logging.Filter):
    """Defence in depth: a secret that reaches a log line is replaced, whatever logged it."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.secret in message:
            record.msg, record.args = message.replace(self.secret, "<cookie>"), None
        return True


def setup_logging(debug: bool, secret: str | None = None) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if secret:
        handler.addFilter(_Redact(secret))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])
    for noisy in ("httpx", "httpcore", "hpack", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def read_cookie(cookie_file: Path | None) -> str | None:
    """The site's session cookie, from an owner-only file or OSUFS_COOKIE; never from argv."""
    if cookie_file is None:
        return os.environ.get("OSUFS_COOKIE", "").strip() or None
    mode = cookie_file.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise click.UsageError(
            f"{cookie_file} can be read by other users; the cookie is your osu! login. "
            f"Run: chmod 600 {cookie_file}"
        )
    text = cookie_file.read_text().strip()
    return text.removeprefix("Cookie:").strip() or None


def default_cache_dir() -> Path:
    return platformdirs.user_cache_path("osufs")


@click.group()
@click.version_option(package_name="osufs")
def main() -> None:
    """Mount the osu! beatmap library as a lazy FUSE filesystem."""


def _parse_sources(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]):
    try:
        return [SourceSpec.parse(value) for value in values]
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@main.command()
@click.argument("mountpoint", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--source",
    "sources",
    multiple=True,
    callback=_parse_sources,
    help="kind=URL, tried in the order given: hexide=URL, osu=URL, url=TEMPLATE with {id}.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--cookie-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File holding the osu! session cookie (mode 600). Or set OSUFS_COOKIE.",
)
@click.option("--no-video", is_flag=True, help="Ask sources for archives without video.")
@click.option(
    "--fetch-timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Seconds a read may wait for the network before it fails with EIO.",
)
@click.option("--offline", is_flag=True, help="Serve only what is cached; never use the network.")
@click.option("--allow-other", is_flag=True, help="Let other users see the mount.")
@click.option(
    "--read-ahead",
    type=click.IntRange(min=0),
    default=READ_AHEAD_SETS,
    show_default=True,
    help="Sets whose .osu files are fetched ahead of a scan (0: off).",
)
@click.option("--foreground", "-f", is_flag=True, help="Stay attached; Ctrl-C unmounts.")
@click.option("--debug", is_flag=True)
@click.option("--ready-fd", type=int, hidden=True)
def mount(
    mountpoint: Path,
    sources: list[SourceSpec],
    cache_dir: Path | None,
    cookie_file: Path | None,
    no_video: bool,
    fetch_timeout: float,
    offline: bool,
    allow_other: bool,
    read_ahead: int,
    foreground: bool,
    debug: bool,
    ready_fd: int | None,
) -> None:
    """Mount the library at MOUNTPOINT."""
    if not mountpoint.is_dir():
        raise click.UsageError(f"{mountpoint} is not a directory")
    if not sources and not offline:
        raise click.UsageError("give at least one --source (or --offline to serve the cache)")
    cookie = read_cookie(cookie_file)
    if not foreground:
        _mount_in_background(mountpoint)
        return
    setup_logging(debug, cookie)
    config = MountConfig(
        mountpoint=mountpoint,
        cache_dir=cache_dir or default_cache_dir(),
        sources=sources,
        cookie=cookie,
        no_video=no_video,
        fetch_timeout=fetch_timeout,
        offline=offline,
        allow_other=allow_other,
        read_ahead=read_ahead,
    )

    def ready() -> None:
        if ready_fd is not None:
            os.write(ready_fd, b"1")
            os.close(ready_fd)

    trio.run(run_mount, config, ready)


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
    while time.monotonic() < deadline:
        readable, _, _ = select.select([read_end], [], [], 0.2)
        if readable:
            if os.read(read_end, 1) == b"1":
                click.echo(f"mounted {mountpoint} (log: {log_path})")
                return
            break  # the pipe closed: the process ended before it was ready
        if process.poll() is not None:
            break
    process.terminate()
    raise click.ClickException(f"the mount did not start; see {log_path}")


@main.command()
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
def umount(mountpoint: Path) -> None:
    """Unmount MOUNTPOINT."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise click.ClickException("fusermount3 not found; install the fuse3 package")
    result = subprocess.run([tool, "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        raise click.ClickException(result.stderr.strip() or "unmount failed")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", type=int, default=8727, show_default=True)
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
@click.option("--no-ranges", is_flag=True, help="Ignore Range headers, like a plain mirror.")
@click.option("--debug", is_flag=True)
def serve(
    folder: Path,
    port: int,
    host: str,
    latency: float,
    bandwidth: int | None,
    no_ranges: bool,
    debug: bool,
) -> None:
    """Serve a folder of <id>.osz files over the Hexide mirror API."""
    from osufs.server import serve as serve_folder

    setup_logging(debug)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                partial(
                    serve_folder,
                    folder,
                    host,
                    port,
                    latency=latency,
                    bandwidth=bandwidth,
                    ranges=not no_ranges,
                )
            )
            log.info("serving %s on http://%s:%d", folder, host, bound)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)


@main.command()
@click.argument(
    "mountpoint", type=click.Path(file_okay=False, path_type=Path), default="osufs-demo"
)
@click.option("--sets", type=click.IntRange(1, 1000), default=36, show_default=True)
@click.option("--debug", is_flag=True)
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
