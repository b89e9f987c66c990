"""Where bytes come from: Hexide mirrors, the official site, the osu! API, download mirrors.

Every HTTP answer is judged in one place (`_judge`), so a status means the same thing for every
source. Redirects are followed by hand: a secret header (the site's cookie, the API's token) goes
only to the origin it belongs to, never to the host a redirect points at. Rate-limit headers
(`x-ratelimit-remaining`, `x-ratelimit-reset`) are read from every answer, so a source that says
its budget is spent is rested before it has to answer 429. docs/sources.md describes every kind.

Each source paces its requests on one `Allowance` (osufs/allowance.py), kept in the store's
index once `build_sources` is given it, so every process on a cache directory spends the same.

Modules: `base` (the Source class, judging answers, pacing, ranged reads), `hexide`, `site`
(the official site), `api` (the osu! API v2 and /osu/<id>), `mirrors` (URL templates and
mirrors by name), `spec` (what the user names and building the sources in order).
"""

from osufs.sources.api import OsuApiSource
from osufs.sources.base import (
    RETRIES,
    RETRY_AFTER_CAP,
    CatalogueEntry,
    Difficulty,
    RemoteArchive,
    SetDifficulties,
    Source,
    SourceLimited,
    SourceMismatch,
    SourceMissing,
    parse_retry_after,
)
from osufs.sources.hexide import HexideSource
from osufs.sources.mirrors import MIRRORS, MirrorSource, TemplateSource
from osufs.sources.site import (
    COOKIE_REFUSED,
    OSU_BURST,
    OSU_LIMIT_DEFAULT,
    OSU_PER_HOUR,
    OSU_SHAPE,
    OsuSiteSource,
)
from osufs.sources.spec import SOURCE_KINDS, SourceSpec, build_sources

__all__ = [
    "COOKIE_REFUSED",
    "MIRRORS",
    "OSU_BURST",
    "OSU_LIMIT_DEFAULT",
    "OSU_PER_HOUR",
    "OSU_SHAPE",
    "RETRIES",
    "RETRY_AFTER_CAP",
    "SOURCE_KINDS",
    "CatalogueEntry",
    "Difficulty",
    "HexideSource",
    "MirrorSource",
    "OsuApiSource",
    "OsuSiteSource",
    "RemoteArchive",
    "SetDifficulties",
    "Source",
    "SourceLimited",
    "SourceMismatch",
    "SourceMissing",
    "SourceSpec",
    "TemplateSource",
    "build_sources",
    "parse_retry_after",
]
