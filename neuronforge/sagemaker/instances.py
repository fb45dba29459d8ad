"""Which instance types each SageMaker job kind may use, checked before any AWS call.

NeuronCore counts come from the hardware catalogue (`neuronforge.neuron.planner.instances`). Which instance types each
SageMaker API accepts comes from botocore's own service model, because neither botocore nor moto rejects a
wrong type before AWS does.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.planner.instances import NEURON_INSTANCES, bare_type, family, neuron_cores

JobKind = Literal["training", "processing", "endpoint"]
Role = Literal["quantize", "compile", "compile-cpu", "serve"]

# botocore shape holding the enum of instance types each API accepts.
_ENUM_SHAPES: dict[str, str] = {
    "training": "TrainingInstanceType",
    "processing": "ProcessingInstanceType",
    "endpoint": "ProductionVariantInstanceType",
}


# GPU families that can run the quantize stage as a training job (docs/sagemaker.md, "Instance families per job type").
GPU_FAMILIES = ("g5", "g6", "g6e", "p4d", "p4de", "p5")
# Training-job families with NVMe instance storage: SageMaker provisions no EBS volume for them, "available storage
# is fixed to the NVMe-type instance's storage capacity" (botocore sagemaker ResourceConfig.VolumeSizeInGB doc).
NVME_FAMILIES = frozenset((*GPU_FAMILIES, "trn1", "trn1n"))
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


def accelerator(instance_type: str) -> Literal["neuron", "gpu", "cpu"]:
    fam = family(instance_type)
    if bare_type(instance_type) in NEURON_INSTANCES or fam.startswith(("inf", "trn")):
        return "neuron"
    if re.fullmatch(r"(g|p)\d+[a-z]*", fam):
        return "gpu"
    return "cpu"


@functools.cache
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
        raise NeuronforgeError(
            f"instance type '{instance_type}' lacks the 'ml.' prefix", f"SageMaker names it like {example}"
        )
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
        fix = f"use --tp-degree between 1 and {cores}" + (
            f", or a larger instance: {', '.join(bigger)}" if bigger else ""
        )
        raise NeuronforgeError(f"tp_degree {tp_degree} does not fit {instance_type} ({cores} NeuronCores)", fix)
    return tp_degree
