"""The `osufs` command's entry point: the TLS context starts building before the command line's
imports (about 0.4 s), so that a mount's start does not wait for it."""

from __future__ import annotations

from osufs import tls


def main() -> None:
    tls.prewarm()
    from osufs.cli import main as cli_main

    cli_main(prog_name="osufs")
