"""Stand-in for NxD Inference (test only). CALLS records (name, details) for every API call."""

from __future__ import annotations

import os
from typing import Any

CALLS: list[tuple[str, dict[str, Any]]] = []
WATCHED_ENV = ("XLA_HANDLE_SPECIAL_SCALAR", "UNSAFE_FP8FNCAST", "NEURON_PLATFORM_TARGET_OVERRIDE")


def record(name: str, **details: Any) -> None:
    details["env"] = {key: os.environ.get(key) for key in WATCHED_ENV}
    CALLS.append((name, details))
