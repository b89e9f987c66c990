"""Real mounts over the fake official site, its file host and misbehaving mirrors."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from osufs.samples import build_sample_library
from osufs.sources import COOKIE_REFUSED
from tests.fake_site import FakeSite, serve_archives
from tests.helpers import REAL_ARCHIVES, Server, mounted, osufs_command
from tests.test_mount import expected_members

SECRET = "osu_session=e2e-secret-7d3f9a61c0b2; XSRF-TOKEN=e2e-xsrf"
RENATUS = "Soleily - Renatus (Gamu) [Insane].osu"
# Ranged reads ahead of a scan would ask for sets no test read; these tests count requests.
NO_READ_AHEAD = ("--read-ahead", "0")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archives")
    for set_id, path in enumerate(REAL_ARCHIVES, start=1):
        shutil.copy(path, folder / f"{set_id}.osz")
    build_sample_library(folder, count=2, audio_size=20_000)
    return folder


@pytest.fixture
def site(archives: Path) -> Iterator[FakeSite]:
    with FakeSite(serve_archives(archives), cookie=SECRET) as running:
        yield running


@pytest.fixture
def cookie_file(tmp_path: Path) -> Path:
    path = tmp_path / "cookie"
    path.write_text(f"Cookie: {SECRET}\n")
    path.chmod(0o600)
    return path


def read_set(mountpoint: Path, set_id: int, archives: Path) -> None:
    """Every member of a set reads as the archive holds it."""
    for name, data in expected_members(archives / f"{set_id}.osz").items():
        assert (mountpoint / str(set_id) / name).read_bytes() == data, (set_id, name)


def errno_of(action) -> int:
    with pytest.raises(OSError) as caught:
        action()
    return caught.value.errno


def test_site_downloads_and_the_cookie_stays_home(
    site: FakeSite, archives: Path, cookie_file: Path, tmp_path: Path
):
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"osu={site.url}",
        "--cookie-file",
        str(cookie_file),
        "--no-video",
        "--debug",
        *NO_READ_AHEAD,
    ) as mount:
        assert os.readlink(mount.mountpoint / "1") == "1 Soleily - Renatus"
        read_set(mount.mountpoint, 1, archives)
        read_set(mount.mountpoint, 3, archives)
        assert os.path.ismount(mount.mountpoint)
    state = site.state
    assert state.violations == []
    # One download from the site per set; every other read went to the file host by range.
    assert state.granted == {1: 1, 3: 1}
    assert state.file_requests[1] > 1
    assert state.novideo == [1, 3]
    # Not even redacted: nothing tried to log it.
    assert "e2e-secret" not in mount.log() and "e2e-xsrf" not in mount.log()
    assert "<cookie>" not in mount.log()


def test_a_refused_cookie_is_eacces_and_said_once(site: FakeSite, tmp_path: Path):
    wrong = "osu_session=stale-cookie-55aa77"
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"osu={site.url}",
        "--debug",
        *NO_READ_AHEAD,
        env={"OSUFS_COOKIE": wrong},
    ) as mount:
        for set_id in (1, 2, 3, 1):
            assert errno_of(lambda s=set_id: os.stat(mount.mountpoint / str(s))) == errno.EACCES
        assert os.path.ismount(mount.mountpoint)
    assert site.state.refused == 1, "the refused cookie was sent again"
    assert mount.log().count(COOKIE_REFUSED) == 1
    assert "stale-cookie" not in mount.log() and "<cookie>" not in mount.log()


def test_rate_limited_site_falls_back_to_a_mirror(
    site: FakeSite, archives: Path, cookie_file: Path, tmp_path: Path
):
    site.state.limit = 1
    mirror = Server(archives, tmp_path / "server.log")
    try:
        with mounted(
            tmp_path / "mnt",
            tmp_path / "cache",
            tmp_path / "mount.log",
            "--source",
            f"osu={site.url}",
            "--source",
            f"hexide={mirror.url}",
            "--cookie-file",
            str(cookie_file),
            *NO_READ_AHEAD,
        ) as mount:
            read_set(mount.mountpoint, 1, archives)  # from the site
            read_set(mount.mountpoint, 2, archives)  # the site says 429: from the mirror
            asked = site.state.site_requests
            read_set(mount.mountpoint, 3, archives)  # the site is not asked again
            assert site.state.site_requests == asked
            downloads = mirror.stats()["downloads"]
        assert site.state.granted == {1: 1} and site.state.limited == 1
        assert "1" not in downloads and {"2", "3"} <= downloads.keys()
        assert "rate limited until" in mount.log()
    finally:
        mirror.stop()


def test_rate_limited_site_alone_fails_fast_and_says_when(
    site: FakeSite, archives: Path, cookie_file: Path, tmp_path: Path
):
    site.state.limit = 1
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"osu={site.url}",
        "--cookie-file",
        str(cookie_file),
        *NO_READ_AHEAD,
    ) as mount:
        read_set(mount.mountpoint, 1, archives)
        assert errno_of(lambda: os.listdir(mount.mountpoint / "2")) == errno.EIO
        asked = site.state.site_requests
        assert errno_of(lambda: os.listdir(mount.mountpoint / "3")) == errno.EIO
        assert site.state.site_requests == asked, "a rate-limited site was asked again"
        read_set(mount.mountpoint, 1, archives)  # what is cached still reads
    assert "every source is rate limited; the first is free again at" in mount.log()


BROKEN = {1: "hang", 2: "stall", 3: "truncate", 4: "html", 5: "garbage", 100001: "drip"}
# Without ranges, silence is silence: only the modes that differ there are tried again.
BROKEN_WHOLE = {3: "truncate", 4: "html", 5: "garbage", 100001: "drip"}


@pytest.mark.parametrize("ranges", [True, False], ids=["ranged", "whole"])
def test_broken_mirrors_end_in_eio_and_nothing_bad_is_kept(
    site: FakeSite, archives: Path, tmp_path: Path, ranges: bool
):
    broken = BROKEN if ranges else BROKEN_WHOLE
    site.state.ranges = ranges
    site.state.modes.update(broken)
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"url={site.mirror_template}",
        "--fetch-timeout",
        "3",
        *NO_READ_AHEAD,
    ) as mount:
        failures: dict[int, int] = {}

        def read(set_id: int) -> None:
            failures[set_id] = errno_of(lambda: os.listdir(mount.mountpoint / str(set_id)))

        threads = [threading.Thread(target=read, args=(set_id,)) for set_id in broken]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == dict.fromkeys(broken, errno.EIO)
        assert os.path.ismount(mount.mountpoint)
        read_set(mount.mountpoint, 100002, archives)  # another set is unharmed
        site.state.modes.clear()  # the mirror is mended: every set reads, nothing was kept
        for set_id in broken:
            read_set(mount.mountpoint, set_id, archives)
    assert "Traceback" not in mount.log()


def test_a_silent_mirror_leaves_time_for_the_next_and_hashes_are_checked(
    site: FakeSite, archives: Path, tmp_path: Path
):
    site.state.modes.update({1: "hang", 3: "garbage"})
    site.state.wrong_hashes.add(3)
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"url={site.mirror_template}",
        "--source",
        f"hexide={site.hexide_url}",
        "--fetch-timeout",
        "4",
        *NO_READ_AHEAD,
    ) as mount:
        read_set(mount.mountpoint, 1, archives)  # the mirror never answers; Hexide does
        # Garbage from the mirror, and an archive from Hexide that its own md5 disowns.
        assert errno_of(lambda: os.listdir(mount.mountpoint / "3")) == errno.EIO
        site.state.wrong_hashes.clear()
        read_set(mount.mountpoint, 3, archives)
    assert "does not match the hash_md5" in mount.log()


def test_url_source_names_sets_from_their_archives(site: FakeSite, archives: Path, tmp_path: Path):
    with mounted(
        tmp_path / "mnt",
        tmp_path / "cache",
        tmp_path / "mount.log",
        "--source",
        f"url={site.mirror_template}",
        "--no-video",
        *NO_READ_AHEAD,
    ) as mount:
        assert os.listdir(mount.mountpoint) == []
        assert os.readlink(mount.mountpoint / "1") == "1 Soleily - Renatus"
        assert os.listdir(mount.mountpoint) == ["1 Soleily - Renatus"]
        assert (mount.mountpoint / "1 Soleily - Renatus" / RENATUS).is_file()
        # A set no source has is remembered as missing: the mirror is asked once.
        for _ in range(3):
            assert errno_of(lambda: os.stat(mount.mountpoint / "999")) == errno.ENOENT
    assert site.state.mirror_requests.count("/d/999n") == 1
    assert "/d/1n" in site.state.mirror_requests and "/d/1" not in site.state.mirror_requests


def test_the_cookie_comes_only_from_a_private_file_or_the_environment(
    site: FakeSite, tmp_path: Path
):
    (tmp_path / "mnt").mkdir()
    loose = tmp_path / "cookie"
    loose.write_text(SECRET)
    loose.chmod(0o644)
    source = ("--source", f"osu={site.url}", "--foreground")
    refused = subprocess.run(
        osufs_command("mount", str(tmp_path / "mnt"), *source, "--cookie-file", str(loose)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "chmod 600" in refused.stderr
    assert "e2e-secret" not in refused.stderr + refused.stdout
    on_command_line = subprocess.run(
        osufs_command("mount", str(tmp_path / "mnt"), *source, "--cookie", SECRET),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert on_command_line.returncode == 2 and "No such option" in on_command_line.stderr
    assert not os.path.ismount(tmp_path / "mnt")
