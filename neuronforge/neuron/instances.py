"""The Neuron hardware catalogue: NeuronCores per inf2/trn1 instance (the single source of truth).

NeuronCore-v2: 2 per Inferentia2/Trainium chip, 16 GiB HBM each (AWS Neuron architecture pages for
inferentia2 and trainium; see docs/neuron.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from neuronforge.errors import NeuronforgeError


@dataclass(frozen=True)
class NeuronInstance:
    family: str  # "inf2" | "trn1"
    chips: int
    neuron_cores: int  # NeuronCore-v2: 2 per Inferentia2/Trainium chip, 16 GiB HBM each


NEURON_INSTANCES: dict[str, NeuronInstance] = {
    "inf2.xlarge": NeuronInstance("inf2", 1, 2),
    "inf2.8xlarge": NeuronInstance("inf2", 1, 2),
    "inf2.24xlarge": NeuronInstance("inf2", 6, 12),
    "inf2.48xlarge": NeuronInstance("inf2", 12, 24),
    "trn1.2xlarge": NeuronInstance("trn1", 1, 2),
    "trn1.32xlarge": NeuronInstance("trn1", 16, 32),
    "trn1n.32xlarge": NeuronInstance("trn1", 16, 32),
}


def bare_type(instance_type: str) -> str:
    return instance_type.removeprefix("ml.")


def family(instance_type: str) -> str:
    """`ml.inf2.xlarge` -> `inf2`."""
    return bare_type(instance_type).split(".")[0]


def neuron_instance(instance_type: str) -> NeuronInstance:
    """The catalogue entry for an inf2/trn1 type, with or without the `ml.` prefix."""
    entry = NEURON_INSTANCES.get(bare_type(instance_type))
    if entry is None:
        known = ", ".join(f"ml.{name}" for name in NEURON_INSTANCES)
        raise NeuronforgeError(f"{instance_type} is not a known Neuron instance type", f"use one of: {known}")
    return entry


def neuron_cores(instance_type: str) -> int:
    """NeuronCores on an inf2/trn1 instance (`ml.` prefix optional)."""
    return neuron_instance(instance_type).neuron_cores
