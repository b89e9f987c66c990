"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Server


@pytest.fixture
def server(archives: Path, tmp_path: Path) -> Iterator[Server]:
    """`osufs serve` over the requesting module's `archives` folder."""
    server = Server(archives, tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()
