"""The parts of a model's config.json that decide how NxDI can shard it, and the tp degree neuron-config picks.

A leaf of the planner: the planner sizes deployments from these facts, and the NxDI config rules (neuron/nxdi/config.py)
check a NeuronConfig against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from neuronforge.errors import NeuronforgeError
from neuronforge.hf.families import attention_biased, forced_bf16_blocks, sliding_window
from neuronforge.neuron.planner.instances import neuron_cores


class ModelFacts(BaseModel):
    """The parts of an HF config.json that decide what NxDI can do with the model."""

    model_config = ConfigDict(frozen=True)

    model_type: str
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    attention_bias: bool  # q/k/v biases NxDI loads: Qwen2 always, Llama with attention_bias (hf/families.py)
    mlp_bias: bool
    max_position_embeddings: int | None
    sliding_window: int | None = None  # the KV cache length NxDI uses when set (kv_cache_manager.py:198-203)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelFacts:
        missing = [k for k in ("num_hidden_layers", "num_attention_heads") if k not in config]
        if missing:
            raise NeuronforgeError(f"config.json lacks {missing}", "point at a model folder written by save_pretrained")
        heads = int(config["num_attention_heads"])
        return cls(
            model_type=str(config.get("model_type", "")),
            num_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=attention_biased(config),
            mlp_bias=bool(config.get("mlp_bias", False)),
            max_position_embeddings=config.get("max_position_embeddings"),
            sliding_window=sliding_window(config),
        )

    def forced_bf16(self, dtype: str | None) -> dict[str, str]:
        """Blocks NxDI must keep bf16 for these weights (fp8: the biased ones), with why (hf/families.py)."""
        config = {"model_type": self.model_type, "num_hidden_layers": self.num_layers}
        return forced_bf16_blocks({**config, "attention_bias": self.attention_bias, "mlp_bias": self.mlp_bias}, dtype)


def choose_tp(facts: ModelFacts, instance: str) -> int:
    """The largest tp_degree that fits the instance and divides the query heads, preferring GQA-preserving ones."""
    cores = neuron_cores(instance)
    fits = [t for t in range(1, cores + 1) if facts.num_attention_heads % t == 0]
    return max([t for t in fits if keeps_gqa(t, facts.num_key_value_heads)] or fits)


def keeps_gqa(tp_degree: int, num_key_value_heads: int) -> bool:
    """True unless NxDI would convert GQA to MHA (KV heads neither split evenly nor replicated evenly)."""
    return num_key_value_heads % tp_degree == 0 or tp_degree % num_key_value_heads == 0
