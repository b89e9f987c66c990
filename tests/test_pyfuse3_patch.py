"""The pyfuse3 patch's own tests (patches/pyfuse3), run against the build scripts/setup.sh
installed, from the patched source tree it keeps in build/pyfuse3."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pyfuse3

SOURCE = Path(__file__).resolve().parents[1] / "build" / "pyfuse3" / "pyfuse3-3.5.0"


def test_the_installed_pyfuse3_is_the_patched_build() -> None:
    assert "+osufs." in version("pyfuse3")
    assert pyfuse3.Operations.supports_no_open is False
    assert pyfuse3.FileInfo(cache_readdir=True, noflush=True).noflush


def test_the_patched_pyfuse3_passes_its_own_tests() -> None:
    assert (SOURCE / "test" / "test_fs.py").exists(), "run scripts/setup.sh"
    command = [sys.executable, "-m", "pytest", "--installed", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, "test_fs.py", "test_api.py"],
        cwd=SOURCE / "test",
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "test_no_open_read" in (SOURCE / "test" / "test_fs.py").read_text()
