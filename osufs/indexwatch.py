"""Waking when any process commits to the index: inotify on its data file.

LMDB writes a commit's pages and its meta page with pwrite (the index is opened without
writemap), so every commit by any process on the cache dir raises IN_MODIFY on `data.mdb`.
Where inotify cannot be had (its watches used up), a poll stands in for it.

Trio thread only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

import trio
from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # only without inotify


class IndexWatch:
    """changed() returns after the index's next commit, or at once if one came since the last
    call; a caller that then reads the index sees that commit or a later one."""

    def __init__(self, data_file: Path) -> None:
        self._notify: INotify | None = None
        try:
            notify = INotify(nonblocking=True)
        except OSError as error:
            log.warning("cannot watch the index (%s); polling it instead", error)
            return
        try:
            notify.add_watch(data_file, flags.MODIFY)
        except OSError as error:
            notify.close()
            log.warning("cannot watch %s (%s); polling it instead", data_file, error)
            return
        self._notify = notify

    async def changed(self) -> None:
        if self._notify is None:
            await trio.sleep(POLL_INTERVAL)
            return
        await trio.lowlevel.wait_readable(self._notify.fileno())
        # Drain before the caller reads: a commit after this wakes the next call.
        self._notify.read(timeout=0)

    def close(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def __enter__(self) -> IndexWatch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
