"""The one place that imports NxD Inference, lazily, so nothing else needs a Neuron host.

NxDI and NxD core exist only in AWS's Neuron pip repository (PyPI has placeholders), and importing
them pulls torch-neuronx and torch_xla. Without them we fail fast with the pinned install command.

The NxDI class a model compiles with must be the class vLLM loads it with: vllm-neuron picks it from the
checkpoint's `architectures` through NxDI's MODEL_TYPES (vllm_neuron/worker/neuronx_distributed_model_loader.py
:639-653). NxDI 0.8 (SDK 2.28) has no "mistral" entry and no models/mistral (utils/constants.py:47-63), so its vLLM
cannot serve Mistral at all; NxDI 0.9 maps "mistral" to models/mistral/modeling_mistral.NeuronMistralForCausalLM
(constants.py:7,55 at ef2731e), which SDK 2.31 (NxDI 0.10) is assumed to keep (its source was not available).
Qwen2 and Qwen3 dense have classes in both (constants.py:9,12,57,60 at cd3abf3; :10,13,60,63 at ef2731e). What each
class reads from config.json, and what neuronforge refuses because of it, is in hf/families.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK, SDKS, install_hint, neuron_sdk

_LLAMA = ("neuronx_distributed_inference.models.llama.modeling_llama", "NeuronLlamaForCausalLM", "LlamaInferenceConfig")
_MISTRAL = (
    "neuronx_distributed_inference.models.mistral.modeling_mistral",
    "NeuronMistralForCausalLM",
    "MistralInferenceConfig",
)
_QWEN2 = ("neuronx_distributed_inference.models.qwen2.modeling_qwen2", "NeuronQwen2ForCausalLM", "Qwen2InferenceConfig")
_QWEN3 = ("neuronx_distributed_inference.models.qwen3.modeling_qwen3", "NeuronQwen3ForCausalLM", "Qwen3InferenceConfig")
# HF model_type -> SDK -> (module, causal-LM class, InferenceConfig subclass); a missing SDK is unsupported.
MODEL_CLASSES: dict[str, dict[str, tuple[str, str, str]]] = {
    "llama": {"2.28": _LLAMA, "2.31": _LLAMA},
    "mistral": {"2.31": _MISTRAL},
    "qwen2": {"2.28": _QWEN2, "2.31": _QWEN2},
    "qwen3": {"2.28": _QWEN3, "2.31": _QWEN3},
}


def model_class_problem(model_type: str, sdk: str) -> tuple[str, str] | None:
    """(what, fix) when no NxDI class both compiles `model_type` on `sdk` and is the one vLLM serves it with."""
    if model_type not in MODEL_CLASSES:
        return f"no NxDI model class for model_type {model_type!r}", f"use one of: {', '.join(MODEL_CLASSES)}"
    if sdk not in MODEL_CLASSES[model_type]:
        sdks = ", ".join(MODEL_CLASSES[model_type])
        return (
            f"Neuron SDK {sdk} cannot serve model_type {model_type!r}: its vLLM (vllm-neuron on NxDI "
            f"{neuron_sdk(sdk).nxdi}) has no NxDI class for it",
            f"use --sdk {sdks}",
        )
    return None


def installed_nxdi_version() -> str | None:
    """The installed neuronx-distributed-inference version (None when pip metadata is absent)."""
    try:
        return metadata.version("neuronx-distributed-inference")
    except metadata.PackageNotFoundError:
        return None


def public_version(version: str | None) -> str | None:
    """'0.8.16251+f3ca5575' -> '0.8.16251': the Neuron DLCs pin NxDI with a local build suffix (Dockerfile ARGs)."""
    return None if version is None else version.split("+", 1)[0]


def check_installed_sdk(sdk: str, installed: str | None) -> None:
    """Refuse to compile for `sdk` unless its exact NxDI build is installed: the record must name the NxDI that the
    SDK's serving image loads with (NEW-9: compiled artifacts do not cross NxDI builds, e.g. 0.10.17970 vs 18399)."""
    pinned = neuron_sdk(sdk).nxdi
    if public_version(installed) == pinned:
        return
    if installed is None:
        raise NeuronforgeError(
            "NxD Inference is importable but has no pip metadata, so its version (and Neuron SDK) is unknown",
            f"install it with pip: {install_hint(sdk)}",
        )
    matching = [entry.sdk for entry in SDKS.values() if entry.nxdi == public_version(installed)]
    raise NeuronforgeError(
        f"--sdk {sdk} expects NxD Inference {pinned}, but this host has {installed}",
        f"pass --sdk {matching[0]}" if matching else install_hint(sdk),
    )


def host_sdk() -> str | None:
    """The supported SDK whose exact NxDI build this host has installed (None off a Neuron host or for another build):
    a compile with no --sdk targets it, since only it can compile here."""
    installed = public_version(installed_nxdi_version())
    return next((entry.sdk for entry in SDKS.values() if entry.nxdi == installed), None)


def default_sdk(model_type: str) -> str:
    """The SDK a model compiles for when none is named: DEFAULT_SDK (documented for Inf2) where its vLLM serves the
    model type, else the first SDK that does (Mistral: 2.31); DEFAULT_SDK for a type no SDK serves (refused later)."""
    served = MODEL_CLASSES.get(model_type, {})
    return DEFAULT_SDK if DEFAULT_SDK in served or not served else next(iter(served))


@dataclass(frozen=True)
class NxdiApi:
    """The NxDI/NxD names the compile step uses."""

    NeuronConfig: Any
    KVQuantizationConfig: Any
    QuantizationType: Any
    load_pretrained_config: Any
    HuggingFaceGenerationAdapter: Any
    model_class: Any
    config_class: Any


def load_nxdi(model_type: str, sdk: str = DEFAULT_SDK) -> NxdiApi:
    """Import NxDI for `model_type`, or raise a NeuronforgeError that says how to install it."""
    if problem := model_class_problem(model_type, sdk):
        raise NeuronforgeError(*problem)
    module_name, model_cls, config_cls = MODEL_CLASSES[model_type][sdk]
    try:
        nxdi_config = importlib.import_module("neuronx_distributed_inference.models.config")
        hf_adapter = importlib.import_module("neuronx_distributed_inference.utils.hf_adapter")
        nxd_qconfig = importlib.import_module("neuronx_distributed.quantization.quantization_config")
        modeling = importlib.import_module(module_name)
    except ImportError as exc:
        raise NeuronforgeError(
            f"NxD Inference is not installed on this host ({exc.name or exc} could not be imported); "
            "compiling needs an inf2/trn1 host with the Neuron SDK",
            install_hint(sdk),
        ) from None
    return NxdiApi(
        NeuronConfig=nxdi_config.NeuronConfig,
        KVQuantizationConfig=nxd_qconfig.KVQuantizationConfig,
        QuantizationType=nxd_qconfig.QuantizationType,
        load_pretrained_config=hf_adapter.load_pretrained_config,
        HuggingFaceGenerationAdapter=hf_adapter.HuggingFaceGenerationAdapter,
        model_class=getattr(modeling, model_cls),
        config_class=getattr(modeling, config_cls),
    )
