"""The instance catalogue (accelerator, NeuronCores) and per-job-kind instance validation.

This module is the single source of truth for NeuronCore counts: `neuronforge.neuron.config` imports
`neuron_cores` from here for tp_degree checks. Which instance types each SageMaker API accepts comes from
botocore's own service model, because neither botocore nor moto rejects a wrong type before AWS does.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

from neuronforge.errors import NeuronforgeError

JobKind = Literal["training", "processing", "endpoint"]
Role = Literal["quantize", "compile", "compile-cpu", "serve"]

# botocore shape holding the enum of instance types each API accepts.
_ENUM_SHAPES: dict[str, str] = {
    "training": "TrainingInstanceType",
    "processing": "ProcessingInstanceType",
    "endpoint": "ProductionVariantInstanceType",
}


@dataclass(frozen=True)
class NeuronInstance:
    family: str  # "inf2" | "trn1"
    chips: int
    neuron_cores: int  # NeuronCore-v2: 2 per Inferentia2/Trainium chip, 16 GiB HBM each


# research/sagemaker.md §3.1 (Neuron inferentia2/trainium architecture pages).
NEURON_INSTANCES: dict[str, NeuronInstance] = {
    "inf2.xlarge": NeuronInstance("inf2", 1, 2),
    "inf2.8xlarge": NeuronInstance("inf2", 1, 2),
    "inf2.24xlarge": NeuronInstance("inf2", 6, 12),
    "inf2.48xlarge": NeuronInstance("inf2", 12, 24),
    "trn1.2xlarge": NeuronInstance("trn1", 1, 2),
    "trn1.32xlarge": NeuronInstance("trn1", 16, 32),
    "trn1n.32xlarge": NeuronInstance("trn1", 16, 32),
}

# GPU families that can run the quantize stage as a training job (research §3.2).
GPU_FAMILIES = ("g5", "g6", "g6e", "p4d", "p4de", "p5")
# CPU families for a cross-compiling processing job (plenty of host RAM for tracing and sharding).
CPU_FAMILIES = ("m5", "m6i", "m7i", "c5", "c6i", "c7i", "r5", "r6i", "r7i")

# Per role: the SageMaker API it runs under and the families it may use.
ROLES: dict[str, tuple[JobKind, tuple[str, ...], str]] = {
    "quantize": ("training", GPU_FAMILIES, "a GPU training job"),
    "compile": ("training", ("trn1", "trn1n"), "a Neuron compile training job"),
    "compile-cpu": ("processing", CPU_FAMILIES, "a CPU cross-compile processing job"),
    "serve": ("endpoint", ("inf2",), "an inf2 endpoint"),
}
_EXAMPLES = {
    "quantize": "ml.g6e.2xlarge",
    "compile": "ml.trn1.2xlarge",
    "compile-cpu": "ml.r7i.8xlarge",
    "serve": "ml.inf2.xlarge",
}


def _bare(instance_type: str) -> str:
    return instance_type.removeprefix("ml.")


def family(instance_type: str) -> str:
    """`ml.inf2.xlarge` -> `inf2`."""
    return _bare(instance_type).split(".")[0]


def neuron_instance(instance_type: str) -> NeuronInstance:
    """The catalogue entry for an inf2/trn1 type, with or without the `ml.` prefix."""
    entry = NEURON_INSTANCES.get(_bare(instance_type))
    if entry is None:
        known = ", ".join(f"ml.{name}" for name in NEURON_INSTANCES)
        raise NeuronforgeError(f"{instance_type} is not a known Neuron instance type", f"use one of: {known}")
    return entry


def neuron_cores(instance_type: str) -> int:
    """NeuronCores on an inf2/trn1 instance (`ml.` prefix optional)."""
    return neuron_instance(instance_type).neuron_cores


def accelerator(instance_type: str) -> Literal["neuron", "gpu", "cpu"]:
    fam = family(instance_type)
    if _bare(instance_type) in NEURON_INSTANCES or fam.startswith(("inf", "trn")):
        return "neuron"
    if re.fullmatch(r"(g|p)\d+[a-z]*", fam):
        return "gpu"
    return "cpu"


@functools.lru_cache(maxsize=None)
def allowed_instance_types(kind: JobKind) -> frozenset[str]:
    """Instance types the SageMaker API for `kind` accepts, read from botocore's service model."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    return frozenset(model.shape_for(_ENUM_SHAPES[kind]).enum)


def validate_instance(role: Role, instance_type: str) -> str:
    """Check `instance_type` against the API enum of the role's job kind, then against the role's families."""
    kind, families, what = ROLES[role]
    example = _EXAMPLES[role]
    if not instance_type.startswith("ml."):
        raise NeuronforgeError(f"instance type '{instance_type}' lacks the 'ml.' prefix", f"SageMaker names it like {example}")
    if instance_type not in allowed_instance_types(kind):
        if any(instance_type in allowed_instance_types(other) for other in _ENUM_SHAPES):
            fix = f"{instance_type} exists but SageMaker {kind} jobs cannot use it; use e.g. {example} for {what}"
        else:
            fix = f"check the spelling; use e.g. {example} for {what}"
        raise NeuronforgeError(f"{instance_type} is not a valid SageMaker {kind} instance type", fix)
    if family(instance_type) not in families:
        allowed = ", ".join(f"ml.{f}.*" for f in families)
        raise NeuronforgeError(f"{instance_type} cannot run {what}", f"use one of {allowed} (e.g. {example})")
    return instance_type


def validate_tp_degree(instance_type: str, tp_degree: int) -> int:
    """tp_degree must be between 1 and the NeuronCores of the instance that will load the model."""
    cores = neuron_cores(instance_type)
    if not 1 <= tp_degree <= cores:
        bigger = [f"ml.{n}" for n, e in NEURON_INSTANCES.items() if e.family == "inf2" and e.neuron_cores >= tp_degree]
        fix = f"use --tp-degree between 1 and {cores}" + (f", or a larger instance: {', '.join(bigger)}" if bigger else "")
        raise NeuronforgeError(f"tp_degree {tp_degree} does not fit {instance_type} ({cores} NeuronCores)", fix)
    return tp_degree
