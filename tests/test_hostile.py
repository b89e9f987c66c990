"""The hostile corpus (tests/hostile.py) served by the real `osufs serve` and read through a real
mount: every case gives its defined result, nothing escapes the set directory or the cache, the
mount stays up, and a mount holds thousands of open files at once.

Every filesystem call runs in a worker with a generous deadline, so a hang fails the test instead
of stalling it; no test asserts how long anything took.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import os
import resource
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner

from osufs import cli
from osufs.archive import Limits
from osufs.fs import NO_OPEN
from osufs.mount import MountConfig
from tests.helpers import REAL_ARCHIVES, Mount, Server, mounted, mounted_from
from tests.hostile import MANY, HostileSet, corpus, open_files_set
from tests.test_mount import expected_members

T = TypeVar("T")

NEIGHBOUR = 1  # a real archive served beside the hostile ones
DEADLINE = 120.0  # seconds any one batch of filesystem calls may take before the test fails
OPEN_FILES = 3_300
DISTINCT = 1_100  # more than the usual soft limit of 1,024 by itself


@pytest.fixture(scope="module")
def hostile() -> list[HostileSet]:
    return corpus()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, hostile: list[HostileSet]) -> Path:
    folder = tmp_path_factory.mktemp("hostile-archives")
    shutil.copy(REAL_ARCHIVES[0], folder / f"{NEIGHBOUR}.osz")
    for case in hostile:
        case.write(folder / f"{case.set_id}.osz")
    return folder


def in_parallel(calls: list[Callable[[], T]], workers: int = 32) -> list[T]:
    """Run the calls on a thread pool; their results in order, or the first exception."""
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    futures = [pool.submit(call) for call in calls]
    _, pending = concurrent.futures.wait(futures, timeout=DEADLINE)
    # A hung call must not hang the test too: leave its thread to the unmount in `finally`.
    pool.shutdown(wait=not pending, cancel_futures=True)
    assert not pending, f"{len(pending)} filesystem calls did not return (hung?)"
    return [future.result() for future in futures]


def outcome(call: Callable[[], T]) -> Callable[[], T | int]:
    """The call's result, or the errno of the OSError it raised."""

    def run() -> T | int:
        try:
            return call()
        except OSError as error:
            return error.errno

    return run


def read_file(path: Path) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def raise_error(error: OSError) -> None:
    raise error


def tree(folder: Path) -> set[str]:
    """Every file below folder, as "/"-separated paths relative to it."""
    found = set()
    for dirpath, _dirnames, filenames in os.walk(folder, onerror=raise_error):
        base = Path(dirpath).relative_to(folder)
        found.update((base / name).as_posix() for name in filenames)
    return found


def snapshot(root: Path, skip: set[str]) -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime) of everything below root, leaving out top-level names in skip."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            found[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return found


def content_hashes(cache: Path) -> set[str]:
    """The digests of the cache's content files, each checked against the bytes it holds."""
    found = set()
    for path in (cache / "content").rglob("*"):
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
            found.add(path.name)
    return found


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_readable(mount: Mount, case: HostileSet, *, sample: int = 1) -> dict[str, bytes]:
    """The set lists exactly its expected files; each reads its bytes or fails with its errno.
    Returns the good members read (every `sample`-th file of a big set)."""
    folder = mount.mountpoint / str(case.set_id)
    resolved = folder.resolve()
    assert resolved.parent == mount.mountpoint, "the set is not a folder of the root"
    listed = in_parallel([lambda: tree(folder)])[0]
    assert listed == set(case.files), case.label
    for name in listed:
        # Whatever the member was called, it is a plain path below the set folder.
        assert (resolved / name).resolve().is_relative_to(resolved), name
    chosen = sorted(
        set(sorted(case.files)[::sample]) | {n for n in case.files if n.endswith(".osu")}
    )
    results = in_parallel([outcome(lambda n=name: read_file(folder / n)) for name in chosen])
    sizes = in_parallel([lambda n=name: os.stat(folder / n).st_size for name in chosen])
    good = {}
    for name, result, size in zip(chosen, results, sizes, strict=True):
        expected = case.files[name]
        if NO_OPEN and isinstance(expected, int) and size == 0:
            # A refused member listed empty (its sizes unknown): with no OPEN, the kernel
            # reads an empty file without asking, so there is nowhere to answer EIO.
            assert result == b"", name
            continue
        assert result == expected, f"{case.label}: {name}: {result!r:.80} != {expected!r:.80}"
        if isinstance(expected, bytes):
            assert size == len(expected), name
            good[f"{case.set_id}/{name}"] = expected
    return good


@contextlib.contextmanager
def serving(archives: Path, log: Path, ranges: bool) -> Iterator[Server]:
    # As is: the plain mirror passes on broken archives for the client to judge.
    server = Server(archives, log, "--as-is", *([] if ranges else ["--no-ranges"]))
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("ranges", [True, False], ids=["ranged", "whole-archive"])
def test_hostile_corpus_through_a_mount(
    hostile: list[HostileSet],
    archives: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ranges: bool,
) -> None:
    # The mounts run in an empty working directory, so a relative path escaping would show.
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    outside = [Path("/etc/x"), Path("/x"), Path("/Windows"), Path("/server"), Path("/climb.txt")]
    existed = [path.exists() for path in outside]
    mine = {"hexide", "plain", "server.log"}
    before = snapshot(tmp_path, mine)
    neighbour = expected_members(REAL_ARCHIVES[0])
    readable = [case for case in hostile if case.error is None]
    broken = [case for case in hostile if case.error is not None]

    with (
        serving(archives, tmp_path / "server.log", ranges) as server,
        # The server's Hexide API: its catalogue, set metadata and downloads.
        mounted(
            tmp_path / "hexide" / "mnt",
            tmp_path / "hexide" / "cache",
            tmp_path / "hexide" / "mount.log",
            "--source",
            f"hexide={server.url}",
            "--fetch-timeout",
            "30",
        ) as mount,
        # Its downloads alone, as a plain mirror: every broken case through the archive path
        # only, without the Hexide set info.
        mounted(
            tmp_path / "plain" / "mnt",
            tmp_path / "plain" / "cache",
            tmp_path / "plain" / "mount.log",
            "--source",
            f"url={server.url}/beatmaps/{{id}}/download",
            "--fetch-timeout",
            "30",
        ) as plain,
    ):
        root = mount.mountpoint
        names = {f"{NEIGHBOUR}/{n}": d for n, d in neighbour.items()}
        assert in_parallel([lambda n=n: read_file(root / n) for n in names]) == list(names.values())

        # Not a zip at all: listing the set is EIO, through the Hexide source too (its set
        # info answers 422, which is not retried).
        if ranges:
            assert in_parallel([outcome(lambda: os.listdir(root / str(broken[1].set_id)))]) == [
                broken[1].error
            ]
        results = in_parallel([outcome(lambda c=case: os.listdir(plain.mountpoint / str(c.set_id)))
                               for case in broken])  # fmt: skip
        assert {c.label: r for c, r in zip(broken, results, strict=True)} == {
            c.label: c.error for c in broken
        }

        # Readable sets: their defined tree, good members byte-identical, bad ones their errno.
        good = dict(names)
        for case in readable:
            good |= check_readable(mount, case, sample=97 if case.set_id == 106 else 1)
        assert len(os.listdir(root / "106" / "f")) == MANY - 1

        # The root holds set folders only, and both mounts are still up and serving.
        for name in os.listdir(root):
            assert (root / name).is_dir() and name.split(" ", 1)[0].isdigit(), name
        assert mount.process.poll() is None and plain.process.poll() is None
        again = in_parallel([lambda n=n: read_file(root / n) for n in names])
        assert again == list(names.values())
        assert read_file(plain.mountpoint / str(NEIGHBOUR) / next(iter(neighbour))) == next(
            iter(neighbour.values())
        )

        # The caches hold exactly the good members' bytes; no temporary file outlived a refusal.
        if ranges:
            expected = {sha256(data) for data in good.values()}
        else:
            # A whole archive is ingested at once: every good member of every set read from.
            expected = {sha256(data) for data in neighbour.values()}
            expected |= {sha256(data) for case in readable for data in case.good.values()}
        assert content_hashes(tmp_path / "hexide" / "cache") == expected
        # The plain mount read the neighbour alone (and named it from one of its .osu files).
        plain_cached = content_hashes(tmp_path / "plain" / "cache")
        assert sha256(next(iter(neighbour.values()))) in plain_cached
        assert plain_cached <= {sha256(data) for data in neighbour.values()}
        for cache in (tmp_path / "hexide" / "cache", tmp_path / "plain" / "cache"):
            leftovers = [p.name for p in (cache / "tmp").rglob("*") if p.is_file()]
            assert set(leftovers) <= {".lock"}, leftovers
        log = mount.log() + plain.log()

    needles = ["honest-bomb.bin", "lying-bomb.bin", "CRC32 mismatch", "not a zip archive"]
    for needle in [*needles, "central directory of 41943040 bytes, over the limit"]:
        assert needle in log, needle
    assert "Traceback" not in log, log
    assert snapshot(tmp_path, mine) == before
    assert not any(workdir.iterdir())
    assert [path.exists() for path in outside] == existed


def test_limits_are_options(archives: Path, tmp_path: Path) -> None:
    """`--max-member-size` refuses members above it with EFBIG; smaller ones still read."""
    with (
        serving(archives, tmp_path / "server.log", ranges=True) as server,
        mounted_from(server, tmp_path, "--max-member-size", "100", "--max-ratio", "50") as mount,
    ):
        folder = mount.mountpoint / "102"
        with pytest.raises(OSError) as caught:
            read_file(folder / "good.txt")  # 750 bytes
        assert caught.value.errno == errno.EFBIG
        assert read_file(folder / "zip64.bin") == b"honest zip64 extra"


def test_limit_options_reach_the_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config file's limits, overridden by flags, become the mount's `Limits`."""
    started: list[MountConfig] = []
    monkeypatch.setattr(cli.trio, "run", lambda _main, config, *_callbacks: started.append(config))
    settings = tmp_path / "config.toml"
    settings.write_text('max_member_size = "2G"\nmax_ratio = 20\n')
    (tmp_path / "mnt").mkdir()
    args = ["--config", str(settings), "mount", str(tmp_path / "mnt"), "--foreground"]
    args += ["--source", "hexide=http://127.0.0.1:9", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(cli.main, [*args, "--max-ratio", "50"])
    assert result.exit_code == 0, result.output
    assert started[0].limits == Limits(
        max_member_size=2 << 30, max_total_size=2 << 30, max_ratio=50
    )
    result = CliRunner().invoke(cli.main, [*args, "--max-member-size", "1M"])
    assert result.exit_code == 0, result.output
    assert started[1].limits == Limits(max_member_size=1 << 20, max_ratio=20)


@contextlib.contextmanager
def soft_fd_limit(limit: int) -> Iterator[None]:
    """Children started inside inherit this soft RLIMIT_NOFILE (the common desktop default)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def try_open(path: Path) -> int | OSError:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as error:
        return error


def test_thousands_of_files_open_at_once(tmp_path: Path) -> None:
    """3,300 files held open at once (1,100 distinct members, three opens each) by a mount
    started with the usual soft limit of 1,024 descriptors; every one reads its own member."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < OPEN_FILES + 512:
        pytest.skip(f"the hard limit on open files ({hard}) is too low for this test")
    case = open_files_set(DISTINCT)
    folder = tmp_path / "archives"
    folder.mkdir()
    (folder / f"{case.set_id}.osz").write_bytes(case.archive)
    names = sorted(case.files) * (OPEN_FILES // DISTINCT)
    # A plain mirror: the first open brings the whole archive, so no open waits on the network.
    with serving(folder, tmp_path / "server.log", ranges=False) as server:
        with soft_fd_limit(1024):
            mount = Mount(
                tmp_path / "mnt",
                tmp_path / "cache",
                tmp_path / "mount.log",
                "--source",
                f"hexide={server.url}",
            )
        files: list[int] = []
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, OPEN_FILES + 512), hard))
            set_folder = mount.mountpoint / str(case.set_id)
            opened = in_parallel([lambda n=n: try_open(set_folder / n) for n in names])
            files = [fd for fd in opened if isinstance(fd, int)]
            failed = {str(e) for e in opened if isinstance(e, OSError)}
            assert len(files) == len(names), sorted(failed)[:5]
            # All of them open at once, every one still reading its own member.
            data = in_parallel([lambda fd=fd: os.pread(fd, 64, 0) for fd in files])
            assert data == [case.files[n] for n in names]
            assert mount.process.poll() is None
        finally:
            for fd in files:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            mount.unmount()
