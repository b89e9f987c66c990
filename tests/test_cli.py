"""What a user sees for bad input at the command line: one clear line, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
