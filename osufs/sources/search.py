"""A set search capped at SEARCH_CAP results a query, read whole in date slices.

osu-web's search (and the mirrors' copies of it) stops at 10,000 results per query, and ranked
alone is several times that. Sorted by a date ascending, a query that reaches the cap is cut
there; the next slice asks again with `ranked>=DAY` (or `updated>=`), DAY the day before the
last one seen, so no set falls between two slices (those read twice are already listed). The
resume point names the slice and the cursor within it, so a sync goes on where the last one
stopped."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

log = logging.getLogger(__name__)

SEARCH_CAP = 10_000
# The item field a slice's date filter compares, by filter keyword.
DATE_FIELDS = {"ranked": "ranked_date", "updated": "last_updated"}


@dataclass(frozen=True, slots=True)
class SearchPage:
    items: list[Any]
    following: str | None  # the cursor of the next page of this query; None at its end


# (date filter to add to the query, or "", and the cursor within it) -> one page
PageFetch = Callable[[str, str | None], Awaitable[SearchPage]]


@dataclass(slots=True)
class _Position:
    since: str | None = None  # the slice: sets dated on or after this day (None: all)
    cursor: str | None = None  # the page to ask for next within it (None: its first)
    served: int = 0  # results the slice gave before that page
    last: str | None = None  # the latest day seen in the slice

    def dump(self) -> str:
        return json.dumps(
            {"since": self.since, "cursor": self.cursor, "served": self.served, "last": self.last}
        )

    @classmethod
    def load(cls, text: str | None) -> _Position:
        """A saved resume point; a bare cursor (before slices) resumes the first slice."""
        if not text:
            return cls()
        try:
            found = json.loads(text)
        except ValueError:
            found = None
        if not isinstance(found, dict):
            return cls(cursor=text)

        def text_or_none(key: str) -> str | None:
            value = found.get(key)
            return value if isinstance(value, str) and value else None

        served = found.get("served")
        return cls(
            text_or_none("since"),
            text_or_none("cursor"),
            served if isinstance(served, int) and served >= 0 else 0,
            text_or_none("last"),
        )


async def sliced_search(
    fetch: PageFetch, keyword: str, resume: str | None, label: str, max_pages: int
) -> AsyncIterator[tuple[list[Any], str, bool]]:
    """Every item of a search sorted by `keyword`'s date ascending, as (items of a page, the
    point to resume after it, whether that was the end), at most `max_pages` pages a call.

    At the end the point is that of the last page, so the next sync reads it again and
    whatever came after it since."""
    field = DATE_FIELDS[keyword]
    at = _Position.load(resume)
    for _page in range(max_pages):
        page = await fetch(f"{keyword}>={at.since}" if at.since else "", at.cursor)
        for item in page.items:
            day = str(item.get(field) or "")[:10] if isinstance(item, dict) else ""
            if _is_day(day) and (at.last is None or day > at.last):
                at.last = day
        if page.following is not None:
            at.served += len(page.items)
            at.cursor = page.following
            yield page.items, at.dump(), False
            continue
        if at.served + len(page.items) >= SEARCH_CAP:
            start = _day_before(at.last) if at.last else None
            if start is not None and (at.since is None or start > at.since):
                at = _Position(since=start, last=at.last)
                yield page.items, at.dump(), False
                continue
            log.warning(
                "%s: over %d sets on or after %s: the search cannot list the rest",
                label,
                SEARCH_CAP,
                at.since,
            )
        yield page.items, at.dump(), True
        return


def _is_day(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _day_before(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()
