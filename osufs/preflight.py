"""The preflight: every source asked once, in parallel, within PREFLIGHT_TIMEOUT, before a
mount is ready (and by `osufs doctor`); what is wrong becomes one line per source with its fix.

Each source describes its own probe (`Source.probe`, in osufs/sources/): one cheap request that
goes the way of any other, so it is paced, counts against the allowance, and is never sent to a
source resting after a 429 or a 418. Whatever a probe finds, the mount still comes up."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
import trio

from osufs.errors import OsufsError
from osufs.sources import Source, SourceLimited, SourceMissing
from osufs.sources.base import NotJson, _clock

log = logging.getLogger(__name__)

# Seconds the whole preflight may take: every probe runs at once under this one deadline (a
# silent server is given up on at half of it, so a retry still fits; sources/base.py).
PREFLIGHT_TIMEOUT = 5.0

OK, WARNING, FAILURE = "ok", "warning", "failure"


@dataclass(frozen=True, slots=True)
class Finding:
    """What one check found: its severity, what it saw and, unless ok, what to do."""

    subject: str
    severity: str
    text: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.severity == OK

    def line(self) -> str:
        return f"{self.subject}: {self.text}" + (f"; {self.fix}" if self.fix else "")


async def preflight(
    sources: Sequence[Source], timeout: float = PREFLIGHT_TIMEOUT
) -> list[Finding]:
    """Probe every source at once; one Finding per source, in the sources' order."""
    found: list[Finding | None] = [None] * len(sources)

    async def probe(index: int, source: Source) -> None:
        found[index] = await _probe(source)

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for index, source in enumerate(sources):
                nursery.start_soon(probe, index, source)
    return [
        finding
        or Finding(
            source.label,
            FAILURE,
            f"no answer within {timeout:g} s",
            "check the URL and the network; reads will wait for it and then try the next source",
        )
        for source, finding in zip(sources, found, strict=True)
    ]


def log_findings(findings: Sequence[Finding]) -> list[str]:
    """Log what is wrong, one WARNING a source; returns those lines."""
    lines = [finding.line() for finding in findings if not finding.ok]
    for line in lines:
        log.warning("preflight: %s", line)
    return lines


async def _probe(source: Source) -> Finding:
    try:
        said = await source.probe()
    except SourceLimited as error:
        # A 429 or 418 the probe met is in the source's allowance already (learned from the
        # answer, shared by every process on the cache): nothing is asked before its time.
        return _limited(source, error)
    except OsufsError as error:
        return _refused(source, error)
    except Exception as error:  # a probe must never take the mount down
        log.exception("%s: the preflight failed", source.label)
        return Finding(source.label, FAILURE, f"the probe failed: {error!r}")
    if source.blocked_until > time.time():  # its answer said nothing is left for now
        return Finding(
            source.label,
            WARNING,
            f"its allowance is spent ({said or 'none left'}); not asked again until "
            f"{_clock(source.blocked_until)}",
            "the other sources serve meanwhile",
        )
    return Finding(source.label, OK, said or "answers")


def _limited(source: Source, error: SourceLimited) -> Finding:
    until = _clock(max(error.until, time.time()))
    said = _without_label(source, str(error))
    if "HTTP 418" in said or "answered 418" in said:  # banned(), or resting since
        return Finding(
            source.label,
            FAILURE,
            f"banned for now (HTTP 418); not asked again until {until}",
            "leave it alone until then (asking sooner prolongs a ban); the other sources "
            "serve meanwhile",
        )
    why = source.allowance.rest_reason if source.blocked_until > time.time() else ""
    return Finding(
        source.label,
        WARNING,
        f"rate limited until {until}" + (f": {why}" if why else ""),
        "it is asked again after that; the other sources serve meanwhile",
    )


def _refused(source: Source, error: OsufsError) -> Finding:
    text = _without_label(source, str(error))
    if error.errno == errno.EACCES:
        fixes = {
            "osu": "copy a fresh osu_session cookie from the browser into the --cookie-file",
            "osuapi": "check the --client-file against Settings > OAuth on the site",
        }
        missing = "needs" in text  # the message itself says how to give it
        return Finding(source.label, FAILURE, text, "" if missing else fixes.get(source.kind, ""))
    if isinstance(error, NotJson):
        return Finding(
            source.label,
            FAILURE,
            text.replace("answered an HTML page", "answered an HTML page where JSON belongs"),
            "check the URL: it leads to a web page, not to the source's API",
        )
    if isinstance(error, SourceMissing):
        return Finding(
            source.label,
            FAILURE,
            "answered 404 where its API belongs",
            "check the URL and the kind given to --source",
        )
    if _cause(error, httpx.TransportError):
        return Finding(
            source.label,
            FAILURE,
            f"unreachable: {text}",
            "check the URL and the network; reads try the next source meanwhile",
        )
    return Finding(source.label, FAILURE, text, "reads try the next source meanwhile")


def _cause(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the error's chain: a source's error is raised `from None` while it
    handles the transport's, which stays its __context__."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _without_label(source: Source, message: str) -> str:
    return message.removeprefix(f"{source.label}: ")
