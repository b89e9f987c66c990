"""The config file: TOML in the user's config directory; command-line flags override it.

Keys are the long option names with `_` for `-`, shared by every command that has the option:

    sources = ["hexide=http://127.0.0.1:8727", "osu=https://osu.ppy.sh"]
    cookie_file = "~/.config/osufs/cookie"
    cache_dir = "~/.cache/osufs"
    fetch_timeout = 60
    shared = "s3://osu-group/library"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import platformdirs

# key -> the Python type its value must have in the file
KEYS: dict[str, type | tuple[type, ...]] = {
    "sources": list,
    "cache_dir": str,
    "cookie_file": str,
    "no_video": bool,
    "fetch_timeout": (int, float),
    "read_ahead": int,
    "cache_size": str,
    "min_free_space": str,
    "allow_other": bool,
    "max_member_size": (int, str),
    "max_ratio": int,
    "writable": str,
    "overlay": str,
    "client_file": str,
    "catalogue": str,
    "catalogue_query": str,
    "catalogue_file": str,
    "api_per_minute": (int, float),
    "mirror_per_minute": (int, float),
    "shared": str,
    "s3_endpoint": str,
    "s3_credentials_file": str,
}
PATH_KEYS = {
    "cache_dir",
    "cookie_file",
    "writable",
    "client_file",
    "catalogue_file",
    "s3_credentials_file",
}


class ConfigError(Exception):
    """The config file cannot be used; the message says where and why."""


def default_config_path() -> Path:
    return platformdirs.user_config_path("osufs") / "config.toml"


def load_config(path: Path) -> dict[str, Any]:
    """Settings from a TOML file, checked against KEYS; {} when the file does not exist."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: {error}") from None
    settings: dict[str, Any] = {}
    for key, value in data.items():
        expected = KEYS.get(key)
        if expected is None:
            raise ConfigError(f"{path}: unknown key {key!r}; known: {', '.join(sorted(KEYS))}")
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{path}: {key} has the wrong type ({type(value).__name__})")
        if key == "sources" and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{path}: sources must be a list of strings like 'kind=URL'")
        settings[key] = str(Path(value).expanduser()) if key in PATH_KEYS else value
    return settings
