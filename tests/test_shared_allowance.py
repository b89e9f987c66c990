"""One allowance per source, whoever spends it (issue 14): a real mount and a real `osufs
prefetch` on one cache directory, both on the loopback Mino of tests/fake_mino.py, together
stay within its one allowance (no 429, no 418), each seeing what the other spent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fake_mino import MinoState, mino_app
from tests.helpers import ThreadedApp, mounted
from tests.test_api_sources import api_sets, osu_files
from tests.test_api_sources import archives as archives  # the module's fixture, shared
from tests.test_mino import RANKED, folder_of

# The emulation allows PER_WINDOW requests in WINDOW seconds; osufs is told the same (its
# minute shortened by SCALE), so together the two processes need several windows.
PER_WINDOW = 12
WINDOW = 3.0
SCALE = WINDOW / 60.0


def test_a_mount_and_prefetch_on_one_cache_stay_within_one_allowance(
    archives: Path, tmp_path: Path
):
    state = MinoState(api_sets(archives), per_minute=PER_WINDOW, window=WINDOW)
    server = ThreadedApp(mino_app(state))
    cache = tmp_path / "cache"
    env = {**os.environ, "OSUFS_WINDOW_SCALE": repr(SCALE)}
    source = ["--source", f"catboy={server.url}", "--mirror-per-minute", str(PER_WINDOW)]
    prefetched = ["--cache-dir", str(cache), *source]
    try:
        with mounted(tmp_path / "mnt", cache, tmp_path / "mount.log", *source, env=env) as mount:
            prefetch = subprocess.Popen(
                [sys.executable, "-m", "osufs", "prefetch", "100004-100006", "--all", *prefetched],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            try:
                # Meanwhile a reader goes through every .osu of the ranked sets.
                for set_id in RANKED:
                    path = mount.mountpoint / folder_of(state.sets[set_id])
                    for name, data in osu_files(archives / f"{set_id}.osz").items():
                        assert (path / name).read_bytes() == data, (set_id, name)
                output, _ = prefetch.communicate(timeout=120)
            finally:
                prefetch.kill()
                prefetch.wait()
            assert prefetch.returncode == 0, output
            assert "3 fetched" in output and "0 failed" in output, output
    finally:
        server.stop()
    assert state.requests["download"] >= 3 and state.requests["osu"] > 0
    # More than two windows' worth: two separate counts would each have allowed that much.
    assert sum(state.requests.values()) > 2 * PER_WINDOW
    assert (state.too_many, state.teapots) == (0, 0), "the two processes overran the mirror"
