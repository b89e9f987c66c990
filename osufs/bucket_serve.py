"""`osufs serve --from s3://…`: a shared bucket's sets over the Hexide API, with ranges.

A node keeps no state but its cache: a set asked for is listed and fetched from the bucket by a
Library with no sources (every object checked as a mount checks it, kept in the node's own
LMDB-indexed cache), then written once as an archive in the cache's `archives/` folder. Every
node writes a set's archive alike (its members stored, in the directory's order, with their
names, flags, CRCs and times), so nodes behind a load balancer answer the same bytes and
ranges, and the listing a mount builds from it is the one the bucket's directory gives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import trio

from osufs.archive import FLAG_LOST_ZIP64, ZipMember
from osufs.errors import OsufsError
from osufs.library import Library
from osufs.mount import MountConfig, open_library
from osufs.server import serve
from osufs.store import fsync_file
from osufs.tier import directory

log = logging.getLogger(__name__)

_FLAG_UTF8 = 0x0800
COPY_CHUNK = 1 << 20


class BucketArchives:
    """Archives of the bucket's sets, written into `folder` when first asked for."""

    def __init__(self, library: Library, folder: Path) -> None:
        self._library = library
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._locks: dict[int, trio.Lock] = {}

    async def ensure(self, set_id: int) -> None:
        """Write the set's archive unless it is there; a set the bucket cannot give whole is
        left out (logged), and the server answers 404 for it."""
        target = self.folder / f"{set_id}.osz"
        if target.exists():
            return
        async with self._locks.setdefault(set_id, trio.Lock()):
            if target.exists():
                return
            library = self._library
            try:
                listing = await library.listing(set_id)
                files: dict[int, Path] = {}
                for index, entry in enumerate(listing.entries):
                    if entry.member >= 0 and not entry.is_dir:
                        files[entry.member] = await library.member_file(set_id, index)
            except OsufsError as error:
                log.info("set %d: not served: %s", set_id, error)
                return
            await trio.to_thread.run_sync(write_archive, listing.members, files, target)
            log.info("set %d: archive written from the bucket", set_id)


def write_archive(members: list[ZipMember], files: dict[int, Path], target: Path) -> None:
    """The archive of `members` whose bytes are in `files` (member number -> file), each
    stored; members without bytes (a directory's entry excepted) are left out. Written to a
    temporary file, fsynced and renamed: a reader sees all of it or nothing."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
    written: list[ZipMember] = []
    try:
        with open(temp, "xb") as out:
            for number, member in enumerate(members):
                if member.flags & FLAG_LOST_ZIP64 or (number not in files and not member.is_dir):
                    continue
                stored = dataclasses.replace(
                    member,
                    method=0,
                    flags=member.flags & _FLAG_UTF8,
                    compressed_size=member.size,
                    header_offset=out.tell(),
                )
                out.write(directory.local_header(stored))
                if number in files:
                    with open(files[number], "rb") as source:
                        shutil.copyfileobj(source, out, COPY_CHUNK)
                written.append(stored)
            out.write(directory.encode(written, out.tell()))
            fsync_file(out)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


async def serve_bucket(
    config: MountConfig,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    **app_options: Any,
) -> None:
    """Serve the bucket of config.shared until cancelled; reports the bound port."""
    async with open_library(config) as library:
        archives = BucketArchives(library, config.cache_dir / "archives")
        await serve(
            archives.folder, host, port, task_status=task_status, provider=archives, **app_options
        )
