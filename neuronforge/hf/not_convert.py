"""modules_to_not_convert.json, the list of blocks NxDI keeps in bf16: one reader and one writer.

Read: the two forms NxDI's `inference_demo --modules-to-not-convert-file` reads
(aws-neuron/neuronx-distributed-inference, src/neuronx_distributed_inference/inference_demo.py:422,
`get_modules_to_not_convert_json`): `{"modules_to_not_convert": [...]}` and the same under `"model"`;
plus a bare JSON list, for hand-written files. Entries must be non-empty strings: NxDI matches an entry as
a substring of module names, so "" would match (and silently keep in bf16) every module.
Write: the first form, which inference_demo, our compile and our emulator all read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from neuronforge.core.atomic import atomic_write_json
from neuronforge.errors import NeuronforgeError

NOT_CONVERT_FILE = "modules_to_not_convert.json"
KEY = "modules_to_not_convert"
_FIX = 'write {"modules_to_not_convert": ["lm_head", "layers.0.mlp"]} or a plain JSON list of names'


def read_not_convert(path: Path) -> list[str]:
    """The module names in `path` (any accepted form); a clear error for anything else."""
    path = Path(path).expanduser()
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise NeuronforgeError(f"modules_to_not_convert file {path} does not exist", _FIX) from None
    except IsADirectoryError:
        raise NeuronforgeError(f"modules_to_not_convert file {path} is a folder", _FIX) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeuronforgeError(f"{path} is not valid JSON ({exc})", _FIX) from None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        payload = payload["model"]
    entries = payload.get(KEY) if isinstance(payload, dict) else payload
    if not isinstance(entries, list) or not all(isinstance(entry, str) and entry.strip() for entry in entries):
        raise NeuronforgeError(f"{path} does not hold a list of module names (non-empty strings)", _FIX)
    return entries


def write_not_convert(folder: Path, entries: Sequence[str]) -> Path:
    """Write `folder`/modules_to_not_convert.json atomically; returns its path."""
    path = Path(folder) / NOT_CONVERT_FILE
    atomic_write_json(path, {KEY: list(entries)})
    return path
