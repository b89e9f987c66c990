"""osu! stable living in the mount (issue 9): the writable layer through real mounts.

`osufs mount --writable DIR` over the real `osufs serve`, by each engine (the kernel's
overlayfs and fuse-overlayfs): imports (an .osz dropped into the root, extracted into a new
folder), updates (a .osu overwritten or replaced), deletions (a difficulty, a whole set) and
renames land in DIR and survive remounts, while the cache and the source folder stay exactly as
they were; one DIR moves between the engines; `auto` picks and falls back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs import overlay
from osufs.overlay import kernel
from osufs.overlay.table import detach
from osufs.samples import build_sample_library
from osufs.store import Store
from tests.helpers import REAL_ARCHIVES, Mount, Server, mounted, mounted_from, osufs_command
from tests.test_mount import expected_members

USABLE = {
    "kernel": kernel.may_mount(),
    "fuse-overlayfs": shutil.which("fuse-overlayfs") is not None,
}
needs_fuse_overlayfs = pytest.mark.skipif(
    not USABLE["fuse-overlayfs"], reason="fuse-overlayfs is not installed"
)
needs_kernel = pytest.mark.skipif(
    not USABLE["kernel"], reason="the kernel's overlayfs needs CAP_SYS_ADMIN"
)
ENGINES = [
    pytest.param("kernel", marks=needs_kernel),
    pytest.param("fuse-overlayfs", marks=needs_fuse_overlayfs),
]
MOUNT_TYPES = {"kernel": "overlay", "fuse-overlayfs": "fuse.fuse-overlayfs"}
# xino=on with one lower layer: the kernel tags the lower layer's inode numbers with it.
KERNEL_LOWER_TAG = 1 << 63

SONGS_SCAN = Path(__file__).resolve().parents[1] / "scripts" / "songs_scan.py"
MARKER = b"// written through the writable layer 7f3a9c"
RENATUS = "Soleily - Renatus (Gamu) [Insane].osu"
SAMPLES = 4
FIRST_SAMPLE = 100001


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    for set_id, path in enumerate(REAL_ARCHIVES, start=1):
        shutil.copy(path, folder / f"{set_id}.osz")
    build_sample_library(folder, count=SAMPLES, first_id=FIRST_SAMPLE)
    return folder


@pytest.fixture(scope="module")
def new_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An .osz no source has, as osu!direct or a browser download would bring it."""
    folder = tmp_path_factory.mktemp("download")
    # Two, as the last sample set has Shift-JIS names, which Python's zipfile would not decode.
    set_id, _japanese = build_sample_library(folder, count=2, first_id=900001, seed=9)
    path = folder / f"{set_id}.osz"
    return path.rename(folder / f"{set_id} Downloaded - Set.osz")


def runtime_env(tmp_path: Path) -> dict[str, str]:
    """A runtime directory of the test's own, so the lower mount lives under tmp_path."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {"XDG_RUNTIME_DIR": str(runtime)}


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


def unmount_all(mountpoint: Path) -> None:
    """Lazily unmount whatever is left at mountpoint and its lower directory."""
    for entry in [overlay.mounted_at(mountpoint), *overlay.lower_mounts(mountpoint)]:
        if entry is not None:
            detach(entry)


@contextlib.contextmanager
def writable_mount(
    tmp_path: Path,
    server: Server,
    *extra: str,
    engine: str,
    module: str = "osufs",
    mountpoint: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Mount]:
    """A writable mount of the test's library by engine (at tmp_path/mnt unless given); the
    overlay and the lower mount are always gone afterwards (unmounted lazily here if the mount
    process did not manage it)."""
    mountpoint = mountpoint or tmp_path / "mnt"
    try:
        with mounted(
            mountpoint,
            tmp_path / "cache",
            tmp_path / "mount.log",
            "--source",
            f"hexide={server.url}",
            "--writable",
            str(tmp_path / "layer"),
            "--overlay",
            engine,
            *extra,
            env={**runtime_env(tmp_path), **(env or {})},
            module=module,
        ) as mount:
            if engine != "auto":
                assert engine_of(mount) == engine
            yield mount
    finally:
        unmount_all(mountpoint)
    assert overlay.mounted_at(mountpoint) is None
    assert not overlay.lower_mounts(mountpoint), "the lower mount outlived the overlay"


def engine_of(mount: Mount) -> str:
    entry = overlay.mounted_at(mount.mountpoint)
    assert entry is not None
    return {fstype: name for name, fstype in MOUNT_TYPES.items()}[entry.fstype]


def folder_of(root: Path, set_id: int) -> Path:
    matches = [name for name in os.listdir(root) if name.startswith(f"{set_id} ")]
    assert len(matches) == 1, matches
    return root / matches[0]


def read_tree(folder: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            if name.startswith(".wh."):
                continue  # fuse-overlayfs's own markers, seen only in the upper directory
            path = Path(dirpath) / name
            found[str(path.relative_to(folder))] = path.read_bytes()
    return found


def hash_files(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.endswith(skip):
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def cache_state(cache: Path) -> dict[str, object]:
    """Every content file by hash, and what the index says about every set. Access times and hit
    counters are left out: reading through the overlay legitimately updates them."""
    with contextlib.closing(Store(cache)) as store:
        catalogue = store.catalogue_page(0, 1 << 20)
        listings = {i: store.listing_get(i) for i, _ in catalogue}
        state = {
            "catalogue": catalogue,
            "listings": {i: x.to_bytes() for i, x in listings.items() if x is not None},
            "cached": {i: sorted(store.cached_entries(i)) for i, _ in catalogue},
        }
    state["content"] = hash_files(cache / "content")
    return state


def assert_marker_absent(cache: Path) -> None:
    for path in cache.rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), f"written bytes reached the cache: {path}"


def test_import_osz_and_extracted_folder(
    server: Server, archives: Path, new_set: Path, tmp_path: Path, engine: str
):
    sources = hash_files(archives)
    with writable_mount(tmp_path, server, engine=engine) as mount:
        root = mount.mountpoint
        listed = set(os.listdir(root))
        for set_id in (1, FIRST_SAMPLE):
            read_tree(folder_of(root, set_id))  # as osu!'s first scan would
    before = cache_state(tmp_path / "cache")

    members = expected_members(new_set)
    folder_name = new_set.stem
    with writable_mount(tmp_path, server, engine=engine) as mount:
        root = mount.mountpoint
        # osu! finds the .osz in Songs, extracts it to a folder of its name, deletes the .osz.
        shutil.copy(new_set, root / new_set.name)
        assert new_set.name in os.listdir(root)
        assert (root / new_set.name).read_bytes() == new_set.read_bytes()
        with zipfile.ZipFile(root / new_set.name) as zf:
            zf.extractall(root / folder_name)
        os.remove(root / new_set.name)
        assert set(os.listdir(root)) == listed | {folder_name}
        assert read_tree(root / folder_name) == members
        # The library is still all there beside it.
        assert read_tree(folder_of(root, 1)) == expected_members(archives / "1.osz")

    with writable_mount(tmp_path, server, engine=engine) as mount:
        assert set(os.listdir(mount.mountpoint)) == listed | {folder_name}
        assert read_tree(mount.mountpoint / folder_name) == members
    assert read_tree(tmp_path / "layer" / "upper" / folder_name) == members
    assert cache_state(tmp_path / "cache") == before
    assert hash_files(archives) == sources


def test_updated_osu_shadows_the_archive(
    server: Server, archives: Path, tmp_path: Path, engine: str
):
    sources = hash_files(archives)
    original = expected_members(archives / "1.osz")
    with writable_mount(tmp_path, server, engine=engine) as mount:
        read_tree(folder_of(mount.mountpoint, 1))
    before = cache_state(tmp_path / "cache")

    others = sorted(n for n in original if n.endswith(".osu") and n != RENATUS)
    updated = original[RENATUS] + b"\r\n" + MARKER + b"\r\n"
    replaced = MARKER + b" replaced"
    with writable_mount(tmp_path, server, engine=engine) as mount:
        folder = folder_of(mount.mountpoint, 1)
        assert (folder / RENATUS).read_bytes() == original[RENATUS]
        # The editor saves in place; a map update writes a new file and replaces the old one.
        with open(folder / RENATUS, "wb") as file:
            file.write(updated)
        assert (folder / RENATUS).read_bytes() == updated
        assert os.stat(folder / RENATUS).st_size == len(updated)
        (folder / "update.tmp").write_bytes(replaced)
        os.replace(folder / "update.tmp", folder / others[0])
        assert (folder / others[0]).read_bytes() == replaced

    with writable_mount(tmp_path, server, engine=engine) as mount:
        tree = read_tree(folder_of(mount.mountpoint, 1))
    assert tree == {**original, RENATUS: updated, others[0]: replaced}
    assert cache_state(tmp_path / "cache") == before
    assert_marker_absent(tmp_path / "cache")
    assert hash_files(archives) == sources


def test_deletions_and_renames_stay_across_remounts(
    server: Server, archives: Path, tmp_path: Path, engine: str
):
    sources = hash_files(archives)
    original = expected_members(archives / "1.osz")
    with writable_mount(tmp_path, server, engine=engine) as mount:
        root = mount.mountpoint
        listed = set(os.listdir(root))
        doomed = folder_of(root, FIRST_SAMPLE)
        for set_id in (1, FIRST_SAMPLE, FIRST_SAMPLE + 1):
            read_tree(folder_of(root, set_id))
    before = cache_state(tmp_path / "cache")

    renamed = "Soleily - Renatus (Gamu) [Renamed].osu"
    difficulty = sorted(n for n in original if n.endswith(".osu") and n != RENATUS)[0]
    with writable_mount(tmp_path, server, engine=engine) as mount:
        root = mount.mountpoint
        folder = folder_of(root, 1)
        os.remove(folder / difficulty)
        os.rename(folder / RENATUS, folder / renamed)
        shutil.rmtree(doomed.parent / doomed.name)
        assert doomed.name not in os.listdir(root)
        assert difficulty not in os.listdir(folder)
        # A library folder cannot be renamed: neither engine has redirect_dir (documented).
        with pytest.raises(OSError) as caught:
            os.rename(folder_of(root, FIRST_SAMPLE + 1), root / "moved")
        assert caught.value.errno == errno.EXDEV

    with writable_mount(tmp_path, server, engine=engine) as mount:
        root = mount.mountpoint
        assert set(os.listdir(root)) == listed - {doomed.name}
        with pytest.raises(FileNotFoundError):
            os.stat(root / doomed.name)
        folder = folder_of(root, 1)
        with pytest.raises(FileNotFoundError):
            os.stat(folder / difficulty)
        tree = read_tree(folder)
    expected = {k: v for k, v in original.items() if k not in (difficulty, RENATUS)}
    assert tree == {**expected, renamed: original[RENATUS]}
    assert cache_state(tmp_path / "cache") == before
    assert hash_files(archives) == sources


def test_overlay_start_costs_no_network(
    server: Server, archives: Path, tmp_path: Path, engine: str
):
    """fuse-overlayfs loads the whole root as it starts, and the kernel's overlayfs looks up
    every entry of the root as it lists it: that must be index reads only."""
    with writable_mount(tmp_path, server, engine=engine):
        pass  # the first mount fetches the set list
    start = server.stats()
    # No reading ahead: the next sets' listings would be requests of their own.
    with writable_mount(tmp_path, server, "--read-ahead", "0", engine=engine) as mount:
        root = mount.mountpoint
        names = os.listdir(root)
        tag = KERNEL_LOWER_TAG if engine == "kernel" else 0
        for name in names:
            st = os.stat(root / name)
            # osufs's inode: passed through, or tagged with its layer
            assert st.st_ino == tag | int(name.split(" ", 1)[0]) << 32
        # Only the mount's preflight asked the source (once, for set 1's info).
        probed = start["requests"] + 1
        after = server.stats()
        assert after["requests"] == probed, "starting the overlay or listing the root fetched"
        assert after["downloads"] == start["downloads"]
        # The bare id resolves through the kernel's overlay, as in the read-only mount; not
        # through fuse-overlayfs, which answers from the listing it loaded (README).
        assert (root / "1").exists() == (engine == "kernel")
        os.listdir(folder_of(root, 1))
        assert server.stats()["requests"] == probed + 1  # the archive's tail
        assert server.stats()["downloads"].get("1") == start["downloads"].get("1", 0) + 1
    assert len(names) == len(list(archives.glob("*.osz")))


def test_read_only_without_writable(server: Server, tmp_path: Path):
    with mounted_from(server, tmp_path) as mount:
        folder = folder_of(mount.mountpoint, 1)
        attempts = [
            lambda: os.open(folder / RENATUS, os.O_WRONLY | os.O_TRUNC),
            lambda: os.unlink(folder / RENATUS),
            lambda: os.mkdir(mount.mountpoint / "900001 New - Set"),
            lambda: os.open(mount.mountpoint / "900001.osz", os.O_WRONLY | os.O_CREAT),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EROFS
        assert overlay.mounted_at(mount.mountpoint).fstype == "fuse.osufs"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        osufs_command(*args),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize("form", ["read-only", *ENGINES])
def test_umount_command_for_every_form(server: Server, tmp_path: Path, form: str):
    env = runtime_env(tmp_path)
    source = ("--source", f"hexide={server.url}", "--cache-dir", str(tmp_path / "cache"))
    writable = () if form == "read-only" else ("--writable", str(tmp_path / "layer"))
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        overlay_choice = () if form == "read-only" else ("--overlay", form)
        started = run_cli("mount", str(mountpoint), *source, *writable, *overlay_choice, env=env)
        assert started.returncode == 0, started.stderr
        assert os.listdir(mountpoint)
        stopped = run_cli("umount", str(mountpoint), env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert overlay.mounted_at(mountpoint) is None
        assert not overlay.lower_mounts(mountpoint)
    finally:
        unmount_all(mountpoint)


def test_a_killed_mount_is_cleared(server: Server, tmp_path: Path, engine: str):
    """After a SIGKILL, `osufs umount` and the next mount take down what is left: the lower
    mount (fuse-overlayfs dies with osufs), or the kernel's overlay and the lower mount."""
    env = runtime_env(tmp_path)
    mountpoint = tmp_path / "mnt"
    args = ("--writable", str(tmp_path / "layer"), "--overlay", engine)
    source = ("--source", f"hexide={server.url}", "--cache-dir", str(tmp_path / "cache"))
    killed: list[Mount] = []
    try:
        for clear in ("umount", "mount"):
            mount = Mount(
                mountpoint, tmp_path / "cache", tmp_path / "mount.log", *source[:2], *args, env=env
            )
            killed.append(mount)
            (mountpoint / "kept.txt").write_text(clear)
            mount.process.send_signal(signal.SIGKILL)
            mount.process.wait()
            assert overlay.lower_mounts(mountpoint), "nothing left to clear"
            if clear == "umount":
                stopped = run_cli("umount", str(mountpoint), env=env)
                assert stopped.returncode == 0, stopped.stderr
            else:
                started = run_cli("mount", str(mountpoint), *source, *args, env=env)
                assert started.returncode == 0, started.stderr
                assert (mountpoint / "kept.txt").read_text() == clear
                assert len(overlay.lower_mounts(mountpoint)) == 1
                assert run_cli("umount", str(mountpoint), env=env).returncode == 0
            assert overlay.mounted_at(mountpoint) is None
            assert not overlay.lower_mounts(mountpoint)
    finally:
        unmount_all(mountpoint)
        for mount in killed:
            mount.unmount()  # only closes its log now


@needs_fuse_overlayfs
def test_missing_fuse_overlayfs_says_what_to_install(tmp_path: Path):
    (tmp_path / "mnt").mkdir()
    bare = tmp_path / "bin"
    bare.mkdir()
    result = run_cli(
        "mount",
        str(tmp_path / "mnt"),
        "--offline",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--writable",
        str(tmp_path / "layer"),
        "--overlay",
        "fuse-overlayfs",
        env={"PATH": str(bare)},
    )
    assert result.returncode != 0
    assert "install the fuse-overlayfs package" in result.stderr
    assert overlay.mounted_at(tmp_path / "mnt") is None


NOBODY = 65534


@needs_kernel
def test_a_sudo_mount_is_for_who_ran_sudo(server: Server, archives: Path, tmp_path: Path):
    """`sudo osufs mount --writable`: the kernel's overlay, with the library owned by the user
    who ran sudo, who reads, updates, deletes and imports through it as osu! would."""
    public = Path(tempfile.mkdtemp(prefix="osufs-sudo-"))
    public.chmod(0o755)  # the user must reach the mountpoint; tmp_path is root's alone
    mountpoint = public / "Songs"
    env = {"SUDO_UID": str(NOBODY), "SUDO_GID": str(NOBODY)}
    original = expected_members(archives / "1.osz")
    gone = next(n for n in sorted(original) if n.endswith(".osu") and n != RENATUS)
    as_user = 'cat "$1/$2" >/dev/null && printf updated >"$1/$2" && rm "$1/$3" && mkdir "$4" && printf new >"$4/a.osu"'  # noqa: E501
    try:
        with writable_mount(
            tmp_path, server, engine="kernel", mountpoint=mountpoint, env=env
        ) as mount:
            folder = folder_of(mountpoint, 1)
            assert os.stat(folder / RENATUS).st_uid == NOBODY
            new = mountpoint / "999 New - Set"
            done = subprocess.run(
                ["sh", "-c", as_user, "sh", str(folder), RENATUS, gone, str(new)],
                user=NOBODY,
                group=NOBODY,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            assert (folder / RENATUS).read_bytes() == b"updated"
            assert not (folder / gone).exists()
            assert (new / "a.osu").stat().st_uid == NOBODY
            assert "owned by uid 65534" in mount.log()
    finally:
        shutil.rmtree(public, ignore_errors=True)
    assert os.stat(tmp_path / "layer" / "upper").st_uid == NOBODY


@needs_kernel
def test_auto_takes_the_kernel_where_it_may(server: Server, tmp_path: Path):
    """As root `auto` mounts the kernel's overlayfs, and needs no fuse-overlayfs for it."""
    bare = tmp_path / "bin"
    bare.mkdir()
    with writable_mount(tmp_path, server, engine="auto", env={"PATH": str(bare)}) as mount:
        assert engine_of(mount) == "kernel"
        (mount.mountpoint / "new.txt").write_bytes(MARKER)
    assert (tmp_path / "layer" / "upper" / "new.txt").read_bytes() == MARKER
    assert "by the kernel's overlayfs" in mount.log()
    assert not overlay.lower_mounts(mount.mountpoint)


@needs_fuse_overlayfs
def test_the_config_file_chooses_the_engine(server: Server, tmp_path: Path):
    config = tmp_path / "config.toml"
    layer = tmp_path / "layer"
    config.write_text(f'writable = "{layer}"\noverlay = "fuse-overlayfs"\n')
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    source = ("--source", f"hexide={server.url}", "--cache-dir", str(tmp_path / "cache"))
    env = runtime_env(tmp_path)
    try:
        started = run_cli("--config", str(config), "mount", str(mountpoint), *source, env=env)
        assert started.returncode == 0, started.stderr
        assert overlay.mounted_at(mountpoint).fstype == MOUNT_TYPES["fuse-overlayfs"]
        assert run_cli("umount", str(mountpoint), env=env).returncode == 0
        config.write_text('overlay = "zfs"\n')
        refused = run_cli("--config", str(config), "mount", str(mountpoint), *source, env=env)
        assert refused.returncode != 0
        assert "'zfs' is not one of 'auto', 'kernel', 'fuse-overlayfs'" in refused.stderr
    finally:
        unmount_all(mountpoint)


@needs_kernel
@needs_fuse_overlayfs
def test_auto_falls_back_when_the_kernel_refuses(server: Server, tmp_path: Path):
    """The kernel refusing with EPERM, as in a container: one log line, then fuse-overlayfs."""
    with writable_mount(tmp_path, server, engine="auto", module="tests.kernel_refuses") as mount:
        assert engine_of(mount) == "fuse-overlayfs"
        (mount.mountpoint / "new.txt").write_bytes(MARKER)
        assert (mount.mountpoint / "new.txt").read_bytes() == MARKER
    assert (tmp_path / "layer" / "upper" / "new.txt").read_bytes() == MARKER
    refusals = [line for line in mount.log().splitlines() if "refused" in line]
    assert len(refusals) == 1, refusals
    assert "WARNING" in refusals[0]
    assert "Operation not permitted (it needs CAP_SYS_ADMIN" in refusals[0]
    assert refusals[0].endswith("; using fuse-overlayfs instead")


@needs_kernel
def test_explicit_kernel_refused_fails_clearly(tmp_path: Path):
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    command = osufs_command(
        "mount",
        str(mountpoint),
        "--foreground",
        "--offline",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--writable",
        str(tmp_path / "layer"),
        "--overlay",
        "kernel",
        module="tests.kernel_refuses",
    )
    env = {**os.environ, **runtime_env(tmp_path)}
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode != 0
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: the kernel's overlayfs refused to mount {mountpoint}")
        assert "Operation not permitted" in last
        assert "fuse-overlayfs" not in result.stderr  # no fallback when the kernel was asked for
    finally:
        unmount_all(mountpoint)
    assert overlay.mounted_at(mountpoint) is None
    assert not overlay.lower_mounts(mountpoint)


def view(root: Path) -> dict[str, bytes | str]:
    """Everything the mount shows: each file's bytes, each folder, each symlink's target."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        for name in dirnames + filenames:
            path = folder / name
            key = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[key] = "-> " + os.readlink(path)
            elif stat.S_ISDIR(mode):
                found[key] = "folder"
            else:
                found[key] = path.read_bytes()
    return found


def change_as_osu(root: Path, sets: tuple[int, int, int], new_set: Path, import_as: str) -> None:
    """The changes whose markers differ between engines: deletions, a set deleted and
    extracted again under its old name (an opaque folder) then trimmed (a whiteout inside
    it), an import renamed, a .osu updated."""
    first, second, doomed = sets
    shutil.rmtree(folder_of(root, doomed))
    folder = folder_of(root, first)
    difficulties = sorted(name for name in os.listdir(folder) if name.endswith(".osu"))
    os.remove(folder / difficulties[0])
    with open(folder / difficulties[-1], "ab") as file:
        file.write(MARKER)
    again = folder_of(root, second)
    members = sorted(os.listdir(again))
    kept = {name: (again / name).read_bytes() for name in members if (again / name).is_file()}
    shutil.rmtree(again)
    again.mkdir()
    for name, data in kept.items():
        (again / name).write_bytes(data)
    os.remove(again / sorted(kept)[0])
    with zipfile.ZipFile(new_set) as zf:
        zf.extractall(root / "importing")
    os.rename(root / "importing", root / import_as)


@needs_kernel
@needs_fuse_overlayfs
def test_an_upper_directory_moves_between_engines(
    server: Server, archives: Path, new_set: Path, tmp_path: Path
):
    """What one engine wrote, the other shows the same, both ways, across remounts."""
    with writable_mount(tmp_path, server, engine="fuse-overlayfs") as mount:
        before = view(mount.mountpoint)
        change_as_osu(mount.mountpoint, (1, FIRST_SAMPLE, FIRST_SAMPLE + 1), new_set, "900001 A")
        by_fuse = view(mount.mountpoint)
    assert by_fuse != before
    upper = tmp_path / "layer" / "upper"
    assert any(path.name.startswith(".wh.") for path in upper.rglob("*"))  # its own markers
    with writable_mount(tmp_path, server, engine="kernel") as mount:
        assert view(mount.mountpoint) == by_fuse
        change_as_osu(mount.mountpoint, (2, FIRST_SAMPLE + 2, 3), new_set, "900001 B")
        by_kernel = view(mount.mountpoint)
    assert not any(path.name.startswith(".wh.") for path in upper.rglob("*"))
    for engine in ("fuse-overlayfs", "kernel", "fuse-overlayfs"):
        with writable_mount(tmp_path, server, engine=engine) as mount:
            assert view(mount.mountpoint) == by_kernel, engine
    assert not any(".wh." in name for name in by_kernel)


def songs_scan(mountpoint: Path, server: Server) -> dict:
    result = subprocess.run(
        [sys.executable, str(SONGS_SCAN), str(mountpoint), "--stats-url", server.url, "--json"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_songs_scan_through_both_mounts(
    server: Server, archives: Path, tmp_path: Path, engine: str
):
    sets = len(list(archives.glob("*.osz")))
    with mounted(
        tmp_path / "ro",
        tmp_path / "ro-cache",
        tmp_path / "ro.log",
        "--source",
        f"hexide={server.url}",
    ) as mount:
        read_only = songs_scan(mount.mountpoint, server)
    with writable_mount(tmp_path, server, engine=engine) as mount:
        cold = songs_scan(mount.mountpoint, server)
        warm = songs_scan(mount.mountpoint, server)
    for report in (read_only, cold, warm):
        assert report["errors"] == []
        assert report["sets"] == sets
    assert cold["files"] == read_only["files"] and cold["osu_files"] == read_only["osu_files"]
    assert cold["bytes_read"] == read_only["bytes_read"] == warm["bytes_read"]
    assert cold["bytes_sent"] > 0
    assert warm["bytes_sent"] == 0
