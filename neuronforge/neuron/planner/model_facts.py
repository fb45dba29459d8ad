"""The parts of a model's config.json that decide how NxDI can shard it, and the tp degree neuron-config picks.

A leaf of the planner: the planner sizes deployments from these facts, and the NxDI config rules (neuron/nxdi/config.py)
check a NeuronConfig against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.planner.instances import neuron_cores


class ModelFacts(BaseModel):
    """The parts of an HF config.json that decide what NxDI can do with the model."""

    model_config = ConfigDict(frozen=True)

    model_type: str
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    max_position_embeddings: int | None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelFacts:
        missing = [k for k in ("num_hidden_layers", "num_attention_heads") if k not in config]
        if missing:
            raise NeuronforgeError(
                f"config.json lacks {missing}", "point at a Llama/Mistral folder written by save_pretrained"
            )
        heads = int(config["num_attention_heads"])
        return cls(
            model_type=str(config.get("model_type", "")),
            num_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            max_position_embeddings=config.get("max_position_embeddings"),
        )


def choose_tp(facts: ModelFacts, instance: str) -> int:
    """The largest tp_degree that fits the instance and divides the query heads, preferring GQA-preserving ones."""
    cores = neuron_cores(instance)
    fits = [t for t in range(1, cores + 1) if facts.num_attention_heads % t == 0]
    return max([t for t in fits if keeps_gqa(t, facts.num_key_value_heads)] or fits)


def keeps_gqa(tp_degree: int, num_key_value_heads: int) -> bool:
    """True unless NxDI would convert GQA to MHA (KV heads neither split evenly nor replicated evenly)."""
    return num_key_value_heads % tp_degree == 0 or tp_degree % num_key_value_heads == 0
