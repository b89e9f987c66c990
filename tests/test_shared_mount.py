"""Mounts sharing one bucket on a real radosgw (issue 18): what one fetched, the next reads
with no request upstream; a corrupted object is refused; a bucket gone mid-read is passed
over; refused keys stop the mount; the keys never show in argv or logs; `serve --from`
nodes answer alike.

One mount fills the bucket with every set first (`seeded`); each test then reads its own set
through fresh mounts, each with its own cache."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from botocore.credentials import Credentials

from osufs.archive import Limits, read_members
from osufs.listing import build_listing
from osufs.samples import build_sample_library
from osufs.tier.s3 import Location, S3Client
from tests.helpers import Server, free_port, mounted, osufs_command
from tests.rgw import Radosgw

SETS = 4
# Which sample set each test reads (the third has names in code page 932).
PLAIN, CORRUPTED, LEGACY_NAMES, STOPPED = range(SETS)


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("archives")
    build_sample_library(folder, count=SETS, audio_size=1_500_000)
    return sorted(folder.glob("*.osz"))


@pytest.fixture(scope="module")
def upstream(archives: list[Path], tmp_path_factory: pytest.TempPathFactory):
    server = Server(archives[0].parent, tmp_path_factory.mktemp("upstream") / "server.log")
    try:
        yield server
    finally:
        server.stop()


async def _call(rgw: Radosgw, bucket: str, method: str, *args: object, **kw: object) -> Any:
    s3 = S3Client(
        Location.parse(f"s3://{bucket}/group"),
        Credentials(rgw.access_key, rgw.secret_key),
        endpoint=rgw.endpoint,
    )
    try:
        return await getattr(s3, method)(*args, **kw)
    finally:
        await s3.aclose()


def call(rgw: Radosgw, bucket: str, method: str, *args: object, **kw: object) -> Any:
    return trio.run(lambda: _call(rgw, bucket, method, *args, **kw))


def keys_env(rgw: Radosgw) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": rgw.secret_key}


def set_files(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist() if not info.is_dir()}


def mounted_files(folder: Path) -> list[Path]:
    return sorted(Path(top, name) for top, _dirs, names in os.walk(folder) for name in names)


def read_set(mountpoint: Path, archive: Path) -> None:
    """Every file of the set, read through the mount, is one of the archive's (some sets'
    names are code page 932, which zipfile cannot decode: compare the bytes)."""
    read = sorted(path.read_bytes() for path in mounted_files(mountpoint / archive.stem))
    assert read == sorted(set_files(archive).values())


MountMaker = Callable[..., contextlib.AbstractContextManager[Any]]


def mount_maker(rgw: Radosgw, upstream: Server, bucket: str, where: Path) -> MountMaker:
    def mount(name: str, *extra: str) -> contextlib.AbstractContextManager[Any]:
        return mounted(
            where / f"mnt-{name}",
            where / f"cache-{name}",
            where / f"{name}.log",
            "--source",
            f"hexide={upstream.url}",
            "--shared",
            f"s3://{bucket}/group",
            "--s3-endpoint",
            rgw.endpoint,
            "--read-ahead",
            "0",
            *extra,
            env=keys_env(rgw),
        )

    return mount


def markers(rgw: Radosgw, bucket: str, set_id: int) -> list[str]:
    return [item.key for item in call(rgw, bucket, "list", f"sets/{set_id}/")]


@pytest.fixture(scope="module")
def seeded(
    rgw: Radosgw,
    upstream: Server,
    archives: list[Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path]:
    """A bucket holding every set, filled by one mount that read them all (its log)."""
    bucket = "osufs-mounts-" + secrets.token_hex(4)
    call(rgw, bucket, "create_bucket")
    where = tmp_path_factory.mktemp("seeding")
    with mount_maker(rgw, upstream, bucket, where)("first") as first:
        for archive in archives:
            read_set(first.mountpoint, archive)
    # The unmount waited for the uploads: every member is there behind its marker.
    for archive in archives:
        keys = markers(rgw, bucket, int(archive.stem))
        assert len([key for key in keys if "/member." in key]) == len(set_files(archive))
        assert any("/dir." in key for key in keys)
    return bucket, where / "first.log"


@pytest.fixture
def shared_mount(rgw: Radosgw, upstream: Server, seeded: tuple[str, Path], tmp_path: Path):
    return mount_maker(rgw, upstream, seeded[0], tmp_path)


def test_a_second_mount_reads_what_the_first_fetched_with_no_request_upstream(
    upstream: Server, archives: list[Path], shared_mount: MountMaker
) -> None:
    archive = archives[PLAIN]
    with shared_mount("second") as second:
        before = upstream.stats()["requests"]
        assert len(mounted_files(second.mountpoint / archive.stem)) == len(set_files(archive))
        read_set(second.mountpoint, archive)
        assert upstream.stats()["requests"] == before, "the second mount went upstream"
        assert f"set {archive.stem}: listed from the shared tier" in second.log()


def test_a_corrupted_object_is_refused_and_the_member_comes_from_upstream(
    rgw: Radosgw,
    upstream: Server,
    archives: list[Path],
    seeded: tuple[str, Path],
    shared_mount: MountMaker,
) -> None:
    bucket, archive = seeded[0], archives[CORRUPTED]
    files = set_files(archive)
    keys = [key for key in markers(rgw, bucket, int(archive.stem)) if "/member." in key]
    # Someone's garbage under one member's key (the largest: the audio).
    blob = "blobs/" + max(keys, key=lambda key: int(key.split(".")[-2])).rsplit(".", 1)[1]
    call(rgw, bucket, "put", blob, b"not the audio" * 1000, replace=True)
    with shared_mount("second", "--debug") as second:
        before = upstream.stats()["requests"]
        read_set(second.mountpoint, archive)
        assert upstream.stats()["requests"] > before  # the refused member came from upstream
        log = second.log()
        assert f"{blob} refused" in log
        assert log.count("refused: set") == 1
    # At its unmount the second mount had written the checked bytes back over the garbage.
    assert call(rgw, bucket, "get", blob) in files.values()


def test_the_bucket_stopped_mid_read_the_reads_go_on_from_upstream(
    rgw: Radosgw, upstream: Server, archives: list[Path], shared_mount: MountMaker
) -> None:
    archive = archives[STOPPED]
    contents = set(set_files(archive).values())
    with shared_mount("second") as second:
        paths = mounted_files(second.mountpoint / archive.stem)
        assert paths[0].read_bytes() in contents  # from the bucket
        before = upstream.stats()["requests"]
        rgw.stop_gateway()
        try:
            for path in paths[1:]:
                assert path.read_bytes() in contents, path
        finally:
            rgw.start_gateway()
        assert upstream.stats()["requests"] > before
        assert second.log().count("shared tier down") == 1


def test_refused_keys_stop_the_mount_with_one_line(
    rgw: Radosgw, upstream: Server, seeded: tuple[str, Path], tmp_path: Path
) -> None:
    """The bucket and endpoint from the config file; a wrong secret in the environment."""
    config = tmp_path / "config.toml"
    config.write_text(f'shared = "s3://{seeded[0]}"\ns3_endpoint = "{rgw.endpoint}"\n')
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    wrong = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    done = subprocess.run(
        osufs_command(
            "--config",
            str(config),
            "mount",
            str(mountpoint),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--source",
            f"hexide={upstream.url}",
        ),
        env={**os.environ, **wrong},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert not os.path.ismount(mountpoint)
    said = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(said) == 1, said
    assert "refused our credentials (SignatureDoesNotMatch)" in said[0]
    assert "not-the-secret" not in done.stderr + done.stdout


def test_the_keys_are_never_in_argv_or_the_log(
    rgw: Radosgw, archives: list[Path], seeded: tuple[str, Path], shared_mount: MountMaker
) -> None:
    with shared_mount("debug", "--debug") as mount:
        read_set(mount.mountpoint, archives[PLAIN])
        argv = Path(f"/proc/{mount.process.pid}/cmdline").read_bytes()
        assert rgw.access_key.encode() not in argv and rgw.secret_key.encode() not in argv
    for log in (mount.log(), seeded[1].read_text()):  # a debug log, and the seeding uploads
        assert "shared tier" in log
        assert rgw.secret_key not in log and rgw.access_key not in log
        assert "Signature" not in log and "AWS4-HMAC-SHA256" not in log  # nor what they sign


class BucketNode:
    """`osufs serve --from s3://…` in its own process, with its own cache."""

    def __init__(self, rgw: Radosgw, bucket: str, cache: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            osufs_command(
                "serve",
                "--from",
                f"s3://{bucket}/group",
                "--s3-endpoint",
                rgw.endpoint,
                "--cache-dir",
                str(cache),
                "--port",
                str(self.port),
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **keys_env(rgw)},
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.url}/_stats", timeout=1).raise_for_status()
                return
            assert time.monotonic() < deadline, "osufs serve --from did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(15)
        self._log.close()


def test_two_serve_from_nodes_over_one_bucket_answer_the_same_bytes(
    rgw: Radosgw, archives: list[Path], seeded: tuple[str, Path], tmp_path: Path
) -> None:
    archive = archives[LEGACY_NAMES]
    set_id = int(archive.stem)
    nodes = [
        BucketNode(rgw, seeded[0], tmp_path / f"node{n}", tmp_path / f"node{n}.log")
        for n in (1, 2)
    ]
    try:
        url = f"/beatmaps/{set_id}/download"
        bodies = [httpx.get(node.url + url, timeout=30) for node in nodes]
        assert [body.status_code for body in bodies] == [200, 200]
        assert bodies[0].content == bodies[1].content
        part = {"Range": "bytes=1000-1999"}
        ranged = [httpx.get(node.url + url, headers=part, timeout=30) for node in nodes]
        assert [answer.status_code for answer in ranged] == [206, 206]
        assert ranged[0].content == ranged[1].content == bodies[0].content[1000:2000]
        info = [httpx.get(f"{node.url}/beatmaps/{set_id}", timeout=30).json() for node in nodes]
        assert info[0] == info[1] and info[0]["versions"]
        assert httpx.get(f"{nodes[0].url}/beatmaps/999999/download", timeout=30).status_code == 404
    finally:
        for node in nodes:
            node.stop()
    # The archive lists as the original does: names, sizes, times and bytes.
    served = tmp_path / "served.osz"
    served.write_bytes(bodies[0].content)
    listings = []
    for path in (archive, served):
        with open(path, "rb") as file:
            listings.append(build_listing(read_members(file, Limits())).entries)
    assert listings[0] == listings[1]
    assert sorted(set_files(served).values()) == sorted(set_files(archive).values())
