"""Validate and load an ordinary Hugging Face folder (config.json + safetensors + tokenizer), with clear errors.

Path-only: embedded model names are resolved above this layer (`neuronforge.assets.models.resolve_model`).
Nothing here ever reaches a model hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# NxD Inference model classes we target, keyed by HF `model_type`.
SUPPORTED_MODEL_TYPES: dict[str, str] = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
DEFAULT_MODEL = "smollm2"


def force_offline() -> None:
    """Make any accidental hub access fail fast instead of hanging or downloading."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def read_config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise NeuronforgeError(
            f"{path / 'config.json'} is not valid JSON ({exc})", "re-export the model with save_pretrained"
        ) from exc


def validate_hf_folder(path: Path) -> Path:
    """Check that `path` is a loadable HF causal-LM folder of a supported architecture."""
    if not path.exists():
        raise NeuronforgeError(
            f"model path {path} does not exist",
            f"pass a Hugging Face model folder, or '{DEFAULT_MODEL}' after `neuronforge model fetch {DEFAULT_MODEL}`",
        )
    if not path.is_dir() or not (path / "config.json").exists():
        raise NeuronforgeError(
            f"{path} is not a Hugging Face model folder (no config.json)",
            "point at the directory written by save_pretrained (config.json, *.safetensors, tokenizer files)",
        )
    if not any(path.glob("*.safetensors")):
        raise NeuronforgeError(
            f"{path} has no *.safetensors weights",
            "re-save the model with save_pretrained(..., safe_serialization=True)",
        )
    model_type = read_config(path).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(f"{k} ({v})" for k, v in SUPPORTED_MODEL_TYPES.items())
        raise NeuronforgeError(
            f"{path} holds a '{model_type}' model; neuronforge supports: {supported}",
            "use a Llama- or Mistral-family checkpoint",
        )
    return path


def load_model(path: Path, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a validated folder on CPU in `dtype` (default bf16, what Neuron computes in)."""
    import torch
    from transformers import AutoModelForCausalLM

    force_offline()
    validate_hf_folder(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.bfloat16, local_files_only=True)
    model.eval()
    return model


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    force_offline()
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise NeuronforgeError(
            f"no usable tokenizer in {path} ({exc.__class__.__name__})",
            "save the tokenizer next to the weights (tokenizer.save_pretrained(folder))",
        ) from exc
