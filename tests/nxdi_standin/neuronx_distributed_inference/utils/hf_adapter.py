"""Stand-in for neuronx_distributed_inference.utils.hf_adapter."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from neuronx_distributed_inference import record


def load_pretrained_config(model_path: str) -> Callable[[Any], None]:
    record("load_pretrained_config", model_path=model_path)
    hf = json.loads((Path(model_path) / "config.json").read_text())

    def load(config: Any) -> None:
        for key, value in hf.items():
            setattr(config, key, value)

    return load


class HuggingFaceGenerationAdapter:
    def __init__(self, model: Any) -> None:
        record("HuggingFaceGenerationAdapter", model=model)
        self.model = model

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 16,
        **kwargs: Any,
    ) -> torch.Tensor:
        record("generate", input_ids=input_ids, max_new_tokens=max_new_tokens, kwargs=kwargs)
        return self.model.generate_tokens(input_ids, max_new_tokens)
