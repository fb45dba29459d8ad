"""The one sha256 of files and folders: manifests, package records and pinned archives all use it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CHUNK = 1 << 20

# (path, size, mtime_ns) -> sha256; a run hashes the same model folder as several stages' input.
_hash_memo: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of one file, memoised on (path, size, mtime) for the life of the process."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_memo:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
        _hash_memo[key] = digest.hexdigest()
    return _hash_memo[key]


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a directory tree (relative names + file hashes), independent of timestamps."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """JSON-able form of a stage input: paths become their content hash, everything else stays."""
    if isinstance(value, Path):
        return {"content_sha256": content_hash(value)}
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def fingerprint(inputs: dict[str, Any], versions: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """(hash, canonical inputs) for a stage's declared inputs; Path values are hashed by content."""
    canonical = _canonical(inputs)
    blob = json.dumps({"inputs": canonical, "versions": versions}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest(), canonical
