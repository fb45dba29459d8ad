"""The one place that imports NxD Inference, lazily, so nothing else needs a Neuron host.

NxDI and NxD core exist only in AWS's Neuron pip repository (PyPI has placeholders), and importing
them pulls torch-neuronx and torch_xla. Without them we fail fast with the pinned install command.
Import paths are those of NxDI 0.8 (SDK 2.28); Mistral checkpoints use NxDI's Llama classes, which
share the architecture.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.versions import DEFAULT_SDK, install_hint

# HF model_type -> (module, causal-LM class, InferenceConfig subclass).
MODEL_CLASSES: dict[str, tuple[str, str, str]] = {
    "llama": (
        "neuronx_distributed_inference.models.llama.modeling_llama",
        "NeuronLlamaForCausalLM",
        "LlamaInferenceConfig",
    ),
    "mistral": (
        "neuronx_distributed_inference.models.llama.modeling_llama",
        "NeuronLlamaForCausalLM",
        "LlamaInferenceConfig",
    ),
}


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
    if model_type not in MODEL_CLASSES:
        raise NeuronforgeError(
            f"no NxDI model class for model_type {model_type!r}", f"use one of: {', '.join(MODEL_CLASSES)}"
        )
    module_name, model_cls, config_cls = MODEL_CLASSES[model_type]
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
