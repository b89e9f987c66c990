#!/usr/bin/env python3
"""osufs against its peers, side by side, in one run on the same data (issue 7).

    .venv/bin/python scripts/bench_fs.py [--sets 100000] [--cached 1000] [--workdir DIR]

The peers: `.venv/bin/pip install -e '.[bench]'` (ratarmount) and `apt-get install fuse-zip`;
a peer that is missing is reported as such and its columns left empty.

1. Root `ls -f` and `ls -l` of --sets sets: osufs (index filled directly through Store, mounted
   --offline) against a native directory of as many folders with the same names.
2. `find` and `grep -r` over --cached sample sets (built with real .osu files from the shared
   corpus): osufs (cache filled by `osufs prefetch --all` from `osufs serve`, mounted --offline)
   against the same tree copied to local disk and against ratarmount mounting the folder of
   .osz files (`-r --recursive-extensions osz`: every <id>.osz becomes a directory).
3. Sequential read, 1 MiB chunks, of a --big-mib MiB stored (not deflated) audio member of one
   set: osufs (cached) against native disk, ratarmount and fuse-zip over the same archive.
4. Mount start (process start until os.path.ismount) and the mount's peak memory (VmHWM after
   listing the root) with --sets sets indexed.

Warm figures: one run to warm, then the median of --runs. Every mount runs in its own session
and is unmounted (and its process ended) in `finally`, Ctrl-C and SIGTERM included; the work
directory is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from osufs.names import set_folder_name  # noqa: E402
from osufs.samples import build_sample_library  # noqa: E402
from osufs.store import CatalogueRecord, Store  # noqa: E402
from tests.helpers import Server  # noqa: E402

PYTHON = sys.executable
CORPUS = REPO.parent / "shared" / "corpus" / "osu"
CHUNK = 1 << 20
READY_TIMEOUT = 120.0
MB = 1_000_000

# first ids of the three libraries, far apart so nothing overlaps
INDEX_SEED = 7
CACHED_FIRST_ID = 2_000_001
BIG_FIRST_ID = 3_000_001


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# processes and mounts, always torn down


class Mount:
    """A FUSE mount served by a foreground process of ours, in its own session (so a Ctrl-C at
    the terminal reaches only us, and we unmount in order)."""

    def __init__(self, label: str, command: list[str], mountpoint: Path, log_path: Path) -> None:
        self.label = label
        self.mountpoint = mountpoint
        self.log_path = log_path
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.start_seconds: float | None = None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Seconds from process start until the mountpoint is a mount."""
        deadline = self.started + timeout
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.label} did not mount in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.002)
        self.start_seconds = time.perf_counter() - self.started
        return self.start_seconds

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def peak_rss(self) -> int:
        """VmHWM of the serving process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM")

    def stop(self) -> None:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
            self.process.kill()
            self.process.wait()
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        self._log.close()


class Teardown:
    """Everything started, stopped in reverse order, each once."""

    def __init__(self) -> None:
        self._items: list[Mount | Server] = []

    def add(self, item: Mount | Server) -> Mount | Server:
        self._items.append(item)
        return item

    def stop(self, item: Mount | Server) -> None:
        if item in self._items:
            self._items.remove(item)
            item.stop()

    def stop_all(self) -> None:
        while self._items:
            item = self._items.pop()
            try:
                item.stop()
            except Exception as error:  # keep tearing down the rest
                log(f"teardown: {error}")


def mounts_under(folder: Path) -> list[str]:
    prefix = str(folder.resolve()) + "/"
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(prefix):
                found.append(target)
    return found


# measuring


@dataclass
class Sample:
    warm: float  # median of the timed runs, seconds
    first: float  # the warming run
    runs: list[float] = field(default_factory=list)
    lines: int = 0  # lines the warming run printed (a sanity check across systems)


def time_command(command: list[str], runs: int, ok: tuple[int, ...] = (0,)) -> Sample:
    started = time.perf_counter()
    first = subprocess.run(command, capture_output=True)
    first_seconds = time.perf_counter() - started
    if first.returncode not in ok:
        raise RuntimeError(f"{command} failed ({first.returncode}): {first.stderr[-400:]!r}")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
        if done.returncode not in ok:
            raise RuntimeError(f"{command} failed ({done.returncode})")
    return Sample(statistics.median(times), first_seconds, times, first.stdout.count(b"\n"))


def read_through(path: Path, digest: bool = False) -> tuple[int, str]:
    """Read a file sequentially in 1 MiB chunks; (bytes, sha1 or "")."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    hasher = hashlib.sha1() if digest else None
    total = 0
    with open(path, "rb", buffering=0) as file:
        while count := file.readinto(buffer):
            total += count
            if hasher is not None:
                hasher.update(view[:count])
    return total, hasher.hexdigest() if hasher is not None else ""


def time_read(path: Path, runs: int) -> tuple[Sample, int, str]:
    started = time.perf_counter()
    size, sha1 = read_through(path, digest=True)
    first = time.perf_counter() - started
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        read_through(path)
        times.append(time.perf_counter() - started)
    return Sample(statistics.median(times), first, times), size, sha1


# data


_ARTISTS = [
    "Camellia",
    "xi",
    "Kano",
    "DragonForce",
    "YOASOBI",
    "Silentroom",
    "nekodex",
    "Frums",
    "DJ Noriken",
    "t+pazolite",
    "Aitsuki Nakuru",
    "Team Grimoire",
    "sakuzyo",
    "cYsmix",
    "Feryquitous",
    "Yooh",
    "ARForest",
    "Lime",
    "Kobaryo",
    "Nanahira",
    "LeaF",
    "Sound Souler",
    "Imperial Circus Dead Decadence",
    "Tokyo Machine",
    "Panda Eyes",
    "ginkiha",
    "Hommarju",
    "Function Phantom",
    "Knife Party",
    "The Quick Brown Fox",
    "Halozy",
    "IOSYS",
    "Ryu*",
    "Hatsune Miku",
    "KASAI HARCORES",
    "Mili",
    "Memme",
    "BlackY",
    "Zekk",
    "M2U",
    "sasakure.UK",
    "UNDEAD CORPORATION",
    "Shiina Mota",
    "ClariS",
    "LiSA",
    "Aimer",
    "RADWIMPS",
    "Eve",
    "Ado",
    "Kenshi Yonezu",
    "Porter Robinson",
    "Madeon",
    "Skrillex",
    "Xi vs Sakuzyo",
    "Helblinde",
    "Yuyoyuppe",
    "Various Artists",
    "Akiba Koubou",
    "MYTH & ROID",
    "FELT",
]
_WORDS = [
    "blue",
    "zenith",
    "freedom",
    "dive",
    "night",
    "of",
    "nights",
    "the",
    "big",
    "black",
    "flower",
    "dance",
    "ghost",
    "rule",
    "sky",
    "rain",
    "starlight",
    "moon",
    "crystal",
    "garden",
    "neon",
    "last",
    "letter",
    "afterglow",
    "echo",
    "world",
    "end",
    "heart",
    "fire",
    "ice",
    "dream",
    "parallel",
    "universe",
    "shooting",
    "star",
    "galaxy",
    "collapse",
    "angel",
    "demon",
    "rose",
    "chaos",
    "order",
    "time",
    "machine",
    "hyper",
    "drive",
    "sakura",
    "tsukiyo",
    "kokoro",
    "yume",
    "in",
    "my",
    "your",
    "to",
    "love",
    "song",
    "memories",
    "forever",
    "again",
    "ever",
    "after",
]
_UNICODE_TITLES = [
    "夜に駆ける",
    "千本桜",
    "残響散歌",
    "紅蓮華",
    "ロキ",
    "アイドル",
    "うっせぇわ",
    "群青",
    "Ænima",
    "Señorita",
    "Déjà vu",
    "Ω Infinity",
    "Легенда",
    "천년의 사랑",
]
_SUFFIXES = [" (TV Size)", " (Cut Ver.)", " [Extended Mix]", " (feat. Hatsune Miku)", ": Remix?"]


def realistic_catalogue(count: int, seed: int = INDEX_SEED) -> list[tuple[int, CatalogueRecord]]:
    """`count` sets with sparse real-looking ids and folder names made the way osufs makes them."""
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(1, 2_400_000), count))
    records = []
    for set_id in ids:
        artist = rng.choice(_ARTISTS)
        if rng.random() < 0.08:
            title = rng.choice(_UNICODE_TITLES)
        else:
            title = " ".join(rng.choice(_WORDS).title() for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.15:
            title += rng.choice(_SUFFIXES)
        mtime_ns = rng.randrange(1_200_000_000, 1_730_000_000) * 1_000_000_000
        records.append(
            (set_id, CatalogueRecord(set_folder_name(set_id, artist, title), mtime_ns, "bench"))
        )
    return records


def osufs_mount_command(mountpoint: Path, cache_dir: Path) -> list[str]:
    return [
        PYTHON,
        "-m",
        "osufs",
        "mount",
        str(mountpoint),
        "--foreground",
        "--offline",
        "--cache-dir",
        str(cache_dir),
    ]


def ratarmount_binary() -> str | None:
    local = Path(PYTHON).parent / "ratarmount"
    return str(local) if local.exists() else shutil.which("ratarmount")


def prefetch(server: Server, ids: list[int], cache_dir: Path, log_path: Path) -> None:
    command = [
        PYTHON,
        "-m",
        "osufs",
        "prefetch",
        f"{ids[0]}-{ids[-1]}",
        "--all",
        "--concurrency",
        "8",
        "--source",
        f"hexide={server.url}",
        "--cache-dir",
        str(cache_dir),
    ]
    with open(log_path, "ab") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT)
    summary = log_path.read_text(errors="replace").strip().splitlines()[-1:]
    if done.returncode != 0 or not summary or f"{len(ids)} fetched" not in summary[0]:
        raise RuntimeError(f"prefetch failed: {summary}")


def member_of_size(root: Path, size: int) -> Path:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.stat().st_size == size:
                return path
    raise RuntimeError(f"no file of {size} bytes under {root}")


def wait_listing(root: Path, timeout: float = READY_TIMEOUT) -> None:
    """Some peers answer ismount before their tree is ready; wait for a non-empty root."""
    deadline = time.monotonic() + timeout
    while not any(os.scandir(root)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{root} stayed empty")
        time.sleep(0.05)


# the parts


@dataclass
class Row:
    figure: str
    unit: str
    osufs: float | None
    native: float | None = None
    ratarmount: float | None = None
    fuse_zip: float | None = None
    ratio: str = ""
    target: str = ""
    passed: bool | None = None


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    tail: list[Row] = field(default_factory=list)  # printed last: mount start and memory
    notes: list[str] = field(default_factory=list)


def part_index(args, work: Path, teardown: Teardown, results: Results) -> None:
    """Parts 1 and 4: the root of --sets sets, and mount start and memory."""
    sets = args.sets
    log(f"index: {sets} catalogue records and {sets} native folders")
    records = realistic_catalogue(sets)
    cache_dir = work / "index-cache"
    store = Store(cache_dir)
    try:
        added = store.catalogue_add(records)
    finally:
        store.close()
    assert added == sets, f"catalogue took {added} of {sets}"
    native = work / "index-native"
    native.mkdir()
    for _set_id, record in records:
        os.mkdir(native / record.folder)

    mountpoint = work / "index-mnt"
    starts = []
    for attempt in range(args.runs + 1):
        mount = teardown.add(
            Mount(
                "osufs (index)",
                osufs_mount_command(mountpoint, cache_dir),
                mountpoint,
                work / "logs" / "index-mount.log",
            )
        )
        starts.append(mount.wait_ready())
        if attempt < args.runs:
            teardown.stop(mount)
    log(f"mount starts: {', '.join(f'{s:.3f}' for s in starts)} s")
    try:
        ls_rows = []
        for flags in ("-f", "-l"):
            osufs = time_command(["ls", flags, "--color=never", str(mountpoint)], args.runs)
            local = time_command(["ls", flags, "--color=never", str(native)], args.runs)
            # `ls -f` shows . and .. where readdir returns them (osufs does not); -l has "total"
            wanted = {sets, sets + 2} if flags == "-f" else {sets + 1}
            if osufs.lines not in wanted or local.lines not in wanted:
                raise RuntimeError(f"ls {flags}: {osufs.lines} / {local.lines} lines for {sets}")
            ratio = osufs.warm / local.warm
            ls_rows.append(
                Row(
                    f"ls {flags} root, {sets:,} sets",
                    "s",
                    osufs.warm,
                    local.warm,
                    ratio=f"{ratio:.2f}x nat",
                    target="<= 3x native",
                    passed=ratio <= 3,
                )
            )
            results.notes.append(
                f"ls {flags}: first run (kernel caches cold) osufs {osufs.first:.3f} s, "
                f"native {local.first:.3f} s; runs osufs "
                f"{', '.join(f'{t:.3f}' for t in osufs.runs)}"
            )
        peak = mount.peak_rss()
    finally:
        teardown.stop(mount)
    results.rows[:0] = ls_rows
    start = statistics.median(starts[1:]) if len(starts) > 1 else starts[0]
    results.tail.append(
        Row(f"mount start, {sets:,} sets", "s", start, target="< 1 s", passed=start < 1.0)
    )
    results.tail.append(
        Row(
            "peak RSS after ls -f/-l root",
            "MB",
            peak / MB,
            target="< 300 MB",
            passed=peak < 300 * MB,
        )
    )
    results.notes.append(
        f"mount start: first {starts[0]:.3f} s, then {', '.join(f'{s:.3f}' for s in starts[1:])} "
        f"(median of the later ones reported)"
    )
    shutil.rmtree(native)  # 100k empty directories: free them before the big parts


def part_cached(args, work: Path, teardown: Teardown, results: Results) -> None:
    """Part 2: find and grep -r over --cached cached sets."""
    count = args.cached
    archives = work / "cached-osz"
    log(f"cached: building {count} sample sets (audio {args.audio_size:,} B, corpus {CORPUS})")
    started = time.perf_counter()
    ids = build_sample_library(
        archives,
        count,
        seed=1,
        first_id=CACHED_FIRST_ID,
        audio_size=args.audio_size,
        osu_corpus=CORPUS if CORPUS.is_dir() else None,
    )
    osz_bytes = sum(p.stat().st_size for p in archives.glob("*.osz"))
    log(f"cached: built {osz_bytes / MB:,.0f} MB in {time.perf_counter() - started:.1f} s")
    cache_dir = work / "cached-cache"
    server = teardown.add(Server(archives, work / "logs" / "cached-serve.log"))
    started = time.perf_counter()
    prefetch(server, ids, cache_dir, work / "logs" / "cached-prefetch.log")
    fill = time.perf_counter() - started
    teardown.stop(server)
    log(f"cached: prefetch --all took {fill:.1f} s")
    results.notes.append(
        f"{count} sets, {osz_bytes / MB:,.0f} MB of .osz (audio_size {args.audio_size:,} B; "
        f"real .osu from the corpus); prefetch --all from osufs serve on loopback: {fill:.1f} s"
    )

    mountpoint = work / "cached-mnt"
    mount = teardown.add(
        Mount(
            "osufs (cached)",
            osufs_mount_command(mountpoint, cache_dir),
            mountpoint,
            work / "logs" / "cached-mount.log",
        )
    )
    mount.wait_ready()
    native = work / "cached-native"
    native.mkdir()
    started = time.perf_counter()
    subprocess.run(
        ["cp", "-r", "--preserve=timestamps", f"{mountpoint}/.", str(native)], check=True
    )
    log(f"cached: copied the tree out of osufs in {time.perf_counter() - started:.1f} s")

    rat_mnt = work / "cached-rat"
    rat: Mount | None = None
    rat_bin = ratarmount_binary()
    if rat_bin:
        rat = teardown.add(
            Mount(
                "ratarmount (folder)",
                [rat_bin, "-f", "-r", "--recursive-extensions", "osz", str(archives), str(rat_mnt)],
                rat_mnt,
                work / "logs" / "cached-ratarmount.log",
            )
        )
        rat_start = rat.wait_ready()
        wait_listing(rat_mnt)
        results.notes.append(
            f"ratarmount -r --recursive-extensions osz <folder of {count} .osz>: "
            f"mounted in {rat_start:.2f} s"
        )

    commands: list[tuple[str, Callable[[Path], list[str]], tuple[int, ...]]] = [
        (f"find, {count:,} sets", lambda root: ["find", str(root)], (0,)),
        (
            f"grep -r (all files), {count:,} sets",
            lambda root: ["grep", "-r", "-l", "-a", "Creator:peppy", str(root)],
            (0, 1),
        ),
        (
            f"grep -r --include=*.osu, {count:,}",
            lambda root: ["grep", "-r", "-l", "--include=*.osu", "Creator:peppy", str(root)],
            (0, 1),
        ),
    ]
    try:
        for figure, command, ok in commands:
            log(f"cached: {figure}")
            on_osufs = time_command(command(mountpoint), args.runs, ok)
            on_native = time_command(command(native), args.runs, ok)
            on_rat = time_command(command(rat_mnt), args.runs, ok) if rat else None
            lines = f"osufs {on_osufs.lines}, native {on_native.lines}"
            if on_rat:
                lines += f", ratarmount {on_rat.lines}"
            results.notes.append(
                f"{figure}: output lines {lines}; first runs osufs {on_osufs.first:.2f} s, "
                f"native {on_native.first:.2f} s"
                + (f", ratarmount {on_rat.first:.2f} s" if on_rat else "")
            )
            passed = on_rat is not None and on_osufs.warm < on_rat.warm
            ratio = f"{on_osufs.warm / on_rat.warm:.2f}x rat" if on_rat else "n/a"
            results.rows.append(
                Row(
                    figure,
                    "s",
                    on_osufs.warm,
                    on_native.warm,
                    on_rat.warm if on_rat else None,
                    ratio=ratio,
                    target="< ratarmount",
                    passed=passed,
                )
            )
        results.notes.append(f"osufs peak RSS after part 2: {mount.peak_rss() / MB:.0f} MB")
    finally:
        if rat:
            teardown.stop(rat)
        teardown.stop(mount)
    shutil.rmtree(native)
    shutil.rmtree(cache_dir)


def part_big(args, work: Path, teardown: Teardown, results: Results) -> None:
    """Part 3: warm sequential read of one big stored member."""
    size = args.big_mib << 20
    archives = work / "big-osz"
    log(f"big: one set with a {args.big_mib} MiB stored (not deflated) audio member")
    (set_id,) = build_sample_library(archives, 1, seed=3, first_id=BIG_FIRST_ID, audio_size=size)
    archive = archives / f"{set_id}.osz"
    cache_dir = work / "big-cache"
    server = teardown.add(Server(archives, work / "logs" / "big-serve.log"))
    prefetch(server, [set_id], cache_dir, work / "logs" / "big-prefetch.log")
    teardown.stop(server)

    mountpoint = work / "big-mnt"
    mount = teardown.add(
        Mount(
            "osufs (big)",
            osufs_mount_command(mountpoint, cache_dir),
            mountpoint,
            work / "logs" / "big-mount.log",
        )
    )
    rat_mnt, zip_mnt = work / "big-rat", work / "big-fusezip"
    rat = fz = None
    try:
        mount.wait_ready()
        # A lone sample set is the Japanese one: its audio is 見本.ogg, named in Shift-JIS in the
        # archive, which each peer decodes its own way; so find the member by its size.
        on_osufs_path = member_of_size(mountpoint, size)
        native = work / "big-native.ogg"
        shutil.copyfile(on_osufs_path, native)

        paths = {"osufs": on_osufs_path, "native": native}
        rat_bin = ratarmount_binary()
        if rat_bin:
            rat = teardown.add(
                Mount(
                    "ratarmount (archive)",
                    [rat_bin, "-f", str(archive), str(rat_mnt)],
                    rat_mnt,
                    work / "logs" / "big-ratarmount.log",
                )
            )
            rat.wait_ready()
            wait_listing(rat_mnt)
            paths["ratarmount"] = member_of_size(rat_mnt, size)
        fz_bin = shutil.which("fuse-zip")
        if fz_bin:
            fz = teardown.add(
                Mount(
                    "fuse-zip",
                    [fz_bin, "-f", "-r", str(archive), str(zip_mnt)],
                    zip_mnt,
                    work / "logs" / "big-fusezip.log",
                )
            )
            fz.wait_ready()
            wait_listing(zip_mnt)
            paths["fuse-zip"] = member_of_size(zip_mnt, size)

        speeds: dict[str, float] = {}
        digests = set()
        for name, path in paths.items():
            log(f"big: reading through {name}")
            sample, read, sha1 = time_read(path, args.runs)
            if read != size:
                raise RuntimeError(f"{name}: read {read} bytes, expected {size}")
            digests.add(sha1)
            speeds[name] = size / sample.warm / MB
            results.notes.append(
                f"read {name}: runs {', '.join(f'{t * 1000:.0f}' for t in sample.runs)} ms "
                f"(first {sample.first * 1000:.0f} ms, with sha1)"
            )
        if len(digests) != 1:
            raise RuntimeError(f"the big member differs between systems: {digests}")
    finally:
        for item in (fz, rat, mount):
            if item is not None:
                teardown.stop(item)
    osufs_speed = speeds["osufs"]
    ratio = osufs_speed / speeds["native"]
    peers = [speeds[p] for p in ("ratarmount", "fuse-zip") if p in speeds]
    results.rows.append(
        Row(
            f"warm read {args.big_mib} MiB stored member",
            "MB/s",
            osufs_speed,
            speeds["native"],
            speeds.get("ratarmount"),
            speeds.get("fuse-zip"),
            ratio=f"{ratio:.2f}x nat",
            target=">= 0.9x nat, > peers",
            passed=ratio >= 0.9 and len(peers) == 2 and all(osufs_speed > p for p in peers),
        )
    )


# output


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "MB/s" or unit == "MB":
        return f"{value:,.0f}"
    return f"{value:.3f}" if value < 10 else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    head = ["figure", "unit", "osufs", "native", "ratarmount", "fuse-zip", "ratio", "target", ""]
    body = [
        [
            r.figure,
            r.unit,
            fmt(r.osufs, r.unit),
            fmt(r.native, r.unit),
            fmt(r.ratarmount, r.unit),
            fmt(r.fuse_zip, r.unit),
            r.ratio,
            r.target,
            "-" if r.passed is None else ("PASS" if r.passed else "MISS"),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    numeric = {2, 3, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for name, command in (
        ("ratarmount", [ratarmount_binary() or "ratarmount", "--version"]),
        ("fuse-zip", ["fuse-zip", "-V"]),
    ):
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=30)
            text = [t for t in (out.stdout + out.stderr).splitlines() if name in t.lower()]
            versions.append(text[0].strip() if text else f"{name} ?")
        except (OSError, subprocess.TimeoutExpired):
            versions.append(f"{name} missing")
    # A proactive reclaimer (DAMON_RECLAIM here) evicts page cache idle for seconds, so "warm"
    # holds only within a series of back-to-back runs; say so next to the figures.
    with contextlib.suppress(OSError):
        states = Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/state")
        if any(state.read_text().strip() == "on" for state in states):
            versions.append("DAMON proactive reclaim on (idle page cache is evicted)")
    return (
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {platform.node()}; "
        f"{os.cpu_count()} x {cpu}; {memory:.0f} GiB RAM; Linux {platform.release()}; "
        f"Python {platform.python_version()}; {'; '.join(versions)}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", type=int, default=100_000, help="sets in the index (parts 1, 4)")
    parser.add_argument("--cached", type=int, default=1000, help="cached sets (part 2)")
    parser.add_argument(
        "--audio-size",
        type=int,
        default=1_000_000,
        help="bytes of each audio member of the cached sets",
    )
    parser.add_argument("--big-mib", type=int, default=100, help="size of the big member (part 3)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after the warming one")
    parser.add_argument("--parts", default="1,2,3,4", help="which parts to run (4 implies 1)")
    parser.add_argument("--workdir", type=Path, help="where to build (a temporary dir inside)")
    parser.add_argument("--keep", action="store_true", help="leave the work directory behind")
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",") if p}

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="osufs-benchfs-", dir=args.workdir))
    (work / "logs").mkdir()
    teardown = Teardown()
    results = Results()

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with it ignored, and Python keeps that.
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    header = machine()
    log(f"work directory {work}")
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        if parts & {1, 4}:
            part_index(args, work, teardown, results)
        if 2 in parts:
            part_cached(args, work, teardown, results)
        if 3 in parts:
            part_big(args, work, teardown, results)
    except KeyboardInterrupt:
        log("interrupted; unmounting and cleaning up")
        return 130
    finally:
        teardown.stop_all()
        left = mounts_under(work)
        if left:
            log(f"still mounted, work directory kept: {left}")
        elif args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(f"osufs bench_fs: {header}")
    print(
        f"warm = 1 warming run, then median of {args.runs}; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; total {elapsed:.0f} s\n"
    )
    print(table(results.rows + results.tail))
    print()
    for note in results.notes:
        print(f"- {note}")
    return 0 if all(r.passed is not False for r in results.rows + results.tail) else 1


if __name__ == "__main__":
    sys.exit(main())
