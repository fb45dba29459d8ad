"""Where neuronforge keeps downloaded archives and converted models."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NEURONFORGE_CACHE"


def cache_dir() -> Path:
    """`$NEURONFORGE_CACHE`, else `$XDG_CACHE_HOME/neuronforge`, else `~/.cache/neuronforge`."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "neuronforge"
