"""Plain download mirrors: one URL template each, and today's mirrors by name."""

from __future__ import annotations

import re

import httpx

from osufs.allowance import Shape
from osufs.sources.base import Source

# Mirrors by name: their default base and the path after it, in the `url=` template syntax
# ({id}; {novideo:TEXT|ELSE}). `--source NAME` uses the default base; `--source NAME=URL` keeps
# the path on another base (a regional host, a test server).
MIRRORS: dict[str, tuple[str, str]] = {
    "catboy": ("https://catboy.best", "/d/{id}{novideo:n}"),
    "nerinyan": ("https://api.nerinyan.moe", "/d/{id}{novideo:?noVideo=1}"),
    "osudirect": ("https://osu.direct", "/api/d/{id}{novideo:?noVideo=1}"),
    "sayobot": ("https://dl.sayobot.cn", "/beatmaps/download/{novideo:novideo|full}/{id}"),
}
# Kinds that need no URL: `--source catboy` is `--source catboy=https://catboy.best`.

_NOVIDEO = re.compile(r"\{novideo:([^{}|]*)(?:\|([^{}]*))?\}")


class TemplateSource(Source):
    """A plain download mirror: one URL template with `{id}` and optionally `{novideo:...}`."""

    kind = "url"

    def download_url(self, set_id: int) -> str:
        url = _NOVIDEO.sub(lambda m: m.group(1) if self.no_video else m.group(2) or "", self.base)
        return url.replace("{id}", str(set_id))


class MirrorSource(TemplateSource):
    """A download mirror known by name (MIRRORS): its URL shape on its own base or another."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base: str,
        *,
        name: str,
        no_video: bool = False,
        shape: Shape | None = None,
    ) -> None:
        path = MIRRORS[name][1]
        super().__init__(client, base.rstrip("/") + path, no_video=no_video, shape=shape)
        self.kind = name
        self.allowance.label = self.label
