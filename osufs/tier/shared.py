"""The shared tier: what the mounts of a group fetched and checked, kept in one S3 bucket.

Keys under the location's prefix; each is written once and named by what it holds:

    blobs/<sha256>                              a member's bytes
    sets/<id>/dir.<sha256>                      the set's central directory (tier/directory.py)
    sets/<id>/member.<crc32>.<size>.<sha256>    empty: that member of the set is blobs/<sha256>

A marker is written only once its blob is stored, so a reader that lists one finds its bytes;
concurrent writers write the same bytes under the same key, and PUT asks If-None-Match: *.
Nothing read here is trusted: a blob must hash to its key and have its member's CRC and size,
a directory must hash to its key; one that does not is reported once and passed over.

A store that fails, refuses or is slow to answer (`wait` seconds a request) is left alone for
DOWN_RETRY seconds, said in one log line; callers then go on to the sources. Called from the
trio thread only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import time
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from osufs.tier.s3 import (
    Location,
    S3BodyRefused,
    S3Client,
    S3Error,
    S3Refused,
    load_credentials,
)

if TYPE_CHECKING:
    from botocore.credentials import Credentials

log = logging.getLogger(__name__)

T = TypeVar("T")

DOWN_RETRY = 30.0
# A set's keys are listed again after this long (another mount may have added members).
KEYS_TTL = 30.0
# Blobs are read in ranges of this many bytes; larger ones are checked once whole.
RANGE = 4 << 20
# Blobs at least this large are looked for (HEAD) before being sent: another set or mount may
# have stored the same bytes.
HEAD_FIRST = 64 << 10

_MEMBER = re.compile(r"member\.([0-9a-f]{8})\.([0-9]+)\.([0-9a-f]{64})")
_DIRECTORY = re.compile(r"dir\.([0-9a-f]{64})")


@dataclasses.dataclass(frozen=True)
class TierSettings:
    """`--shared s3://BUCKET[/PREFIX]`, `--s3-endpoint` and the credentials they use."""

    location: Location
    endpoint: str | None
    credentials: Credentials = dataclasses.field(repr=False)

    @classmethod
    def load(
        cls, shared: str, endpoint: str | None, credentials_file: Path | None
    ) -> TierSettings:
        """ValueError (or CredentialsError) for a bad location or no usable credentials."""
        return cls(Location.parse(shared), endpoint, load_credentials(credentials_file))

    def secrets(self) -> list[str]:
        frozen = self.credentials.get_frozen_credentials()
        return [value for value in (frozen.secret_key, frozen.access_key, frozen.token) if value]


class SharedRefused(S3Refused):
    """The bucket refused our credentials at the start: one line, and the mount stops."""


@contextlib.asynccontextmanager
async def open_tier(settings: TierSettings, *, wait: float = 5.0) -> AsyncIterator[SharedTier]:
    """The tier, its bucket checked: SharedRefused when it refuses our credentials; a bucket
    down is said and passed over (the mount goes on without it until it answers)."""
    client = S3Client(settings.location, settings.credentials, endpoint=settings.endpoint)
    tier = SharedTier(client, wait=wait)
    try:
        try:
            if await tier.check():
                log.info("shared tier %s", tier)
        except S3Refused as error:
            raise SharedRefused(
                error.errno,
                f"--shared {error}; check AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, the AWS_PROFILE, or --s3-credentials-file",
            ) from None
        yield tier
    finally:
        await tier.aclose()


@dataclasses.dataclass
class SetObjects:
    """What the bucket holds of one set."""

    directories: list[str]  # sha256 hex of each directory stored, newest first
    members: dict[tuple[int, int], str]  # (crc32, size) -> sha256 hex of the blob


@dataclasses.dataclass
class TierStats:
    gets: int = 0
    got_bytes: int = 0
    puts: int = 0
    put_bytes: int = 0
    hits: int = 0  # members served from the tier
    refused: int = 0  # objects that did not hold what their key says


class SharedTier:
    """A bucket shared by mounts (and `osufs serve --from` nodes), seen as checked bytes."""

    def __init__(self, client: S3Client, *, wait: float = 5.0) -> None:
        self.client = client
        self.wait = wait
        self.stats = TierStats()
        self._down_until = 0.0
        self._refused_keys: set[str] = set()
        self._sets: dict[int, tuple[float, SetObjects]] = {}

    def __str__(self) -> str:
        return str(self.client.location)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def check(self) -> bool:
        """Whether the bucket answers; S3Refused when it refuses our credentials (a mistake
        to report at once). A bucket down or missing is said in one line and passed over."""
        try:
            with trio.fail_after(self.wait):
                await self.client.check()
        except S3Refused:
            raise
        except (S3Error, trio.TooSlowError) as error:
            self._fail(error)
            return False
        return True

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    # reading

    async def objects(self, set_id: int, *, fresh: bool = False) -> SetObjects | None:
        """What the bucket holds of a set (listed at most every KEYS_TTL seconds); None while
        the bucket is down."""
        cached = self._sets.get(set_id)
        if cached is not None and not fresh and time.monotonic() - cached[0] < KEYS_TTL:
            return cached[1]
        listed = await self._guarded(self.client.list(f"sets/{set_id}/"))
        if listed is None:
            return None
        found = SetObjects([], {})
        for item in sorted(listed, key=lambda item: item.last_modified, reverse=True):
            name = item.key.rsplit("/", 1)[-1]
            if match := _MEMBER.fullmatch(name):
                found.members[(int(match[1], 16), int(match[2]))] = match[3]
            elif match := _DIRECTORY.fullmatch(name):
                found.directories.append(match[1])
        self._sets[set_id] = (time.monotonic(), found)
        return found

    async def directories(self, set_id: int) -> list[tuple[str, bytes]]:
        """The set's stored directories that hash to their keys, with their keys, newest
        first."""
        found = await self.objects(set_id)
        checked: list[tuple[str, bytes]] = []
        for digest in found.directories if found else []:
            key = f"sets/{set_id}/dir.{digest}"
            if key in self._refused_keys:
                continue
            data = await self._guarded(self.client.get(key))
            if data is None:
                continue
            self._count_get(data)
            if hashlib.sha256(data).hexdigest() != digest:
                self.refuse(key, f"set {set_id}: its directory does not hash to its key")
                continue
            checked.append((key, data))
        return checked

    async def has_member(self, set_id: int, crc32: int, size: int) -> bool:
        found = await self.objects(set_id)
        digest = found.members.get((crc32, size)) if found else None
        return digest is not None and f"blobs/{digest}" not in self._refused_keys

    async def member(
        self, set_id: int, crc32: int, size: int, write: Callable[[bytes], object]
    ) -> bool:
        """Write the set's member with this CRC and size to `write`, in ranges; True when all
        of it came and it hashes to its key with that CRC and size. On False, what was written
        is the caller's to discard."""
        found = await self.objects(set_id)
        digest = found.members.get((crc32, size)) if found else None
        key = f"blobs/{digest}"
        if digest is None or key in self._refused_keys:
            return False
        hasher, crc, got = hashlib.sha256(), 0, 0
        while got < size:
            data = await self._guarded(self.client.get(key, got, min(RANGE, size - got)))
            if data is None:
                return False  # the bucket failed: said once, nothing refused
            self._count_get(data)
            if not data:
                break  # shorter than its member
            hasher.update(data)
            crc = zlib.crc32(data, crc)
            got += len(data)
            write(data)
        if got != size or crc != crc32 or hasher.hexdigest() != digest:
            self.refuse(key, f"set {set_id}: it does not hold the member its key names")
            return False
        self.stats.hits += 1
        return True

    # writing

    async def put_directory(self, set_id: int, data: bytes) -> bool:
        digest = hashlib.sha256(data).hexdigest()
        found = await self.objects(set_id)
        if found is None:
            return False
        if digest in found.directories:
            return True
        if await self._put(f"sets/{set_id}/dir.{digest}", len(data), data) is None:
            return False
        found.directories.insert(0, digest)
        return True

    async def put_member(
        self,
        set_id: int,
        crc32: int,
        size: int,
        digest: str,
        path: Path,
    ) -> bool:
        """Store a member's blob (sent from its checked file in the local cache, streamed;
        the store checks it against its SHA-256), then its marker: a reader never finds a
        marker without its bytes."""
        found = await self.objects(set_id)
        if found is None:
            return False
        blob = f"blobs/{digest}"
        # A blob refused here is written anew with our checked bytes (the same key, the same
        # bytes any honest writer sends).
        repair = blob in self._refused_keys
        if found.members.get((crc32, size)) == digest and not repair:
            return True
        present = (
            not repair
            and size >= HEAD_FIRST
            and await self._guarded(self.client.head(blob)) == size
        )
        if not present:
            if not self.available():
                return False
            try:
                if await self._put(blob, size, replace=repair, stream=(path, digest)) is None:
                    return False
            except FileNotFoundError:
                return False  # evicted meanwhile
            except S3BodyRefused as error:
                log.warning("shared tier %s: not sent, our copy is damaged: %s", self, error)
                return False
            if repair:
                self._refused_keys.discard(blob)
                log.info("shared tier %s: %s written anew from this cache", self, blob)
        if await self._put(f"sets/{set_id}/member.{crc32:08x}.{size}.{digest}", 0) is None:
            return False
        found.members[(crc32, size)] = digest
        return True

    # faults

    async def _put(
        self,
        key: str,
        size: int,
        body: bytes = b"",
        *,
        replace: bool = False,
        stream: tuple[Path, str] | None = None,
    ) -> bool | None:
        request = self.client.put(key, body, replace=replace, stream=stream)
        created = await self._guarded(request)
        if created:
            self.stats.puts += 1
            self.stats.put_bytes += size
        return created

    async def _guarded(self, request: Coroutine[Any, Any, T]) -> T | None:
        """The request's answer; None when the bucket is down, fails or is too slow."""
        if not self.available():
            request.close()  # never sent
            return None
        try:
            with trio.fail_after(self.wait):
                answer = await request
        except (S3Error, trio.TooSlowError) as error:
            self._fail(error)
            return None
        if self._down_until:
            self._down_until = 0.0
            log.info("shared tier %s answers again", self)
        return answer

    def _fail(self, error: Exception) -> None:
        if isinstance(error, trio.TooSlowError):
            error = S3Error.io(f"{self}: no answer within {self.wait:g} s")
        was_up = not self._down_until
        self._down_until = time.monotonic() + DOWN_RETRY
        if was_up:
            log.warning(
                "shared tier down (%s): serving from the cache and the sources; trying it "
                "again in %g s",
                error,
                DOWN_RETRY,
            )

    def refuse(self, key: str, why: str) -> None:
        """An object that does not hold what its key says: reported once, never read again."""
        self._refused_keys.add(key)
        self.stats.refused += 1
        log.warning("shared tier %s: %s refused: %s; ignored", self, key, why)

    def _count_get(self, data: bytes) -> None:
        self.stats.gets += 1
        self.stats.got_bytes += len(data)
