"""Fixtures shared by the end-to-end tests.

Every process the tests start (they inherit the environment) keeps its log, cache, config and
data under one temporary home, never the user's own directories."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Server
from tests.rgw import Radosgw, radosgw

TEST_HOME = Path(tempfile.mkdtemp(prefix="osufs-tests-"))
for variable in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
    os.environ[variable] = str(TEST_HOME / variable.removeprefix("XDG_").lower())


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture
def server(archives: Path, tmp_path: Path) -> Iterator[Server]:
    """`osufs serve` over the requesting module's `archives` folder."""
    server = Server(archives, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rgw() -> Iterator[Radosgw]:
    """One real S3 server (Ceph's radosgw) for the whole session, stopped and removed after."""
    with radosgw() as gateway:
        yield gateway
