"""Can this host run the Neuron stage? Neuron devices and NxD Inference, probed without importing either."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path


def neuron_devices(dev_root: Path = Path("/dev")) -> list[str]:
    return sorted(p.name for p in dev_root.glob("neuron*") if re.fullmatch(r"neuron\d+", p.name))


def neuron_unavailable(dev_root: Path = Path("/dev")) -> str | None:
    """Why the compile stage cannot run here (None when it can): it needs a Neuron device and NxD Inference."""
    if not neuron_devices(dev_root):
        return "no Neuron device on this host (/dev/neuron*); run the compile stage on an inf2/trn1 host"
    if importlib.util.find_spec("neuronx_distributed_inference") is None:
        return "NxD Inference is not installed; see `neuronforge doctor` for the install command"
    return None
