"""neuronforge: quantize a Hugging Face causal LM and ship it to AWS Inferentia2/Trainium.

The Python API, one verb per step (like `torchao.quantize_` and `llmcompressor.oneshot`):

    import neuronforge as nf
    result = nf.quantize(nf.QuantizeOptions(model="smollm2", out="q-int8", dtype="int8"))  # folder to folder
    done = nf.quantize_model(model, tokenizer, nf.QuantizeSettings(dtype="int8"))  # a loaded nn.Module, in place

Stage 1 (GPU or CPU) writes a fake-quantized bf16 checkpoint on NxD's exact grid plus the list of
blocks that stay bf16; stage 2 (inf2/trn1) compiles it with NxD Inference. The CPU reference path
emulates Neuron numerics so CI can check stage 2's output without Neuron hardware.

Attributes load lazily (PEP 562), so `import neuronforge` imports neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from neuronforge.errors import NeuronforgeError
from neuronforge.version import __version__

# public name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "quantize": ("neuronforge.pipeline.quantize.api", "quantize"),
    "quantize_model": ("neuronforge.pipeline.quantize.api", "quantize_model"),
    "QuantizeOptions": ("neuronforge.pipeline.quantize.api", "QuantizeOptions"),
    "QuantizeSettings": ("neuronforge.pipeline.quantize.api", "QuantizeSettings"),
    "QuantizedModel": ("neuronforge.pipeline.quantize.api", "QuantizedModel"),
    "QuantizeResult": ("neuronforge.pipeline.quantize.api", "QuantizeResult"),
    "emulate": ("neuronforge.neuron.numerics.emulate", "emulate"),
    "load_emulated": ("neuronforge.neuron.numerics.emulate", "load_emulated"),
    "EmulationSpec": ("neuronforge.neuron.numerics.emulation_spec", "EmulationSpec"),
    "EmulatedModel": ("neuronforge.neuron.numerics.emulate", "EmulatedModel"),
    "evaluate": ("neuronforge.pipeline.evaluate.api", "evaluate"),
    "EvaluateOptions": ("neuronforge.pipeline.evaluate.api", "EvaluateOptions"),
    "EvaluationReport": ("neuronforge.pipeline.evaluate.report", "EvaluationReport"),
    "plan": ("neuronforge.neuron.planner.plan", "plan"),
    "Deployment": ("neuronforge.neuron.planner.plan", "Deployment"),
    "load_model_shape": ("neuronforge.neuron.planner.plan", "load_model_shape"),
    "neuron_config": ("neuronforge.neuron.nxdi.config", "neuron_config"),
    "NeuronConfigOptions": ("neuronforge.neuron.nxdi.config", "NeuronConfigOptions"),
    "NeuronConfigSpec": ("neuronforge.neuron.nxdi.config", "NeuronConfigSpec"),
    "compile": ("neuronforge.neuron.nxdi.compile", "compile_model"),
    "compile_model": ("neuronforge.neuron.nxdi.compile", "compile_model"),
    "CompileOptions": ("neuronforge.neuron.nxdi.compile", "CompileOptions"),
    "package": ("neuronforge.sagemaker.packaging", "package"),
    "PackageOptions": ("neuronforge.sagemaker.packaging", "PackageOptions"),
    "run": ("neuronforge.pipeline.run.api", "run_pipeline"),
    "RunConfig": ("neuronforge.pipeline.run.config", "RunConfig"),
    "RunOutcome": ("neuronforge.pipeline.run.api", "RunOutcome"),
    "fetch_model": ("neuronforge.assets.models", "fetch"),
}

__all__ = [
    "NeuronforgeError",
    "__version__",
    "quantize",
    "quantize_model",
    "QuantizeOptions",
    "QuantizeSettings",
    "QuantizedModel",
    "QuantizeResult",
    "emulate",
    "load_emulated",
    "EmulationSpec",
    "EmulatedModel",
    "evaluate",
    "EvaluateOptions",
    "EvaluationReport",
    "plan",
    "Deployment",
    "load_model_shape",
    "neuron_config",
    "NeuronConfigOptions",
    "NeuronConfigSpec",
    "compile",
    "compile_model",
    "CompileOptions",
    "package",
    "PackageOptions",
    "run",
    "RunConfig",
    "RunOutcome",
    "fetch_model",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'neuronforge' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from neuronforge.assets.models import fetch as fetch_model
    from neuronforge.neuron.numerics.emulate import EmulatedModel, emulate, load_emulated
    from neuronforge.neuron.numerics.emulation_spec import EmulationSpec
    from neuronforge.neuron.nxdi.compile import CompileOptions, compile_model
    from neuronforge.neuron.nxdi.compile import compile_model as compile
    from neuronforge.neuron.nxdi.config import NeuronConfigOptions, NeuronConfigSpec, neuron_config
    from neuronforge.neuron.planner.plan import Deployment, load_model_shape, plan
    from neuronforge.pipeline.evaluate.api import EvaluateOptions, evaluate
    from neuronforge.pipeline.evaluate.report import EvaluationReport
    from neuronforge.pipeline.quantize.api import (
        QuantizedModel,
        QuantizeOptions,
        QuantizeResult,
        QuantizeSettings,
        quantize,
        quantize_model,
    )
    from neuronforge.pipeline.run.api import RunOutcome
    from neuronforge.pipeline.run.api import run_pipeline as run
    from neuronforge.pipeline.run.config import RunConfig
    from neuronforge.sagemaker.packaging import PackageOptions, package
