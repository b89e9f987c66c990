"""Where each part of a writable mount lives, checked and created before anything mounts."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Both engines parse their option list on "," and split lowerdir on ":".
_UNSAFE = (",", ":")


class OverlayError(Exception):
    """The writable layer cannot start or stop; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    """Where each part of a writable mount lives."""

    mountpoint: Path
    writable: Path
    upper: Path
    work: Path
    lower: Path

    @property
    def lower_fsname(self) -> str:
        return lower_fsname(self.mountpoint)

    @property
    def engine_note(self) -> Path:
        """Names the engine that last mounted this upper directory (see kernel.adopt_upper)."""
        return self.writable / "engine"

    def last_engine(self) -> str | None:
        try:
            return self.engine_note.read_text().strip()
        except FileNotFoundError:
            return None

    def note_engine(self, name: str) -> None:
        if self.last_engine() != name:
            self.engine_note.write_text(name + "\n")


def mount_key(mountpoint: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:16]


def lower_fsname(mountpoint: Path) -> str:
    """The lower mount's fsname, by which `osufs umount` finds it wherever it is."""
    return f"osufs-lower-{mount_key(mountpoint)}"


def runtime_base() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return Path(runtime) / "osufs"
    return Path(tempfile.gettempdir()) / f"osufs-{os.getuid()}"


def _private_dir(path: Path) -> None:
    """Create path with mode 0700, or check that an existing one is ours and private."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise OverlayError(f"{path} is not a directory of yours; remove it and mount again")
    if info.st_mode & 0o077:
        path.chmod(0o700)


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def plan(mountpoint: Path, writable: Path) -> Layout:
    """Check the paths and create the directories; mounts nothing."""
    mountpoint = Path(os.path.realpath(mountpoint))
    writable = Path(os.path.realpath(writable))
    if _inside(writable, mountpoint) or _inside(mountpoint, writable):
        raise OverlayError(
            f"the writable folder {writable} and the mountpoint {mountpoint} must be apart "
            "(neither inside the other)"
        )
    lower = runtime_base() / mount_key(mountpoint)
    for path in (mountpoint, writable, lower):
        if any(mark in str(path) for mark in _UNSAFE):
            raise OverlayError(f"{path}: an overlay cannot take a path with ',' or ':'")
    layout = Layout(mountpoint, writable, writable / "upper", writable / "work", lower)
    for path in (layout.writable, layout.upper, layout.work):
        path.mkdir(parents=True, exist_ok=True)
    _private_dir(lower.parent)
    # Not mkdir(exist_ok=True): that stats an existing path, and a lower mount a killed osufs
    # left there answers ENOTCONN until clear_stale takes it down.
    with contextlib.suppress(FileExistsError):
        lower.mkdir(mode=0o700)
    return layout


def share_root(layout: Layout, allow_other: bool, owner: tuple[int, int]) -> None:
    """The merged root takes the upper directory's owner and mode in both engines: 0700 keeps
    the mount to its owner, as FUSE does without allow_other (a kernel overlay has no such
    option). The owner is the library's (who ran sudo, for a root mount)."""
    if (layout.upper.stat().st_uid, layout.upper.stat().st_gid) != owner:
        os.chown(layout.writable, *owner)
        os.chown(layout.upper, *owner)
    layout.upper.chmod(0o755 if allow_other else 0o700)
