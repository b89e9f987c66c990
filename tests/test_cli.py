"""What a user sees for bad input at the command line: one clear line, never a traceback."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from osufs.cli import main as cli_main
from osufs.prefetch import SetIds
from osufs.store import Store
from tests.helpers import osufs_command


def osufs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(osufs_command(*args), capture_output=True, text=True, timeout=60)


def refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode != 0
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unusable_cache_directory(tmp_path: Path):
    (tmp_path / "mnt").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = osufs(
        "mount",
        str(tmp_path / "mnt"),
        "--offline",
        "--foreground",
        "--cache-dir",
        str(blocker / "cache"),
    )
    refused(result, f"cannot use {blocker / 'cache'} as the cache")


def test_a_cache_from_another_schema(tmp_path: Path):
    store = Store(tmp_path / "cache")
    store._write(lambda txn: txn.put(b"schema", b"99", db=store._meta))
    store.close()
    (tmp_path / "mnt").mkdir()
    mount = osufs(
        "mount",
        str(tmp_path / "mnt"),
        "--offline",
        "--foreground",
        "--cache-dir",
        str(tmp_path / "cache"),
    )
    refused(mount, "has schema 99")
    refused(osufs("cache", "stats", "--cache-dir", str(tmp_path / "cache")), "has schema 99")


def test_a_mountpoint_mounted_already(tmp_path: Path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    first = ["mount", str(mountpoint), "--offline", "--cache-dir", str(tmp_path / "cache")]
    assert osufs(*first).returncode == 0
    try:
        refused(osufs(*first), "is mounted already")
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def mistake(result: subprocess.CompletedProcess[str], words: str) -> None:
    """A command-line mistake: exit code 2 and one line on stderr that says `words`."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("Error:") == 1
    assert words in result.stderr, result.stderr


def test_set_ids_beyond_what_an_inode_holds(tmp_path: Path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    mistake(osufs("prefetch", "99999999999999999999", *cache), "beyond 2147483647")
    mistake(osufs("prefetch", "1-99999999999", *cache), "set id 99999999999 is beyond 2147483647")
    mistake(osufs("prefetch", "2147483648", *cache), "beyond 2147483647")
    mistake(osufs("cache", "pin", "5-3", "--cache-dir", str(tmp_path)), "invalid range")


def test_ranges_are_streamed_not_built():
    ids = SetIds(["1-2147483647", "5", "10-20,2147483640-2147483647"])
    assert len(ids) == 2147483647
    assert list(itertools.islice(ids, 3)) == [1, 2, 3]
    assert sys.getsizeof(ids._ranges) < 1000
    # In order, once each: a later range keeps only the ids no earlier one named.
    assert list(SetIds(["8-10", "1-9,12", "12,3"])) == [8, 9, 10, *range(1, 8), 12]
    assert len(SetIds(["8-10", "1-9,12"])) == 11


def test_a_source_url_that_is_not_http(tmp_path: Path):
    (tmp_path / "mnt").mkdir()
    for source in ("hexide=notaurl", "url=ftp://mirror.example/{id}", "osu=https://"):
        mistake(
            osufs("mount", str(tmp_path / "mnt"), "--source", source),
            "is not an http:// or https:// URL with a host",
        )


def test_a_port_in_use(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = osufs("serve", str(tmp_path), "--port", str(port))
    mistake(result, f"cannot listen on 127.0.0.1:{port}: the port is in use")


def test_a_mountpoint_that_holds_files(tmp_path: Path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    (mountpoint / "mine.txt").write_text("kept")
    args = ["mount", str(mountpoint), "--offline", "--cache-dir", str(tmp_path / "cache")]
    mistake(osufs(*args), "is not empty; its files would be hidden")
    assert "--allow-non-empty" in osufs(*args).stderr
    assert osufs(*args, "--allow-non-empty").returncode == 0
    try:
        assert os.path.ismount(mountpoint) and os.listdir(mountpoint) == []
    finally:
        assert osufs("umount", str(mountpoint)).returncode == 0
    assert (mountpoint / "mine.txt").read_text() == "kept"


def test_unmounting_a_folder_that_is_not_mounted(tmp_path: Path):
    mistake(osufs("umount", str(tmp_path)), f"{tmp_path} is not mounted")
    mistake(osufs("umount", str(tmp_path / "nowhere")), "does not exist")


def test_a_cache_directory_under_a_file_says_error_once(tmp_path: Path):
    (tmp_path / "mnt").mkdir()
    (tmp_path / "a-file").write_text("")
    for mode in ([], ["--foreground"]):
        result = osufs(
            "mount",
            str(tmp_path / "mnt"),
            "--offline",
            "--cache-dir",
            str(tmp_path / "a-file" / "sub"),
            *mode,
        )
        mistake(result, f"cannot use {tmp_path / 'a-file' / 'sub'} as the cache: Not a directory")
    assert not os.path.ismount(tmp_path / "mnt")


def test_typing_mistakes_are_one_line(tmp_path: Path):
    mistake(osufs("mount", "--bogus"), "No such option '--bogus'")
    mistake(osufs("mount"), "Missing argument 'MOUNTPOINT'")
    mistake(osufs("prefetch", "12x"), "not a set id or range: '12x'")
    mistake(osufs("serve", str(tmp_path), "--port", "70000"), "70000 is not in the range")


def all_commands() -> Iterator[tuple[list[str], click.Command]]:
    def walk(path: list[str], command: click.Command) -> Iterator[tuple[list[str], click.Command]]:
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk([*path, name], sub)

    return walk([], cli_main)


def test_every_option_has_help_text():
    lacking = [
        f"{' '.join(path) or 'osufs'} {param.opts[0]}"
        for path, command in all_commands()
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not param.help
    ]
    assert lacking == []
    for path, _command in all_commands():
        result = osufs(*path, "--help")
        assert result.returncode == 0 and "Traceback" not in result.stderr
        assert "Usage:" in result.stdout


def test_the_command_does_not_import_what_a_mount_never_uses():
    # `osufs --help` imports what a mount does (osufs.cli imports osufs.mount). Neither rich
    # (osufs's progress bars and tables) nor httpx's own command line (rich, pygments) is
    # among it: together they were a fifth of a mount's start.
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "osufs", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "osufs.mount" in imported and "httpx" in imported
    assert not {name for name in imported if name.split(".")[0] in {"rich", "pygments"}}
