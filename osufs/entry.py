"""The `osufs` command's entry point: the TLS context starts building before the command line's
imports (about 0.4 s), so that a mount's start does not wait for it."""

from __future__ import annotations

import sys

from osufs import tls


def main() -> None:
    tls.prewarm()
    # httpx 0.28 imports its own command line (rich and pygments, 80 ms: a tenth of a mount's
    # start) whenever they are installed, as rich is for osufs's progress bars; osufs never
    # runs it. A None in sys.modules makes that import fail, which httpx catches (its
    # successor imports it lazily: pydantic/httpx2#947; drop this once httpx does too).
    sys.modules.setdefault("httpx._main", None)  # type: ignore[assignment]
    from osufs.cli import main as cli_main

    cli_main(prog_name="osufs")
