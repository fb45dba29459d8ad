"""Golden request files: compare what we build with tests/golden/<name>.json."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ROLE = "arn:aws:iam::123456789012:role/neuronforge-sagemaker"
REGEN = os.environ.get("NEURONFORGE_REGEN_GOLDEN") == "1"


def check_golden(name: str, payload: Any) -> None:
    """Compare with tests/golden/<name>.json; NEURONFORGE_REGEN_GOLDEN=1 rewrites it."""
    path = GOLDEN / f"{name}.json"
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    if REGEN:
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with NEURONFORGE_REGEN_GOLDEN=1"
    assert json.loads(path.read_text()) == json.loads(text)
