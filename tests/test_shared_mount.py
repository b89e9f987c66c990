"""Mounts sharing one bucket on a real radosgw (issue 18): what one fetched, the next reads
with no request upstream; a corrupted object is refused; a bucket gone mid-read is passed
over; the keys never show in argv or logs."""

from __future__ import annotations

import os
import secrets
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from botocore.credentials import Credentials

from osufs.samples import build_sample_library
from osufs.tier.s3 import Location, S3Client
from tests.helpers import Mount, Server, mounted
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


async def _call(rgw: Radosgw, bucket: str, method: str, *args: object) -> object:
    s3 = S3Client(
        Location.parse(f"s3://{bucket}/group"),
        Credentials(rgw.access_key, rgw.secret_key),
        endpoint=rgw.endpoint,
    )
    try:
        return await getattr(s3, method)(*args)
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


def read_set(mountpoint: Path, archive: Path) -> None:
    for name, data in set_files(archive).items():
        assert (mountpoint / archive.stem / name).read_bytes() == data, name


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
        assert sorted(os.listdir(second.mountpoint / archive.stem)) == sorted(
            {name.split("/")[0] for name in files}
        )
        read_set(second.mountpoint, archive)
        assert server.stats()["requests"] == before["requests"], "the second mount went upstream"
        assert "listed from the shared tier" in second.log()
    for log in (tmp_path / "first.log", tmp_path / "second.log"):
        text = log.read_text()
        assert rgw.secret_key not in text and rgw.access_key not in text
