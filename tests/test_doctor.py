"""`osufs doctor` (issue 19): the mount's options, checked one line each with the fix; exit 0 on
a good setup, non-zero with the failing lines on a broken one. The real CLI against loopback
sources (none provoked into a 429 or a 418)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.fake_api import ApiState, api_app
from tests.fake_mino import MinoState
from tests.helpers import ThreadedApp, free_port, osufs_command
from tests.test_api_sources import api_sets
from tests.test_api_sources import archives as archives  # the module's fixture, shared
from tests.test_preflight import mino as mino


def doctor(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    first = ["--config", str(config)] if config is not None else []
    return subprocess.run(
        osufs_command(*first, "doctor", *args), capture_output=True, text=True, timeout=120
    )


def test_a_good_setup(mino: tuple[MinoState, str], tmp_path: Path):
    state, url = mino
    (tmp_path / "mnt").mkdir()
    result = doctor(
        str(tmp_path / "mnt"),
        "--source",
        f"catboy={url}",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--cache-size",
        "1G",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    said = result.stdout.splitlines()
    checks, summary = said[:-1], said[-1]
    assert all(line.startswith("ok ") for line in checks), said
    subjects = [line.split()[1] for line in checks]
    assert subjects[:3] == ["config:", "fuse:", "mountpoint"]
    assert any(line.startswith("ok       free space: keeps 10% of its disk free") for line in said)
    assert any("--cache-size comes first" in line for line in said)
    (mirror,) = [line for line in said if "catboy 127.0.0.1" in line]
    assert "60 requests left this minute" in mirror and "the next request can go now" in mirror
    assert summary == f"{len(checks)} checks: 0 failed, 0 warnings"
    assert state.requests["ratelimits"] == 1 and sum(state.requests.values()) == 1
    assert state.too_many == 0 and state.teapots == 0


def test_a_broken_setup(archives: Path, tmp_path: Path):
    state = ApiState(api_sets(archives))
    server = ThreadedApp(api_app(state))
    config = tmp_path / "config.toml"
    config.write_text("fetch_timeout = 'soon'\n")
    cookie = tmp_path / "cookie"
    cookie.write_text("osu_session=expired-long-ago")
    cookie.chmod(0o600)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "a file").write_text("")
    try:
        result = doctor(
            str(tmp_path / "mnt"),
            "--source",
            f"osu={server.url}",
            "--cookie-file",
            str(cookie),
            "--source",
            f"catboy=http://127.0.0.1:{free_port()}",
            "--cache-dir",
            str(tmp_path / "cache"),
            config=config,
        )
    finally:
        server.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    said = result.stdout.splitlines()
    failures = [line for line in said if line.startswith("failure ")]
    assert len(failures) == 4, said
    assert failures[0].startswith(f"failure  config: {config}: fetch_timeout has the wrong type")
    assert "is not empty" in failures[1] and "--allow-non-empty" in failures[1]
    assert "the site refused the session cookie (HTTP 401)" in failures[2]
    assert "copy a fresh osu_session cookie" in failures[2]
    assert "unreachable" in failures[3] and "check the URL and the network" in failures[3]
    assert said[-1].startswith(f"{len(said) - 1} checks: 4 failed")
    assert "expired-long-ago" not in result.stdout + result.stderr
    assert state.quota_checks == 1
