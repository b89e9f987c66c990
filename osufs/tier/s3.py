"""A small S3 client: httpx for the transport, botocore for SigV4 signing and credentials
(osufs/tier/sigv4.py, imported only once S3 is used: botocore takes 0.12 s to import, which
every mount's start would otherwise pay).

Only what the shared tier needs: GET (with ranges), HEAD, PUT (conditional where the store
offers it), LIST (v2) and bucket creation. Path-style addressing with `--s3-endpoint` (RGW,
MinIO, R2), virtual-hosted addressing on AWS. Any task may call any method (one httpx client,
trio all the way); signing hashes the body, so large bodies are signed in a worker thread.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import httpx
import trio

from osufs import tls
from osufs.errors import OsufsError

if TYPE_CHECKING:
    from botocore.credentials import Credentials

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# Bodies above this are hashed for signing in a worker thread, not on trio's loop.
THREAD_SIGN = 1 << 20
STREAM_CHUNK = 1 << 20
_BODY_MISMATCH = ("XAmzContentSHA256Mismatch", "BadDigest")


class S3Error(OsufsError):
    """The store failed or could not be reached; the tier is skipped for a while."""


class S3Refused(S3Error):
    """The store refused our credentials or the bucket's permissions."""


class S3BodyRefused(OsufsError):
    """The store found a body unlike the SHA-256 it was sent with (our copy is damaged)."""


class CredentialsError(ValueError):
    """No usable S3 credentials (a configuration mistake, reported at start)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Location:
    """`s3://BUCKET[/PREFIX]`: the prefix, when given, ends with a slash."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, text: str) -> Location:
        parts = urlsplit(text)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"{text!r} is not s3://BUCKET[/PREFIX]")
        prefix = parts.path.strip("/")
        return cls(parts.netloc, prefix + "/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclasses.dataclass(frozen=True, slots=True)
class Listed:
    key: str  # without the location's prefix
    size: int
    last_modified: str


def load_credentials(credentials_file: Path | None = None) -> Credentials:
    """Credentials from an owner-only file (the AWS credentials format, profile AWS_PROFILE or
    default), else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else a profile of the usual
    credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials). Nothing that asks
    the network (instance metadata, SSO) is consulted."""
    from osufs.tier import sigv4

    profile = os.environ.get("AWS_PROFILE", "default")
    if credentials_file is not None:
        if credentials_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialsError(
                f"{credentials_file} can be read by other users; it holds S3 keys. "
                f"Run: chmod 600 {credentials_file}"
            )
        found = sigv4.resolve_credentials([str(credentials_file)], profile, environment=False)
    else:
        shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        found = sigv4.resolve_credentials([os.path.expanduser(shared)], profile, environment=True)
    if found is None:
        where = credentials_file or "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials"
        raise CredentialsError(f"no S3 credentials found (looked in {where})")
    return found


def region_from_environment() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class S3Client:
    """Signed requests to one bucket."""

    def __init__(
        self,
        location: Location,
        credentials: Credentials,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        from osufs.tier.sigv4 import sign

        self.location = location
        self.region = region or region_from_environment()
        self._credentials = credentials
        self._signed = sign
        if endpoint is not None:
            self._base = f"{endpoint.rstrip('/')}/{quote(location.bucket)}"
        else:
            self._base = f"https://{location.bucket}.s3.{self.region}.amazonaws.com"
        self._http = httpx.AsyncClient(
            verify=tls.context(), timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0))
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, key: str | None, query: dict[str, str] | None = None) -> str:
        url = self._base + ("/" + quote(self.location.prefix + key, safe="/-_.~") if key else "/")
        if query:
            url += "?" + "&".join(
                f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
                for name, value in sorted(query.items())
            )
        return url

    def _sign(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        payload_sha256: str | None = None,
    ) -> dict[str, str]:
        return self._signed(
            self._credentials, self.region, method, url, headers, body, payload_sha256
        )

    async def _request(
        self,
        method: str,
        key: str | None,
        *,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        stream: tuple[Path, str] | None = None,
    ) -> httpx.Response:
        """One signed request; `stream` is a file sent as the body and its known SHA-256
        (signed without reading it; the store checks the bytes against it)."""
        url = self._url(key, query)
        headers = dict(headers or {})
        content: bytes | AsyncIterator[bytes] = body
        if stream is not None:
            path, sha256 = stream
            headers["Content-Length"] = str(path.stat().st_size)
            signed = self._sign(method, url, headers, b"", sha256)
            content = _file_chunks(path)
        elif len(body) > THREAD_SIGN:
            signed = await trio.to_thread.run_sync(self._sign, method, url, headers, body)
        else:
            signed = self._sign(method, url, headers, body)
        try:
            response = await self._http.request(method, url, headers=signed, content=content)
        except httpx.HTTPError as error:
            raise S3Error.io(f"{self.location}: {type(error).__name__}: {error}") from error
        if response.status_code in (401, 403):
            code = _error_code(response) or str(response.status_code)
            raise S3Refused(
                errno.EACCES, f"{self.location}: the store refused our credentials ({code})"
            )
        if response.status_code >= 500:
            raise S3Error.io(f"{self.location}: the store answered {response.status_code}")
        return response

    async def get(
        self, key: str, start: int | None = None, length: int | None = None
    ) -> bytes | None:
        """The object's bytes (a range when start is given); None when it does not exist."""
        headers = {}
        if start is not None:
            end = "" if length is None else str(start + length - 1)
            headers["Range"] = f"bytes={start}-{end}"
        response = await self._request("GET", key, headers=headers)
        if response.status_code == 404:
            return None
        if response.status_code == 416:
            return b""
        if response.status_code not in (200, 206):
            raise S3Error.io(f"{self.location}{key}: GET answered {response.status_code}")
        if start is not None and response.status_code == 200:
            # A store that ignores ranges sends the whole object: cut the range from it.
            return response.content[start : None if length is None else start + length]
        return response.content

    async def head(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""
        response = await self._request("HEAD", key)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise S3Error.io(f"{self.location}{key}: HEAD answered {response.status_code}")
        return int(response.headers.get("content-length", "0"))

    async def put(
        self,
        key: str,
        body: bytes = b"",
        *,
        replace: bool = False,
        stream: tuple[Path, str] | None = None,
    ) -> bool:
        """Store an object (`body`, or the file of `stream` with its SHA-256) unless one exists
        under the key (If-None-Match: *, where the store honours it) or `replace` is given;
        True when this call stored it. FileNotFoundError when the file is gone."""
        headers = {} if replace else {"If-None-Match": "*"}
        response = await self._request("PUT", key, headers=headers, body=body, stream=stream)
        if response.status_code in (409, 412):
            return False
        if response.status_code == 400 and _error_code(response) in _BODY_MISMATCH:
            raise S3BodyRefused.io(f"{self.location}{key}: {_error_code(response)}")
        if response.status_code != 200:
            raise S3Error.io(f"{self.location}{key}: PUT answered {response.status_code}")
        return True

    async def delete(self, key: str) -> None:
        response = await self._request("DELETE", key)
        if response.status_code not in (200, 204, 404):
            raise S3Error.io(f"{self.location}{key}: DELETE answered {response.status_code}")

    async def list(self, prefix: str) -> list[Listed]:
        """Every object whose key starts with prefix (under the location's prefix)."""
        found: list[Listed] = []
        token: str | None = None
        full = self.location.prefix + prefix
        while True:
            query = {"list-type": "2", "prefix": full}
            if token:
                query["continuation-token"] = token
            response = await self._request("GET", None, query=query)
            if response.status_code == 404:
                raise S3Error.io(f"{self.location}: no such bucket")
            if response.status_code != 200:
                raise S3Error.io(f"{self.location}: LIST answered {response.status_code}")
            try:
                root = ET.fromstring(response.content)
            except ET.ParseError as error:
                raise S3Error.io(f"{self.location}: LIST sent no XML") from error
            for item in root.iter(NS + "Contents"):
                key = item.findtext(NS + "Key") or ""
                found.append(
                    Listed(
                        key.removeprefix(self.location.prefix),
                        int(item.findtext(NS + "Size") or 0),
                        item.findtext(NS + "LastModified") or "",
                    )
                )
            token = root.findtext(NS + "NextContinuationToken")
            if root.findtext(NS + "IsTruncated") != "true" or not token:
                return found

    async def check(self) -> None:
        """Raise S3Refused for bad credentials and S3Error for a missing bucket or no store
        (a one-key LIST: unlike HEAD, its errors say why)."""
        response = await self._request("GET", None, query={"list-type": "2", "max-keys": "1"})
        if response.status_code == 404:
            raise S3Error.io(f"{self.location}: no such bucket")
        if response.status_code != 200:
            raise S3Error.io(f"{self.location}: LIST answered {response.status_code}")

    async def create_bucket(self) -> None:
        body = b""
        if self.region != "us-east-1":
            body = (
                '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<LocationConstraint>{self.region}</LocationConstraint>"
                "</CreateBucketConfiguration>"
            ).encode()
        response = await self._request("PUT", None, body=body)
        if response.status_code == 409 and _error_code(response) == "BucketAlreadyOwnedByYou":
            return
        if response.status_code != 200:
            raise S3Error.io(
                f"{self.location}: creating the bucket answered {response.status_code}"
                f" ({_error_code(response)})"
            )


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await trio.open_file(path, "rb") as file:
        while chunk := await file.read(STREAM_CHUNK):
            yield chunk


def _error_code(response: httpx.Response) -> str | None:
    try:
        return ET.fromstring(response.content).findtext("Code")
    except ET.ParseError:
        return None
