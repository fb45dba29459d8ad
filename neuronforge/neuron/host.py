"""Can this host run the Neuron stage? Neuron devices and NxD Inference, probed without importing either."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

DEV_ROOT_ENV = "NEURONFORGE_DEV_ROOT"  # where neuron<N> device nodes are looked up (default /dev)


def neuron_devices(dev_root: Path | None = None) -> list[str]:
    root = dev_root if dev_root is not None else Path(os.environ.get(DEV_ROOT_ENV, "/dev"))
    return sorted(p.name for p in root.glob("neuron*") if re.fullmatch(r"neuron\d+", p.name))


def neuron_unavailable(dev_root: Path | None = None) -> str | None:
    """Why the compile stage cannot run here (None when it can): it needs a Neuron device and NxD Inference."""
    if not neuron_devices(dev_root):
        return "no Neuron device on this host (/dev/neuron*); run the compile stage on an inf2/trn1 host"
    if importlib.util.find_spec("neuronx_distributed_inference") is None:
        return "NxD Inference is not installed; see `neuronforge doctor` for the install command"
    return None


CORES_PER_DEVICE = 2  # NeuronCore-v2: each /dev/neuronN is one Inferentia2/Trainium chip with 2 cores (instances.py)


def host_neuron_cores(dev_root: Path | None = None) -> int:
    """NeuronCores this host can load a model on (0 on a CPU host)."""
    return CORES_PER_DEVICE * len(neuron_devices(dev_root))


def host_memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Physical RAM of this host (MemTotal), or None where /proc/meminfo is missing."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
