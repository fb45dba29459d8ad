"""Where neuronforge keeps downloaded archives and converted models.

The cache must be one absolute folder: a relative NEURONFORGE_CACHE would be a different cache in every folder
a command runs from (report K09), so it is refused rather than resolved against the current directory. A cache
that is a file (K02) or cannot be written (K01) is an error that names NEURONFORGE_CACHE and what to do, at the
first write, so that a read-only cache that already holds everything still works.
"""

from __future__ import annotations

import os
from pathlib import Path

from neuronforge.errors import NeuronforgeError

CACHE_ENV = "NEURONFORGE_CACHE"


def _where(root: Path) -> str:
    """The cache as the user set it: the variable if they did, else the default folder and how to move it."""
    return f"{CACHE_ENV}={root}" if os.environ.get(CACHE_ENV) else f"the cache folder {root} (the default)"


def cache_dir() -> Path:
    """`$NEURONFORGE_CACHE` (absolute, `~` expanded), else `$XDG_CACHE_HOME/neuronforge`, else
    `~/.cache/neuronforge`; refused when relative or a file."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_absolute():
            raise NeuronforgeError(
                f"{CACHE_ENV}={explicit} is a relative path: it would be a different cache in every folder you "
                "run neuronforge from",
                f"set it to an absolute path, e.g. export {CACHE_ENV}=$PWD/{explicit}",
            )
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "neuronforge"
    if root.exists() and not root.is_dir():
        raise NeuronforgeError(
            f"{_where(root)} is a file, not a folder",
            f"point {CACHE_ENV} to a folder (new or one neuronforge made), or move the file {root} away",
        )
    return root


def writable_cache(folder: Path) -> Path:
    """`folder` (inside the cache) created for writing; an OS refusal names the cache and what to do."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(folder))
    except OSError as exc:
        root = cache_dir()
        raise NeuronforgeError(
            f"{_where(root)} cannot be written ({exc.strerror}: {exc.filename or folder}), and this command must "
            "store a download or a converted model there",
            f"make {root} writable (chmod u+w, or chattr -i if immutable), or set {CACHE_ENV} to a folder you "
            f"can write, e.g. export {CACHE_ENV}=$HOME/.cache/neuronforge",
        ) from None
    return folder
