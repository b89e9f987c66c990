"""The shared tier's bucket layout against a real radosgw: members stored once by content hash
behind a marker, directories by hash, and nothing read back trusted."""

from __future__ import annotations

import hashlib
import logging
import secrets
import socket
import zlib
from pathlib import Path

import pytest
import trio
from botocore.credentials import Credentials

from osufs import archive
from osufs.archive import Limits
from osufs.samples import build_sample_library
from osufs.tier import directory
from osufs.tier.s3 import Location, S3Client
from osufs.tier.shared import SharedTier
from tests.helpers import REAL_ARCHIVES, free_port
from tests.rgw import Radosgw


def tier_at(endpoint: str, rgw: Radosgw, bucket: str, wait: float = 5.0) -> SharedTier:
    credentials = Credentials(rgw.access_key, rgw.secret_key)
    client = S3Client(Location.parse(f"s3://{bucket}/group"), credentials, endpoint=endpoint)
    return SharedTier(client, wait=wait)


def new_bucket(rgw: Radosgw) -> str:
    bucket = "osufs-tier-" + secrets.token_hex(4)

    async def create() -> None:
        s3 = S3Client(
            Location.parse(f"s3://{bucket}"),
            Credentials(rgw.access_key, rgw.secret_key),
            endpoint=rgw.endpoint,
        )
        try:
            await s3.create_bucket()
        finally:
            await s3.aclose()

    trio.run(create)
    return bucket


def test_a_stored_directory_lists_the_same_members(tmp_path: Path) -> None:
    """Real archives (Shift-JIS names, __MACOSX/, extended times) and generated ones."""
    build_sample_library(tmp_path, count=4, audio_size=10_000)
    for path in [*REAL_ARCHIVES, *sorted(tmp_path.glob("*.osz"))]:
        with open(path, "rb") as file:
            members = archive.read_members(file, Limits())
        assert directory.decode(directory.encode(members), Limits()) == members, path


def test_a_damaged_directory_is_refused() -> None:
    with open(REAL_ARCHIVES[0], "rb") as file:
        members = archive.read_members(file, Limits())
    data = bytearray(directory.encode(members))
    data[10] ^= 0xFF
    data[0] = 0
    with pytest.raises(archive.ArchiveError):
        directory.decode(bytes(data), Limits())
    with pytest.raises(archive.ArchiveError):
        directory.decode(b"PK\x05\x06", Limits())


def test_members_round_trip_and_a_corrupted_blob_is_refused(
    rgw: Radosgw, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    bucket = new_bucket(rgw)
    body = secrets.token_bytes(300_000)
    digest = hashlib.sha256(body).hexdigest()
    crc = zlib.crc32(body)
    read = tmp_path / digest
    read.write_bytes(body)
    damaged = tmp_path / "damaged"
    damaged.write_bytes(body[:-1] + b"!")

    async def session() -> None:
        tier = tier_at(rgw.endpoint, rgw, bucket)
        other = tier_at(rgw.endpoint, rgw, bucket)
        try:
            with caplog.at_level(logging.WARNING):  # the store checks what it is sent
                assert not await tier.put_member(7, crc, len(body), digest, damaged)
            assert "our copy is damaged: " in caplog.text and tier.available()
            assert (await other.objects(7, fresh=True)).members == {}  # no marker either
            assert await tier.put_member(7, crc, len(body), digest, read)
            await other.objects(7, fresh=True)
            assert await other.has_member(7, crc, len(body))
            out = bytearray()
            assert await other.member(7, crc, len(body), out.extend)
            assert bytes(out) == body
            assert other.stats.hits == 1
            assert not await other.has_member(7, crc ^ 1, len(body))
            # Another writer stored garbage under the blob's key.
            await tier.client.put(f"blobs/{digest}", b"garbage" * 1000, replace=True)
            third = tier_at(rgw.endpoint, rgw, bucket)
            try:
                with caplog.at_level(logging.WARNING):
                    assert not await third.member(7, crc, len(body), bytearray().extend)
                assert third.stats.refused == 1
                assert "does not hold the member its key names" in caplog.text
                # Refused, it is written anew from a checked copy.
                assert await third.put_member(7, crc, len(body), digest, read)
                out = bytearray()
                assert await other.member(7, crc, len(body), out.extend)
                assert bytes(out) == body
            finally:
                await third.aclose()
            assert await tier.put_directory(7, b"a directory")
            assert [data for _key, data in await other.directories(7)] == []  # listed earlier
            assert [data for _key, data in await tier.directories(7)] == [b"a directory"]
        finally:
            await tier.aclose()
            await other.aclose()

    trio.run(session)


def test_a_bucket_that_does_not_answer_is_passed_over_in_one_line(
    rgw: Radosgw, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"

    async def session() -> None:
        tier = tier_at(nowhere, rgw, "osufs-nowhere", wait=2.0)
        try:
            with caplog.at_level(logging.INFO):
                assert not await tier.check()
                assert await tier.objects(1) is None
                assert not await tier.member(1, 0, 10, bytearray().extend)
            assert not tier.available()
        finally:
            await tier.aclose()

    trio.run(session)
    lines = [r for r in caplog.records if r.name == "osufs.tier.shared"]
    assert len(lines) == 1 and "shared tier down" in lines[0].getMessage()


def test_a_bucket_that_accepts_but_never_answers_costs_one_wait(
    rgw: Radosgw, caplog: pytest.LogCaptureFixture
) -> None:
    """A hung store: the first request waits its bound, the next are not sent."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"

        async def session() -> None:
            tier = tier_at(endpoint, rgw, "osufs-silent", wait=1.0)
            try:
                with caplog.at_level(logging.WARNING):
                    assert await tier.objects(5) is None  # waited its bound
                    assert not tier.available()
                    assert not await tier.has_member(5, 0, 1)  # not asked: left alone
            finally:
                await tier.aclose()

        trio.run(session)
    downs = [r for r in caplog.records if "shared tier down" in r.getMessage()]
    assert len(downs) == 1 and "no answer within 1 s" in downs[0].getMessage()
