"""The FUSE tree: a thin pyfuse3.Operations over the Library.

Inodes are derived from ids (see docs/design.md), so they are stable across mounts and need no
table. Domain errors become their errno here, at one boundary; anything unexpected is logged and
becomes EIO, because an exception escaping a handler would end pyfuse3.main and the mount.

Two modes (docs/pyfuse3.md). With the patched pyfuse3 (patches/pyfuse3), open and opendir
answer ENOSYS: the kernel stops sending OPEN, RELEASE, OPENDIR and RELEASEDIR for the mount,
keeps pages and listings cached across opens, and sends READ and READDIR by inode; reads hold
members open under a lease (fetch/handles.py), and listings that change are invalidated
(kernelcache.py).
With pyfuse3 as released, open and opendir are answered for every file and folder.
"""

from __future__ import annotations

import bisect
import errno
import functools
import logging
import os
import re
import stat
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from osufs.errors import OsufsError
from osufs.kernelcache import KernelListings
from osufs.library import Library
from osufs.listing import SetListing
from osufs.names import MAX_SET_ID
from osufs.rootdir import RootListing

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

ROOT = pyfuse3.ROOT_INODE
SET_SHIFT = 32
ENTRY_MASK = (1 << SET_SHIFT) - 1
ALIAS = ENTRY_MASK  # entry number of the bare-id symlink
# Archive contents never change: let the kernel keep entries and attributes for a day.
TIMEOUT = 86400.0
BLOCK = 4096
# glibc's opendir sizes its getdents buffer from the directory's st_blksize (32 KiB to 1 MiB),
# and the kernel sizes its READDIRPLUS request from that buffer (up to max_pages, 1 MiB with
# libfuse 3.14): so `ls` of the root takes about 5,400 sets a request instead of 170.
ROOT_BLKSIZE = 1 << 20
# Readdir offsets 1 and 2 are `.` and `..`; every other entry's comes after them.
DOTS = 2
XATTRS = (b"user.osufs.set_id", b"user.osufs.cached", b"user.osufs.source")
_BARE_ID = re.compile(rb"[1-9][0-9]{0,9}")
_LEADING_ID = re.compile(rb"([1-9][0-9]{0,9}) ")
# The patched pyfuse3 hands read and readdir the inode (Operations.supports_no_open).
NO_OPEN = hasattr(pyfuse3.Operations, "supports_no_open")


def mode_line(no_open: bool = NO_OPEN) -> str:
    if no_open:
        return "FUSE mode: no-open (patched pyfuse3): the kernel caches pages and listings"
    return "FUSE mode: open per file (pyfuse3 as released): every open and listing asks osufs"


def set_inode(set_id: int, entry: int = 0) -> int:
    return (set_id << SET_SHIFT) | entry


def split_inode(inode: int) -> tuple[int, int]:
    return inode >> SET_SHIFT, inode & ENTRY_MASK


def fuse_errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Map domain errors to their errno and anything unexpected to EIO."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OsufsError as error:
            log.debug("%s: %s", handler.__name__, error)
            raise pyfuse3.FUSEError(error.errno) from None
        except Exception:
            log.exception("%s failed", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Operations(pyfuse3.Operations):
    """Read-only FUSE operations; every write answers EROFS."""

    supports_dot_lookup = False
    supports_no_open = NO_OPEN
    enable_writeback_cache = False

    def __init__(self, library: Library, owner: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.library = library
        self._root = RootListing(library)
        self._uid, self._gid = owner or (os.getuid(), os.getgid())
        self._kernel = KernelListings(library, set_inode)
        if self.supports_no_open:
            library.on_stream_refused(self._kernel.refused)

    async def housekeeping(self) -> None:
        """The root's listing built at once, so that the first readdir finds it; in no-open
        mode, leases that end and listings that change (runs until cancelled)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._build_root)
            if self.supports_no_open:
                nursery.start_soon(self.library.keep_leases)
                nursery.start_soon(self._kernel.watch)

    async def _build_root(self) -> None:
        try:
            await self._root.entries()
        except Exception:
            # The first readdir will try again, and answer for what it finds.
            log.exception("building the root's listing failed")

    # attributes

    def _attributes(
        self, inode: int, mode: int, size: int, mtime_ns: int
    ) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_mode = mode
        attrs.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        attrs.st_size = size
        attrs.st_blksize = BLOCK
        attrs.st_blocks = (size + 511) // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = mtime_ns
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.entry_timeout = attrs.attr_timeout = TIMEOUT
        return attrs

    def _root_attributes(self, mtime_ns: int = 0) -> pyfuse3.EntryAttributes:
        attrs = self._attributes(ROOT, stat.S_IFDIR | 0o555, 0, mtime_ns)
        attrs.st_blksize = ROOT_BLKSIZE
        return attrs

    def _set_attributes(self, set_id: int, mtime_ns: int) -> pyfuse3.EntryAttributes:
        return self._attributes(set_inode(set_id), stat.S_IFDIR | 0o555, 0, mtime_ns)

    def _alias_attributes(self, set_id: int, record: Any) -> pyfuse3.EntryAttributes:
        size = len(record.folder.encode())
        mode = stat.S_IFLNK | 0o777
        return self._attributes(set_inode(set_id, ALIAS), mode, size, record.mtime_ns)

    def _entry_attributes(
        self, set_id: int, listing: SetListing, index: int
    ) -> pyfuse3.EntryAttributes:
        entry = listing.entries[index]
        mode = stat.S_IFDIR | 0o555 if entry.is_dir else stat.S_IFREG | 0o444
        return self._attributes(set_inode(set_id, index), mode, entry.size, entry.mtime_ns)

    async def _attributes_of(self, inode: int) -> pyfuse3.EntryAttributes:
        if inode == ROOT:
            return self._root_attributes(await self._root.newest())
        set_id, index = split_inode(inode)
        record = self.library.record(set_id)
        if index == ALIAS:
            record = record or await self.library.resolve(set_id)
            return self._alias_attributes(set_id, record)
        if index == 0:
            record = record or await self.library.resolve(set_id)
            return self._set_attributes(set_id, record.mtime_ns)
        listing = await self.library.listing(set_id)
        if index >= len(listing.entries):
            raise OsufsError.not_found(f"no inode {inode}")
        return self._entry_attributes(set_id, listing, index)

    # lookups and listings

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode == ROOT:
            return await self._lookup_set(name)
        set_id, index = split_inode(parent_inode)
        listing, child = await self.library.lookup(set_id, index, os.fsdecode(name))
        if not listing.provisional and self._kernel.provisional(set_id):
            await self._kernel.set_completed(set_id)  # the name came with the archive
        return self._entry_attributes(set_id, listing, child)

    async def _lookup_set(self, name: bytes) -> pyfuse3.EntryAttributes:
        if _BARE_ID.fullmatch(name) and int(name) <= MAX_SET_ID:
            set_id = int(name)
            record = await self.library.resolve(set_id)
            await self._kernel.catalogue_changed()  # an unlisted set may have joined
            return self._alias_attributes(set_id, record)
        match = _LEADING_ID.match(name)
        if match:
            set_id = int(match.group(1))
            record = self.library.record(set_id)
            if record is not None and record.folder == os.fsdecode(name):
                return self._set_attributes(set_id, record.mtime_ns)
        raise OsufsError.not_found(f"no set folder {name!r}")

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return await self._attributes_of(inode)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        set_id, index = split_inode(inode)
        if index != ALIAS:
            raise OsufsError(errno.EINVAL, "not a symlink")
        record = await self.library.resolve(set_id)
        return os.fsencode(record.folder)

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self.supports_no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # READDIR then comes by inode, and is cached
        # Free: the kernel opens only what lookup called a directory, and tools that open
        # every set folder (fuse-overlayfs, file managers) must not fetch anything. readdir does.
        return inode

    @fuse_errors
    async def readdir(
        self, fh: int, start_id: int, token: pyfuse3.ReaddirToken, inode: int | None = None
    ) -> None:
        """By inode in the no-open mode; else by the handle opendir gave, which is the inode."""
        inode = fh if inode is None else inode
        if inode == ROOT:
            await self._readdir_root(start_id, token)
            return
        set_id, index = split_inode(inode)
        listing = await self.library.read_dir(set_id)
        if listing.provisional and self.supports_no_open:
            self._kernel.served_provisional(set_id)
        itself = self._entry_attributes(set_id, listing, index)
        if index == 0:
            parent = self._root_attributes()
        else:
            parent = self._entry_attributes(set_id, listing, listing.entries[index].parent)
        if not self._reply_dots(token, start_id, itself, parent):
            return
        children = listing.children(index)
        for position in range(max(start_id - DOTS, 0), len(children)):
            child = children[position]
            attrs = self._entry_attributes(set_id, listing, child)
            name = os.fsencode(listing.entries[child].name)
            if not pyfuse3.readdir_reply(token, name, attrs, position + 1 + DOTS):
                return

    @staticmethod
    def _reply_dots(
        token: pyfuse3.ReaddirToken,
        start_id: int,
        itself: pyfuse3.EntryAttributes,
        parent: pyfuse3.EntryAttributes,
    ) -> bool:
        """`.` and `..` at offsets 1 and 2, as `ls -a` expects; False when the reply is full."""
        for offset, name, attrs in ((1, b".", itself), (2, b"..", parent)):
            if start_id < offset and not pyfuse3.readdir_reply(token, name, attrs, offset):
                return False
        return True

    async def _readdir_root(self, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """After `.` and `..`, the offset is the last set id sent (plus DOTS), so the order is
        stable and a set that joins between requests never makes another be sent twice or
        skipped.

        Set folders differ only in inode and times, and readdir_reply copies the attributes
        into the reply at once, so one object serves every entry (building a fresh one cost
        about 1 µs an entry)."""
        root = await self._root.entries()
        if self.supports_no_open:
            await self._kernel.served_root(self._root.stamp)
        itself = self._root_attributes(root.newest)
        if not self._reply_dots(token, start_id, itself, itself):
            return
        ids, mtimes, names = root.ids, root.mtimes, root.names
        attrs = self._set_attributes(0, 0)
        reply = pyfuse3.readdir_reply
        for index in range(bisect.bisect_right(ids, start_id - DOTS), len(ids)):
            set_id = ids[index]
            attrs.st_ino = set_inode(set_id)
            attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = mtimes[index]
            if not reply(token, names[index], attrs, set_id + DOTS):
                return

    # files

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise OsufsError(errno.EROFS, "read-only filesystem")
        set_id, index = split_inode(inode)
        if inode == ROOT or index in (0, ALIAS):
            raise OsufsError(errno.EISDIR, "not a file")
        if self.supports_no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)  # READ then comes by inode
        fd = await self.library.open_file(set_id, index)
        # Contents never change: the page cache may keep them across opens; not those of a
        # member still streaming in, which may yet fail its CRC.
        return pyfuse3.FileInfo(fh=fd, keep_cache=not self.library.streaming(fd))

    @fuse_errors
    async def read(self, fh: int, off: int, size: int, inode: int | None = None) -> bytes:
        """By inode in the no-open mode (fh is 0); else by the descriptor open gave."""
        if inode is None:
            return await self.library.read(fh, off, size)
        set_id, index = split_inode(inode)
        data = await self.library.read_entry(set_id, index, off, size)
        if self._kernel.provisional(set_id):
            await self._kernel.set_completed(set_id)  # opening it may have fetched the archive
        return data

    @fuse_errors
    async def release(self, fh: int) -> None:
        self.library.close_file(fh)

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """df shows the cache: its size is the budget (or the cache's disk), used is what it
        holds, available is what it may still take; files are the sets listed."""
        space = self.library.cache_space()
        disk = os.statvfs(space.root)
        used = space.used
        room = disk.f_bavail * disk.f_frsize
        if space.budget is not None:
            room = max(0, min(room, space.budget - used))
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = BLOCK
        data.f_blocks = (used + room) // BLOCK
        data.f_bfree = data.f_bavail = room // BLOCK
        data.f_files = space.sets
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # extended attributes, for file managers

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return [] if inode == ROOT or split_inode(inode)[1] == ALIAS else list(XATTRS)

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(b"user."):
            # "Not supported", unlike "no such attribute", makes ls -l stop asking for
            # security.selinux on every entry; the kernel does not cache either answer.
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        set_id, index = split_inode(inode)
        if inode == ROOT or index == ALIAS or name not in XATTRS:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        if name == b"user.osufs.set_id":
            return str(set_id).encode()
        if name == b"user.osufs.source":
            record = self.library.record(set_id)
            return (record.source if record else "").encode()
        return self.library.cached_state(set_id, index).encode()

    # everything that would write

    async def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    create = write = setxattr = removexattr = _read_only
