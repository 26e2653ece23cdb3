"""mkdocs hook: leave out nav entries whose page does not exist (yet).

Pages are written by different people at different times; the nav in mkdocs.yml lists them
all, and a page appears on the site as soon as its file is there. Everything else (broken
links inside pages) still fails the strict build.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.nav")


def _prune(items, docs: Path):
    out = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                value = _prune(value, docs)
                if value:
                    out.append({title: value})
            elif "://" in value or (docs / value).is_file():
                out.append(item)
            else:
                log.info("nav: %s (%s) does not exist yet: left out", title, value)
        elif "://" in item or (docs / item).is_file():
            out.append(item)
    return out


def on_config(config, **kwargs):
    if config.get("nav"):
        config["nav"] = _prune(config["nav"], Path(config["docs_dir"]))
    return config
