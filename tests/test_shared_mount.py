"""Mounts sharing one bucket on a real radosgw (issue 18): what one fetched, the next reads
with no request upstream; a corrupted object is refused; a bucket gone mid-read is passed
over; the keys never show in argv or logs."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from botocore.credentials import Credentials

from osufs.archive import Limits, read_members
from osufs.listing import build_listing
from osufs.samples import build_sample_library
from osufs.tier.s3 import Location, S3Client
from tests.helpers import Mount, Server, free_port, mounted, osufs_command
from tests.rgw import Radosgw

SETS = 4


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    build_sample_library(folder, count=SETS, audio_size=1_500_000)
    return folder


@pytest.fixture
def bucket(rgw: Radosgw) -> str:
    name = "osufs-mounts-" + secrets.token_hex(4)
    trio.run(lambda: _call(rgw, name, "create_bucket"))
    return name


async def _call(rgw: Radosgw, bucket: str, method: str, *args: object, **kw: object) -> object:
    s3 = S3Client(
        Location.parse(f"s3://{bucket}/group"),
        Credentials(rgw.access_key, rgw.secret_key),
        endpoint=rgw.endpoint,
    )
    try:
        return await getattr(s3, method)(*args, **kw)
    finally:
        await s3.aclose()


def bucket_keys(rgw: Radosgw, bucket: str, prefix: str) -> list[str]:
    listed = trio.run(lambda: _call(rgw, bucket, "list", prefix))
    return [item.key for item in listed]  # type: ignore[attr-defined]


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


@pytest.fixture
def shared_mount(
    rgw: Radosgw, server: Server, bucket: str, tmp_path: Path
) -> Iterator[callable]:
    def mount(name: str, *extra: str) -> Mount:
        return mounted(
            tmp_path / f"mnt-{name}",
            tmp_path / f"cache-{name}",
            tmp_path / f"{name}.log",
            "--source",
            f"hexide={server.url}",
            "--shared",
            f"s3://{bucket}/group",
            "--s3-endpoint",
            rgw.endpoint,
            "--read-ahead",
            "0",
            *extra,
            env=keys_env(rgw),
        )

    yield mount


def wait_for_members(rgw: Radosgw, bucket: str, set_id: int, count: int) -> list[str]:
    """The set's markers, once the mount's background uploads have stored `count` of them."""
    deadline = time.monotonic() + 60
    while True:
        keys = bucket_keys(rgw, bucket, f"sets/{set_id}/")
        markers = [key for key in keys if "/member." in key]
        if len(markers) >= count and any("/dir." in key for key in keys):
            return markers
        assert time.monotonic() < deadline, f"uploads did not finish: {keys}"
        time.sleep(0.2)


def test_a_second_mount_reads_what_the_first_fetched_with_no_request_upstream(
    rgw: Radosgw, server: Server, archives: Path, bucket: str, shared_mount, tmp_path: Path
) -> None:
    archive = sorted(archives.glob("*.osz"))[1]
    set_id = int(archive.stem)
    files = set_files(archive)
    with shared_mount("first") as first:
        read_set(first.mountpoint, archive)
        wait_for_members(rgw, bucket, set_id, len(files))
    assert server.stats()["requests"] > 0
    with shared_mount("second") as second:
        before = server.stats()
        assert len(mounted_files(second.mountpoint / archive.stem)) == len(files)
        read_set(second.mountpoint, archive)
        assert server.stats()["requests"] == before["requests"], "the second mount went upstream"
        assert "listed from the shared tier" in second.log()
    for log in (tmp_path / "first.log", tmp_path / "second.log"):
        text = log.read_text()
        assert rgw.secret_key not in text and rgw.access_key not in text


def test_a_corrupted_object_is_refused_and_the_member_comes_from_upstream(
    rgw: Radosgw, server: Server, archives: Path, bucket: str, shared_mount
) -> None:
    archive = sorted(archives.glob("*.osz"))[2]
    set_id = int(archive.stem)
    files = set_files(archive)
    with shared_mount("first") as first:
        read_set(first.mountpoint, archive)
        markers = wait_for_members(rgw, bucket, set_id, len(files))
    # Someone's garbage under one member's key (the largest: the audio).
    largest = max(markers, key=lambda key: int(key.split(".")[-2]))
    blob = "blobs/" + largest.rsplit(".", 1)[1]
    trio.run(lambda: _call(rgw, bucket, "put", blob, b"not the audio" * 1000, replace=True))
    with shared_mount("second", "--debug") as second:
        before = server.stats()["requests"]
        read_set(second.mountpoint, archive)
        assert server.stats()["requests"] > before  # the refused member came from upstream
        log = second.log()
        assert f"{blob} refused" in log
        assert log.count("refused: set") == 1
    # The second mount wrote the checked bytes back over the garbage.
    data = trio.run(lambda: _call(rgw, bucket, "get", blob))
    assert data in files.values()


def test_the_bucket_stopped_mid_read_the_reads_go_on_from_upstream(
    rgw: Radosgw, server: Server, archives: Path, bucket: str, shared_mount
) -> None:
    archive = sorted(archives.glob("*.osz"))[3]
    set_id = int(archive.stem)
    files = set_files(archive)
    with shared_mount("first") as first:
        read_set(first.mountpoint, archive)
        wait_for_members(rgw, bucket, set_id, len(files))
    with shared_mount("second") as second:
        paths = mounted_files(second.mountpoint / archive.stem)
        contents = set(files.values())
        assert paths[0].read_bytes() in contents  # from the bucket
        before = server.stats()["requests"]
        rgw.stop_gateway()
        try:
            for path in paths[1:]:
                assert path.read_bytes() in contents, path
        finally:
            rgw.start_gateway()
        assert server.stats()["requests"] > before
        assert second.log().count("shared tier down") == 1


def test_refused_credentials_stop_the_mount_with_one_line(
    rgw: Radosgw, server: Server, bucket: str, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    wrong = {"AWS_ACCESS_KEY_ID": rgw.access_key, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    done = subprocess.run(
        osufs_command(
            "mount", str(mountpoint), "--cache-dir", str(tmp_path / "cache"),
            "--source", f"hexide={server.url}", "--shared", f"s3://{bucket}",
            "--s3-endpoint", rgw.endpoint,
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
    rgw: Radosgw, server: Server, archives: Path, bucket: str, shared_mount
) -> None:
    archive = sorted(archives.glob("*.osz"))[0]
    with shared_mount("debug", "--debug") as mount:
        read_set(mount.mountpoint, archive)
        argv = Path(f"/proc/{mount.process.pid}/cmdline").read_bytes()
        assert rgw.access_key.encode() not in argv and rgw.secret_key.encode() not in argv
        time.sleep(2)  # the uploads, logged at debug level
        log = mount.log()
    assert "shared tier" in log
    assert rgw.secret_key not in log and rgw.access_key not in log


class BucketNode:
    """`osufs serve --from s3://…` in its own process, with its own cache."""

    def __init__(self, rgw: Radosgw, bucket: str, cache: Path, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            osufs_command(
                "serve", "--from", f"s3://{bucket}/group", "--s3-endpoint", rgw.endpoint,
                "--cache-dir", str(cache), "--port", str(self.port),
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
    rgw: Radosgw, archives: Path, bucket: str, shared_mount, tmp_path: Path
) -> None:
    archive = sorted(archives.glob("*.osz"))[2]  # names in code page 932
    set_id = int(archive.stem)
    with shared_mount("first") as first:
        read_set(first.mountpoint, archive)
        wait_for_members(rgw, bucket, set_id, len(set_files(archive)))
    nodes = [
        BucketNode(rgw, bucket, tmp_path / f"node{n}", tmp_path / f"node{n}.log") for n in (1, 2)
    ]
    try:
        bodies = [httpx.get(f"{n.url}/beatmaps/{set_id}/download", timeout=30) for n in nodes]
        assert [body.status_code for body in bodies] == [200, 200]
        assert bodies[0].content == bodies[1].content
        ranged = [
            httpx.get(
                f"{n.url}/beatmaps/{set_id}/download",
                headers={"Range": "bytes=1000-1999"},
                timeout=30,
            )
            for n in nodes
        ]
        assert [r.status_code for r in ranged] == [206, 206]
        assert ranged[0].content == ranged[1].content == bodies[0].content[1000:2000]
        info = [httpx.get(f"{n.url}/beatmaps/{set_id}", timeout=30).json() for n in nodes]
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
