"""The Neuron hardware catalogue: NeuronCores, HBM, host RAM and price per inf2/trn1 instance (the single source).

NeuronCore-v2: 2 per Inferentia2/Trainium chip, and 32 GiB of HBM per chip, so 16 GiB per core. Host memory in
GiB per instance. Both from the Neuron architecture pages (`about-neuron/arch/neuron-hardware/inf2-arch.rst` and
`trn1-arch.rst`, SDK 2.28 docs). Prices are a dated, pinned table (`instance_prices.json`, with its sources):
they go stale, so every price shown says its date. See docs/deployment-planner.md.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from neuronforge.errors import NeuronforgeError

HBM_GIB_PER_CORE = 16  # 32 GiB per chip / 2 NeuronCore-v2
PRICES_FILE = Path(__file__).with_name("instance_prices.json")


@dataclass(frozen=True)
class NeuronInstance:
    family: str  # "inf2" | "trn1"
    chips: int
    neuron_cores: int  # NeuronCore-v2: 2 per Inferentia2/Trainium chip, 16 GiB HBM each
    host_gib: int  # host (CPU) memory: NxDI loads every rank's presharded weights into it before the device

    @property
    def hbm_bytes_per_core(self) -> int:
        return HBM_GIB_PER_CORE * 2**30


NEURON_INSTANCES: dict[str, NeuronInstance] = {
    "inf2.xlarge": NeuronInstance("inf2", 1, 2, 16),
    "inf2.8xlarge": NeuronInstance("inf2", 1, 2, 128),
    "inf2.24xlarge": NeuronInstance("inf2", 6, 12, 384),
    "inf2.48xlarge": NeuronInstance("inf2", 12, 24, 768),
    "trn1.2xlarge": NeuronInstance("trn1", 1, 2, 32),
    "trn1.32xlarge": NeuronInstance("trn1", 16, 32, 512),
    "trn1n.32xlarge": NeuronInstance("trn1", 16, 32, 512),
}


@dataclass(frozen=True)
class Price:
    """On-demand USD per hour; `sagemaker` is None where no source listed the ml.* instance."""

    ec2: float
    sagemaker: float | None
    as_of: str
    region: str


@functools.cache
def instance_price(instance_type: str) -> Price:
    """The pinned on-demand price of an inf2/trn1 type (`ml.` prefix optional)."""
    neuron_instance(instance_type)  # refuses types the catalogue lacks
    table = json.loads(PRICES_FILE.read_text())
    entry = table["instances"][bare_type(instance_type)]
    return Price(entry["ec2"], entry["sagemaker"], table["as_of"], table["region"])


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
