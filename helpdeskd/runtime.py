"""Loading everything an admin edits — the TOML file and the templates — as one validated unit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import load_config
from .errors import ConfigError
from .settings import Config
from .templates import Templates, load_templates

DEFAULT_CONFIG = "/etc/helpdeskd/helpdeskd.toml"


@dataclass(frozen=True)
class Runtime:
    config: Config
    templates: Templates


def config_path(arg: str | None) -> Path:
    """``-c`` if given, else ``$HELPDESKD_CONFIG``, else the system location."""
    return Path(arg or os.environ.get("HELPDESKD_CONFIG") or DEFAULT_CONFIG)


def load(path: Path) -> Runtime:
    """Config and templates, validated whole; raises ConfigError listing every problem of both."""
    config = load_config(path)
    try:
        templates = load_templates(config)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=str(path)) from exc
    return Runtime(config, templates)
