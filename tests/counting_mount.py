"""`python -m tests.counting_mount mount ...`: osufs's mount with every FUSE request counted.

pyfuse3 dispatches to the Operations class by attribute, so wrapping the class's handlers
before the mount starts sees every request that reaches the daemon, and the time spent in each;
SIGUSR1 writes the tallies to the file named by OSUFS_COUNTS (read them with `tallies`).
Used by the tests and by scripts/bench_grep.py --profile."""

from __future__ import annotations

import functools
import inspect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

COUNTS = "OSUFS_COUNTS"


def _count_requests() -> None:
    import pyfuse3

    from osufs import fs

    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}

    def wrap(name: str, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await handler(*args, **kwargs)
            finally:
                counts[name] = counts.get(name, 0) + 1
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

        return counted

    for name in dir(pyfuse3.Operations):
        handler = getattr(fs.Operations, name)
        if not name.startswith("_") and inspect.iscoroutinefunction(handler):
            setattr(fs.Operations, name, wrap(name, handler))

    def dump(*_: object) -> None:
        target = os.environ[COUNTS]
        with open(target + ".tmp", "w") as out:
            json.dump({"counts": counts, "seconds": seconds}, out)
        os.replace(target + ".tmp", target)

    signal.signal(signal.SIGUSR1, dump)


def tallies(process: subprocess.Popen, target: Path) -> dict[str, dict[str, float]]:
    """The counting mount's tallies so far: {"counts": {name: n}, "seconds": {name: s}}."""
    before = target.stat().st_mtime_ns if target.exists() else 0
    process.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if target.exists() and target.stat().st_mtime_ns != before:
            return json.loads(target.read_text())
        time.sleep(0.02)
    raise RuntimeError("the counting mount did not answer")


if __name__ == "__main__":
    _count_requests()
    from osufs.cli import main

    sys.argv[0] = "osufs"
    main()
