"""A set's tree (`SetListing`): built from zip members, serialised into the index.

Rules, each dropped or renamed member logged at WARNING:
- names are decoded (`decode_names`) and normalised (`normalise_path`); a name that climbs
  ("..") or leaves nothing is dropped, and so is OS clutter (`is_junk`, e.g. __MACOSX/);
- directory members are dropped: directories come from the paths of the files below them, so
  every intermediate directory exists and empty ones vanish;
- the same path twice: the later member wins, as with unzip;
- osu! runs on case-insensitive Windows, so directories differing only in case are merged under
  the first spelling (as extracting on Windows does, keeping every reference working), and a
  file whose name differs only in case from an earlier kept name, or equals a directory's (the
  directory wins), is kept as `stem (n).ext` with the smallest free n, as mount-zip does;
- entries are sorted by casefolded path components, so parents precede children and the same
  members always give the same entries (and so the same inode numbers);
- a directory's mtime is the newest mtime below it.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

import msgpack

from osufs.archive import ZipMember
from osufs.names import case_key, decode_names, is_junk, normalise_path, numbered_name

__all__ = ["FORMAT_VERSION", "Entry", "SetListing", "build_listing"]

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_ZIP_EPOCH_NS = 315_532_800 * 1_000_000_000  # 1980-01-01, for a set with no files at all


@dataclass(frozen=True, slots=True)
class Entry:
    """One file or directory of a set; index 0 of a listing is the set directory itself."""

    name: str  # last component ("" for the set directory)
    parent: int  # index of the parent entry (0 for top-level; the set dir's own parent is 0)
    is_dir: bool
    size: int
    mtime_ns: int
    member: int  # index into SetListing.members, -1 for directories


@dataclass(slots=True)
class SetListing:
    """An archive's members and the tree of entries built from them."""

    members: list[ZipMember]  # every member of the archive, in central-directory order
    entries: list[Entry]
    _children: dict[int, list[int]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _by_name: dict[tuple[int, str], int] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _index(self) -> tuple[dict[int, list[int]], dict[tuple[int, str], int]]:
        if self._children is None or self._by_name is None:
            children: dict[int, list[int]] = {}
            by_name: dict[tuple[int, str], int] = {}
            for i, e in enumerate(self.entries[1:], 1):
                children.setdefault(e.parent, []).append(i)
                by_name[e.parent, e.name] = i
            self._children, self._by_name = children, by_name
        return self._children, self._by_name

    def children(self, index: int) -> list[int]:
        """Indices of a directory's entries, in listing order."""
        return self._index()[0].get(index, [])

    def child(self, index: int, name: str) -> int | None:
        """The entry called exactly `name` in directory `index`, if any."""
        return self._index()[1].get((index, name))

    def path(self, index: int) -> str:
        """The entry's path relative to the set directory ("" for the set directory)."""
        parts = []
        while index:
            entry = self.entries[index]
            parts.append(entry.name)
            index = entry.parent
        return "/".join(reversed(parts))

    def to_bytes(self) -> bytes:
        """msgpack of the members and entries, led by a format version."""
        members = [
            (m.raw_name, m.utf8, m.method, m.flags, m.crc32, m.compressed_size, m.size,
             m.header_offset, m.mtime_ns, m.is_dir)
            for m in self.members
        ]  # fmt: skip
        entries = [(e.name, e.parent, e.is_dir, e.size, e.mtime_ns, e.member) for e in self.entries]
        return msgpack.packb([FORMAT_VERSION, members, entries], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> SetListing:
        """The listing `to_bytes` wrote; ValueError for another version or damaged bytes."""
        try:
            version, members, entries = msgpack.unpackb(data, raw=False)
            if version != FORMAT_VERSION:
                raise ValueError(f"listing format {version}, expected {FORMAT_VERSION}")
            return cls([ZipMember(*m) for m in members], [Entry(*e) for e in entries])
        except (TypeError, msgpack.UnpackException) as exc:
            raise ValueError(f"damaged listing: {exc}") from exc


def build_listing(
    members: list[ZipMember],
    references: Collection[str] = (),
    log: logging.Logger | None = None,
) -> SetListing:
    """The set's tree from its zip members, following the module's rules."""
    log = log or _log
    names = decode_names(members, references)
    by_path: dict[str, int] = {}
    for i, (m, name) in enumerate(zip(members, names, strict=True)):
        if m.is_dir:
            continue
        path = normalise_path(name)
        if path is None:
            log.warning("dropping member %r: unsafe or empty name", name)
        elif is_junk(path):
            log.warning("dropping member %r: operating-system clutter", name)
        else:
            if path in by_path:
                earlier = names[by_path[path]]
                log.warning("dropping member %r: a later member has the same path", earlier)
            by_path[path] = i
    files = sorted(by_path.items(), key=lambda item: item[1])

    # Nodes are (name, parent node, member index or -1); node 0 is the set directory.
    nodes: list[tuple[str, int, int]] = [("", 0, -1)]
    taken: dict[tuple[int, str], int] = {}  # (parent node, case key) -> node
    leaves: list[tuple[int, str, int]] = []
    for path, i in files:
        *dirs, leaf = path.split("/")
        parent = 0
        for name in dirs:
            key = (parent, case_key(name))
            node = taken.get(key)
            if node is None:
                node = taken[key] = len(nodes)
                nodes.append((name, parent, -1))
            parent = node
        leaves.append((parent, leaf, i))
    # Directories are all placed before any file, so a file never displaces a directory; and
    # every file's own name is reserved before any collider is numbered.
    colliders = []
    for parent, leaf, i in leaves:
        key = (parent, case_key(leaf))
        if key in taken:
            colliders.append((parent, leaf, i))
        else:
            taken[key] = len(nodes)
            nodes.append((leaf, parent, i))
    for parent, leaf, i in colliders:
        n = 1
        while (parent, case_key(new := numbered_name(leaf, n))) in taken:
            n += 1
        log.warning("renaming member %r to %r: its name collides ignoring case", leaf, new)
        taken[parent, case_key(new)] = len(nodes)
        nodes.append((new, parent, i))
    return _sorted_listing(members, nodes)


def _sorted_listing(members: list[ZipMember], nodes: list[tuple[str, int, int]]) -> SetListing:
    # Parents are created before their children, so their sort keys are ready in one pass. The
    # exact name breaks casefold ties ("straße" and "strasse" are different names on Windows).
    keys: list[tuple[tuple[str, str], ...]] = [()]
    for name, parent, _ in nodes[1:]:
        keys.append((*keys[parent], (name.casefold(), name)))
    order = sorted(range(len(nodes)), key=keys.__getitem__)
    position = {node: index for index, node in enumerate(order)}
    mtimes = [0] * len(nodes)
    entries: list[Entry] = []
    for node in order:
        name, parent, member = nodes[node]
        if member < 0:
            entries.append(Entry(name, position[parent], True, 0, 0, -1))
        else:
            m = members[member]
            entries.append(Entry(name, position[parent], False, m.size, m.mtime_ns, member))
            mtimes[position[node]] = m.mtime_ns
    # Children follow their parents, so walking backwards finishes each subtree first.
    for index in range(len(entries) - 1, 0, -1):
        parent = entries[index].parent
        mtimes[parent] = max(mtimes[parent], mtimes[index])
    mtimes[0] = mtimes[0] or _ZIP_EPOCH_NS
    for index, entry in enumerate(entries):
        if entry.is_dir:
            entries[index] = Entry(entry.name, entry.parent, True, 0, mtimes[index], -1)
    return SetListing(list(members), entries)
