"""Stand-in for neuronx_distributed_inference.models.llama.modeling_llama."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from neuronx_distributed_inference import record
from neuronx_distributed_inference.models.config import InferenceConfig


class LlamaInferenceConfig(InferenceConfig):
    pass


class NeuronLlamaForCausalLM:
    def __init__(self, model_path: str, config: InferenceConfig) -> None:
        record("NeuronLlamaForCausalLM", model_path=model_path, config=config)
        self.model_path, self.config = model_path, config
        self.loaded = False

    @classmethod
    def save_quantized_state_dict(cls, model_path: str, config: InferenceConfig) -> None:
        target = Path(config.neuron_config.quantized_checkpoints_path)
        record("save_quantized_state_dict", model_path=model_path, config=config, target_is_dir=target.is_dir())
        if target.is_dir():
            (target / "model.safetensors").write_bytes(b"standin")
        else:  # what NxDI does when the directory is missing
            target.write_bytes(b"pickle")

    def compile(self, path: str) -> None:
        record("compile", path=path)
        (Path(path) / "model.pt").write_bytes(b"standin")
        nc = {k: v for k, v in vars(self.config.neuron_config).items() if k != "kv_quant_config"}
        (Path(path) / "neuron_config.json").write_text(json.dumps({"neuron_config": nc}))

    def load(self, path: str) -> None:
        record("load", path=path, compiled=os.path.exists(Path(path) / "model.pt"))
        self.loaded = True

    def generate_tokens(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        assert self.loaded, "generate before load"
        new = torch.arange(3, 3 + max_new_tokens, dtype=input_ids.dtype).unsqueeze(0)
        return torch.cat([input_ids, new], dim=1)
