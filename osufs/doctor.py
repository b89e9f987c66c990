"""`osufs doctor [mount's options]`: what a mount with those options needs, checked one by one
and said in one line each (ok, warning or failure) with the fix: the config file, FUSE (a real
test mount), the mountpoint, the cache directory, its free space against --cache-size and the
free-space bound, the writable layer's engine, and every source (the mount's preflight, with
what each says of its allowance)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from osufs import overlay
from osufs.cache import describe_bound, format_size
from osufs.errors import OsufsError
from osufs.mount import MountConfig, open_library
from osufs.preflight import FAILURE, OK, WARNING, Finding, preflight
from osufs.sources.base import _clock
from osufs.store import Store, StoreError

# The FUSE check mounts an empty file system in a child process and stats it; it is given up
# on (and lazily unmounted) after this long.
FUSE_CHECK_TIMEOUT = 15.0
# Below this much room, a cache cannot hold one big set (an .osz with video runs to 100 MiB).
LEAST_ROOM = 256 << 20


class Doctor:
    """The checks in order, printed as they finish; `run` says whether none failed."""

    def __init__(self, config_path: Path, config_error: str | None) -> None:
        self.config_path = config_path
        self.config_error = config_error
        self.findings: list[Finding] = []

    def say(self, finding: Finding) -> None:
        self.findings.append(finding)
        print(f"{finding.severity:<8} {finding.line()}", flush=True)

    def failed(self, subject: str, text: str, fix: str = "") -> None:
        self.say(Finding(subject, FAILURE, text, fix))

    def run(
        self, config: MountConfig | None, mountpoint: Path | None, *, allow_non_empty: bool
    ) -> bool:
        self.say(self._config())
        self.say(fuse_check())
        if mountpoint is not None:
            self.say(mountpoint_check(mountpoint, allow_non_empty))
        if config is not None:
            for finding in cache_checks(config):
                self.say(finding)
            if config.writable is not None:
                self.say(_engine_check(config.overlay))
            for finding in trio.run(source_checks, config):
                self.say(finding)
        failures = sum(f.severity == FAILURE for f in self.findings)
        warnings = sum(f.severity == WARNING for f in self.findings)
        print(f"{len(self.findings)} checks: {failures} failed, {warnings} warnings")
        return failures == 0

    def _config(self) -> Finding:
        if self.config_error is not None:
            return Finding(
                "config", FAILURE, self.config_error, "fix the file, or move it away for defaults"
            )
        if self.config_path.is_file():
            return Finding("config", OK, f"{self.config_path} read; flags override it")
        return Finding("config", OK, f"none at {self.config_path}: defaults and flags")


def fuse_check() -> Finding:
    """FUSE works: /dev/fuse opens, and an empty file system mounts, answers and unmounts."""
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as error:
        return Finding(
            "fuse",
            FAILURE,
            f"/dev/fuse cannot be opened: {error.strerror}",
            "load the module (modprobe fuse) or, in a container, pass --device /dev/fuse",
        )
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return Finding("fuse", FAILURE, "fusermount3 is missing", "install the fuse3 package")
    folder = tempfile.mkdtemp(prefix="osufs-doctor-")
    command = [sys.executable, "-m", "osufs.doctor_fuse", folder]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FUSE_CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        subprocess.run(["fusermount3", "-u", "-z", folder], capture_output=True)
        return Finding(
            "fuse", FAILURE, f"a test mount did not answer in {FUSE_CHECK_TIMEOUT:g} s", ""
        )
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no reason given"])[-1]
        return Finding(
            "fuse",
            FAILURE,
            f"a test mount failed: {said}",
            "check that fuse3 is installed and that you may mount (user_allow_other is not needed)",
        )
    return Finding("fuse", OK, "a test file system mounted, answered and unmounted")


def mountpoint_check(mountpoint: Path, allow_non_empty: bool) -> Finding:
    subject = f"mountpoint {mountpoint}"
    if not mountpoint.is_dir():
        return Finding(subject, FAILURE, "is not a directory", f"mkdir {mountpoint}")
    if os.path.ismount(mountpoint):
        return Finding(subject, WARNING, "is mounted already", f"osufs umount {mountpoint} first")
    try:
        holds = any(True for _ in os.scandir(mountpoint))
    except OSError as error:
        return Finding(subject, FAILURE, f"cannot be read: {error.strerror}", "")
    if holds and not allow_non_empty:
        return Finding(
            subject,
            FAILURE,
            "is not empty (its files would be hidden while mounted)",
            "mount on an empty folder, or pass --allow-non-empty",
        )
    return Finding(subject, OK, "an empty folder" if not holds else "not empty (allowed)")


def cache_checks(config: MountConfig) -> list[Finding]:
    """The cache directory opens as a mount opens it; its disk's room against the bounds."""
    subject = f"cache {config.cache_dir}"
    if not os.access(config.cache_dir, os.W_OK | os.X_OK):
        return [Finding(subject, FAILURE, "is not writable", "choose another --cache-dir")]
    try:
        store = Store(config.cache_dir, budget=config.cache_size)
    except (StoreError, OsufsError, OSError) as error:
        return [Finding(subject, FAILURE, f"cannot be opened: {error}", "")]
    try:
        if config.min_free_space is not None:  # as the mount would keep it (not recorded)
            store.room.fraction = config.min_free_space
        bound = store.space()
        stats = store.stats()
    finally:
        store.close()
    found = [
        Finding(
            subject,
            OK,
            f"{stats.sets} sets cached in {format_size(stats.stored_bytes)}; "
            f"{stats.listed_sets} sets listed",
        )
    ]
    space = (
        f"keeps {bound.fraction:.0%} of its disk free ({format_size(bound.keep_free)} of "
        f"{format_size(bound.fs_size)}, {format_size(bound.fs_free)} free); "
        + describe_bound(bound)
    )
    if config.cache_size is not None and bound.first == "free space":
        found.append(
            Finding(
                "free space",
                WARNING,
                f"--cache-size {format_size(config.cache_size)} is more than the disk can give: "
                + space,
                "the free-space bound applies first; free some space or lower --cache-size",
            )
        )
    elif bound.limit < LEAST_ROOM:
        found.append(
            Finding(
                "free space",
                FAILURE if bound.room == 0 else WARNING,
                space,
                "free space on that disk or choose a --cache-dir on a larger one"
                if bound.first == "free space"
                else "raise --cache-size",
            )
        )
    else:
        found.append(Finding("free space", OK, space))
    return found


async def source_checks(config: MountConfig) -> list[Finding]:
    """The mount's preflight over the mount's own sources, each line with its allowance."""
    if not config.sources:
        if config.offline:
            return [Finding("sources", OK, "none (--offline: only the cache is served)")]
        return [
            Finding(
                "sources",
                FAILURE,
                "none given",
                "give --source (e.g. --source catboy), or --offline to serve the cache",
            )
        ]
    try:
        async with open_library(config) as library:
            findings = await preflight(library.sources)
            return [
                _with_allowance(finding, source)
                for finding, source in zip(findings, library.sources, strict=True)
            ]
    except (OsufsError, StoreError) as error:
        return [Finding("sources", FAILURE, str(error), "")]


def _with_allowance(finding: Finding, source: object) -> Finding:
    """A source's line, with how osufs paces it and when its next request could go."""
    allowance = getattr(source, "allowance", None)
    shape = getattr(allowance, "shape", None)
    if allowance is None or shape is None:
        return finding
    window = {60.0: "minute", 3600.0: "hour"}.get(shape.window, f"{shape.window:g} s")
    free = allowance.free_at()
    when = "now" if free <= time.time() else f"at {_clock(free)}"
    paced = f"osufs sends it at most {shape.limit:g} a {window}; the next request can go {when}"
    return Finding(finding.subject, finding.severity, f"{finding.text}; {paced}", finding.fix)


def _engine_check(engine: str) -> Finding:
    try:
        overlay.check_engine(engine)
    except overlay.OverlayError as error:
        return Finding("writable layer", FAILURE, str(error), "")
    return Finding("writable layer", OK, f"--overlay {engine} can mount")
