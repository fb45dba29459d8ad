"""Our packages must never shadow the real `sagemaker` SDK or claim the name `neuron`, even from the repo root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import importlib.util, json, sys
out = {}
for name in ("sagemaker", "neuron"):
    spec = importlib.util.find_spec(name)
    out[name] = None if spec is None else (spec.origin or str(list(spec.submodule_search_locations or [])))
print(json.dumps(out))
"""


@pytest.mark.parametrize("cwd", [REPO, REPO / "tests"])
def test_top_level_names_do_not_resolve_into_the_repo(cwd: Path) -> None:
    import json

    found = json.loads(
        subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, capture_output=True, text=True, check=True).stdout
    )
    for name, origin in found.items():
        assert origin is None or str(REPO / "neuronforge") not in origin, f"`import {name}` resolves to {origin}"
    assert found["neuron"] is None


def test_our_sagemaker_package_uses_absolute_imports_only() -> None:
    for path in (REPO / "neuronforge" / "sagemaker").rglob("*.py"):
        text = path.read_text()
        assert "from . " not in text and "from .." not in text and "\nfrom ." not in text, path
