"""The S3 client against a real radosgw: signed requests, ranges, conditional puts, listing,
refused credentials; and where credentials come from."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import trio
from botocore.credentials import Credentials

from osufs.tier.s3 import CredentialsError, Location, S3Client, S3Refused, load_credentials
from tests.rgw import Radosgw


def client(rgw: Radosgw, location: str, secret: str | None = None) -> S3Client:
    credentials = Credentials(rgw.access_key, secret or rgw.secret_key)
    return S3Client(Location.parse(location), credentials, endpoint=rgw.endpoint)


def test_objects_round_trip_with_ranges_and_conditional_puts(rgw: Radosgw) -> None:
    bucket = "osufs-s3-" + secrets.token_hex(4)

    async def session() -> None:
        s3 = client(rgw, f"s3://{bucket}/group")
        try:
            await s3.create_bucket()
            await s3.create_bucket()  # already ours: not an error
            await s3.check()
            body = bytes(range(256)) * 40
            assert await s3.put("blobs/a", body)
            assert not await s3.put("blobs/a", b"another writer")  # If-None-Match: *
            assert await s3.get("blobs/a") == body
            assert await s3.get("blobs/a", 1000, 24) == body[1000:1024]
            assert await s3.get("blobs/a", 10_000) == body[10_000:]
            assert await s3.head("blobs/a") == len(body)
            assert await s3.get("blobs/missing") is None
            assert await s3.head("blobs/missing") is None
            assert [item.key for item in await s3.list("blobs/")] == ["blobs/a"]
            assert await s3.list("sets/") == []
        finally:
            await s3.aclose()

    trio.run(session)


def test_a_wrong_secret_is_refused(rgw: Radosgw) -> None:
    async def session() -> None:
        s3 = client(rgw, "s3://osufs-refused", secret="not-the-secret")
        try:
            with pytest.raises(S3Refused, match="SignatureDoesNotMatch"):
                await s3.check()
            with pytest.raises(S3Refused, match="SignatureDoesNotMatch"):
                await s3.get("anything")
        finally:
            await s3.aclose()

    trio.run(session)


def test_credentials_come_from_the_environment_then_the_shared_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "credentials"
    shared.write_text(
        "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n"
        "[group]\naws_access_key_id = GROUPKEY\naws_secret_access_key = groupsecret\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    assert load_credentials().access_key == "ENVKEY"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert load_credentials().access_key == "FILEKEY"
    monkeypatch.setenv("AWS_PROFILE", "group")
    assert load_credentials().secret_key == "groupsecret"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    with pytest.raises(CredentialsError, match="no S3 credentials"):
        load_credentials()


def test_a_credentials_file_others_can_read_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "s3-keys"
    keys.write_text("[default]\naws_access_key_id = K\naws_secret_access_key = S\n")
    os.chmod(keys, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600"):
        load_credentials(keys)
    os.chmod(keys, 0o600)
    assert load_credentials(keys).secret_key == "S"


def test_locations_and_addressing() -> None:
    assert Location.parse("s3://bucket") == Location("bucket", "")
    assert Location.parse("s3://bucket/a/b/") == Location("bucket", "a/b/")
    for wrong in ("bucket/x", "http://bucket/x", "s3:///x"):
        with pytest.raises(ValueError):
            Location.parse(wrong)
    aws = S3Client(Location.parse("s3://bkt/p"), Credentials("k", "s"), region="eu-west-1")
    assert aws._url("k/1") == "https://bkt.s3.eu-west-1.amazonaws.com/p/k/1"
    rgw = S3Client(Location.parse("s3://bkt/p"), Credentials("k", "s"), endpoint="http://h:1/")
    assert rgw._url("k/1") == "http://h:1/bkt/p/k/1"
