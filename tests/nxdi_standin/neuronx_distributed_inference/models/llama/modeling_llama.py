"""Stand-in for neuronx_distributed_inference.models.llama.modeling_llama (NxDI 0.8, SDK 2.28).

aws-neuron/neuronx-distributed-inference@cd3abf3 src/neuronx_distributed_inference/models/llama/modeling_llama.py:
LlamaInferenceConfig's required attributes (:320-333); attention sized with config.head_dim when set (:1003).
The shared machinery (config round trip, quantized checkpoint, sharding checks, load) is in models/model_base.py.
"""

from __future__ import annotations

from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM


class LlamaInferenceConfig(InferenceConfig):
    def get_required_attributes(self) -> list[str]:
        return [
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "num_key_value_heads",
            "pad_token_id",
            "vocab_size",
            "max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "hidden_act",
        ]


class NeuronLlamaForCausalLM(NeuronBaseForCausalLM):
    @classmethod
    def get_config_cls(cls) -> type[InferenceConfig]:
        return LlamaInferenceConfig

    @staticmethod
    def attention_head_dim(config: InferenceConfig) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
