"""A set's tree (`SetListing`): built from zip members, serialised into the index.

Rules, each dropped or renamed member logged at WARNING (OS clutter summed up in one INFO line):
- names are decoded (`decode_names`) and normalised (`normalise_path`); a name that climbs
  ("..") or leaves nothing is dropped, and so is OS clutter (`is_junk`, e.g. __MACOSX/);
- directory members are dropped: directories come from the paths of the files below them, so
  every intermediate directory exists and empty ones vanish;
- the same path twice: the later member wins, as with unzip;
- directories differing only in case are merged under the first spelling (as extracting on
  Windows does, keeping every reference to either working); files keep their exact names, as
  unzip on Linux does, so `BG.png` and `bg.png` are both there and a .osu naming either finds
  its own bytes (Wine tries the exact name before any other case). A file whose name equals
  another's in the same (merged) directory, or a directory's (the directory wins), is kept as
  `stem (n).ext` with the smallest free n, as mount-zip does;
- entries are sorted by casefolded path components, so parents precede children and the same
  members always give the same entries (and so the same inode numbers);
- a directory's mtime is the newest mtime below it.

A set listed before its archive (docs/sources.md, "Listing a set without its archive") has a
provisional listing: only its difficulties, fetched one by one and *pinned*: entries 1..N, by
name, with the size of their checked bytes and the set's update time. When the archive's
directory arrives, `complete_listing` keeps every pinned entry as it is and appends the
archive's other members after them (an archive `.osu` with a pinned one's bytes, or name, is
hidden under the pinned entry), so no entry number, size or time ever changes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

import msgpack

from osufs.archive import ZipMember
from osufs.names import case_key, decode_names, is_junk, normalise_path, numbered_name

__all__ = [
    "FORMAT_VERSION",
    "Entry",
    "Pin",
    "PinnedFile",
    "SetListing",
    "build_listing",
    "complete_listing",
    "provisional_listing",
]

_log = logging.getLogger(__name__)

# 2 added pins and the provisional mark; 3 keeps a pin's md5 as its 16 bytes, not 32 hex digits
# (a sixth of a provisional listing). Formats 1 (neither) and 2 are still read.
FORMAT_VERSION = 3
_ZIP_EPOCH_NS = 315_532_800 * 1_000_000_000  # 1980-01-01, for a set with no files at all


@dataclass(frozen=True, slots=True)
class Entry:
    """One file or directory of a set; index 0 of a listing is the set directory itself."""

    name: str  # last component ("" for the set directory)
    parent: int  # index of the parent entry (0 for top-level; the set dir's own parent is 0)
    is_dir: bool
    size: int
    mtime_ns: int
    # Index into SetListing.members; -1 for directories and for a pinned entry whose bytes
    # the archive lacks (or that has no archive yet).
    member: int


@dataclass(frozen=True, slots=True)
class Pin:
    """A difficulty listed before its archive: its beatmap id, and its bytes' md5 and CRC32."""

    beatmap_id: int
    md5: str
    crc32: int


@dataclass(frozen=True, slots=True)
class PinnedFile:
    """A difficulty's file for a provisional listing: its name, size and pin."""

    name: str
    size: int
    pin: Pin


@dataclass(slots=True)
class SetListing:
    """An archive's members and the tree of entries built from them, after any pinned ones."""

    members: list[ZipMember]  # every member of the archive, in central-directory order
    entries: list[Entry]
    pins: list[Pin] = field(default_factory=list)  # of entries 1..len(pins)
    provisional: bool = False  # only the pinned difficulties: the archive is not known yet
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

    def pin(self, index: int) -> Pin | None:
        """The pin of a pinned entry; None for any other."""
        return self.pins[index - 1] if 1 <= index <= len(self.pins) else None

    def member(self, index: int) -> ZipMember | None:
        """The archive member holding an entry's bytes; None for directories and for pinned
        entries the archive does not have."""
        number = self.entries[index].member
        return self.members[number] if number >= 0 else None

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
        pins = [(p.beatmap_id, bytes.fromhex(p.md5), p.crc32) for p in self.pins]
        return msgpack.packb(
            [FORMAT_VERSION, members, entries, pins, self.provisional], use_bin_type=True
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SetListing:
        """The listing `to_bytes` wrote (or format 1's); ValueError for another version or
        damaged bytes."""
        try:
            version, members, entries, *rest = msgpack.unpackb(data, raw=False)
            if version == 1 and not rest:
                pins, provisional = [], False
            elif version == FORMAT_VERSION:
                packed, provisional = rest
                pins = [Pin(beatmap_id, md5.hex(), crc32) for beatmap_id, md5, crc32 in packed]
            elif version == 2:
                packed, provisional = rest
                pins = [Pin(*p) for p in packed]
            else:
                raise ValueError(f"listing format {version}, expected {FORMAT_VERSION}")
            return cls(
                [ZipMember(*m) for m in members],
                [Entry(*e) for e in entries],
                pins,
                bool(provisional),
            )
        except (TypeError, msgpack.UnpackException) as exc:
            raise ValueError(f"damaged listing: {exc}") from exc


def build_listing(
    members: list[ZipMember],
    references: Collection[str] = (),
    log: logging.Logger | None = None,
) -> SetListing:
    """The set's tree from its zip members, following the module's rules."""
    log = log or _log
    return _sorted_listing(members, _tree(_member_paths(members, references, log), log))


def provisional_listing(files: list[PinnedFile], mtime_ns: int) -> SetListing:
    """A set's pinned difficulties, entries 1..N by name, all with the set's time; equal names
    are numbered like colliding members."""
    named: list[tuple[str, PinnedFile]] = []
    taken: set[str] = set()
    for file in sorted(files, key=lambda f: (f.name.casefold(), f.name, f.pin.beatmap_id)):
        name, n = file.name, 0
        while name in taken:
            n += 1
            name = numbered_name(file.name, n)
        taken.add(name)
        named.append((name, file))
    named.sort(key=lambda item: (item[0].casefold(), item[0]))
    entries = [Entry("", 0, True, 0, mtime_ns, -1)]
    entries += [Entry(name, 0, False, file.size, mtime_ns, -1) for name, file in named]
    return SetListing([], entries, [file.pin for _name, file in named], provisional=True)


def complete_listing(
    provisional: SetListing,
    members: list[ZipMember],
    references: Collection[str] = (),
    log: logging.Logger | None = None,
    where: str = "",
) -> SetListing:
    """A provisional listing completed by its archive: the pinned entries unchanged, then the
    archive's members but the .osu files a pinned entry stands for (same bytes by size and
    CRC32, or same name), in build_listing's order. A pinned entry whose bytes the archive
    holds points at that member. Every difference of name or bytes is logged."""
    log = log or _log
    pinned = provisional.entries[1 : len(provisional.pins) + 1]
    by_bytes = {
        (e.size, p.crc32): i
        for i, (e, p) in enumerate(zip(pinned, provisional.pins, strict=True), 1)
    }
    by_name = {case_key(e.name): i for i, e in enumerate(pinned, 1)}
    holders: dict[int, int] = {}
    kept: list[tuple[str, int]] = []
    for path, number in _member_paths(members, references, log):
        member = members[number]
        if "/" in path or not path.lower().endswith(".osu"):
            kept.append((path, number))
            continue
        same = by_bytes.get((member.size, member.crc32))
        if same is not None:
            holders.setdefault(same, number)
            if path != pinned[same - 1].name:
                log.warning(
                    "%sthe archive names %r as %r; it stays listed under the name its own "
                    "metadata gives",
                    where,
                    pinned[same - 1].name,
                    path,
                )
        elif case_key(path) in by_name:
            log.warning(
                "%sthe archive's %r differs from the copy listed before it came (the site's "
                "current file); the listed copy stays",
                where,
                path,
            )
        else:
            log.info("%sthe archive adds %r, a difficulty not listed before it came", where, path)
            kept.append((path, number))
    rest = _sorted_listing(members, _tree(kept, log, reserved=[e.name for e in pinned]))
    offset = len(pinned)
    entries = [provisional.entries[0]]
    entries += [
        Entry(e.name, 0, False, e.size, e.mtime_ns, holders.get(i, -1))
        for i, e in enumerate(pinned, 1)
    ]
    entries += [
        Entry(e.name, e.parent + offset if e.parent else 0, e.is_dir, e.size, e.mtime_ns, e.member)
        for e in rest.entries[1:]
    ]
    newest = max((e.mtime_ns for e in entries[1:]), default=provisional.entries[0].mtime_ns)
    entries[0] = Entry("", 0, True, 0, newest, -1)
    return SetListing(list(members), entries, list(provisional.pins))


def _member_paths(
    members: list[ZipMember], references: Collection[str], log: logging.Logger
) -> list[tuple[str, int]]:
    """(path, member index) of every member that becomes a file, in member order."""
    names = decode_names(members, references)
    by_path: dict[str, int] = {}
    clutter = 0
    for i, (m, name) in enumerate(zip(members, names, strict=True)):
        if m.is_dir:
            continue
        path = normalise_path(name)
        if path is None:
            log.warning("dropping member %r: unsafe or empty name", name)
        elif is_junk(path):
            clutter += 1  # routine: most archives made on a Mac carry __MACOSX/
        else:
            if path in by_path:
                earlier = names[by_path[path]]
                log.warning("dropping member %r: a later member has the same path", earlier)
            by_path[path] = i
    if clutter:
        log.info("left out %d members of operating-system clutter (__MACOSX/ and such)", clutter)
    return sorted(by_path.items(), key=lambda item: item[1])


def _tree(
    files: list[tuple[str, int]], log: logging.Logger, reserved: Collection[str] = ()
) -> list[tuple[str, int, int]]:
    """Nodes (name, parent node, member index or -1) of the files' tree; node 0 is the set
    directory. `reserved` are top-level names already taken (pinned files): a file or
    directory of that exact name is numbered."""
    nodes: list[tuple[str, int, int]] = [("", 0, -1)]
    folders: dict[tuple[int, str], int] = {}  # (parent, case key) -> directory node
    taken: set[tuple[int, str]] = {(0, name) for name in reserved}  # exact names in use
    leaves: list[tuple[int, str, int]] = []
    for path, i in files:
        *dirs, leaf = path.split("/")
        parent = 0
        for name in dirs:
            key = (parent, case_key(name))
            node = folders.get(key)
            if node is None:
                spelling = name
                if (parent, name) in taken:
                    spelling = _free_name(taken, parent, name)
                    log.warning(
                        "renaming directory %r to %r: a listed file has its name", name, spelling
                    )
                node = folders[key] = len(nodes)
                taken.add((parent, spelling))
                nodes.append((spelling, parent, -1))
            parent = node
        leaves.append((parent, leaf, i))
    # Directories are all placed before any file, so a file never displaces a directory; and
    # every file's own name is reserved before any collider is numbered.
    colliders = []
    for parent, leaf, i in leaves:
        if (parent, leaf) in taken:
            colliders.append((parent, leaf, i))
        else:
            taken.add((parent, leaf))
            nodes.append((leaf, parent, i))
    for parent, leaf, i in colliders:
        new = _free_name(taken, parent, leaf)
        log.warning("renaming member %r to %r: its folder holds that name already", leaf, new)
        taken.add((parent, new))
        nodes.append((new, parent, i))
    return nodes


def _free_name(taken: set[tuple[int, str]], parent: int, name: str) -> str:
    n = 1
    while (parent, new := numbered_name(name, n)) in taken:
        n += 1
    return new


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
