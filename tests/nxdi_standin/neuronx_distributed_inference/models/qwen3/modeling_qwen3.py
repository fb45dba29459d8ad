"""Stand-in for neuronx_distributed_inference.models.qwen3.modeling_qwen3 (NxDI 0.8 and 0.9).

aws-neuron/neuronx-distributed-inference@cd3abf3 src/neuronx_distributed_inference/models/qwen3/modeling_qwen3.py:
Qwen3InferenceConfig requires head_dim among :62-75; NeuronQwen3Attention reads config.head_dim (:85) and builds
q/k layernorms over it (:99-100), filled from HF's q_norm/k_norm (:224-230); no attention bias.
utils/constants.py:60 maps "qwen3" here.
"""

from __future__ import annotations

from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM


class Qwen3InferenceConfig(InferenceConfig):
    def get_required_attributes(self) -> list[str]:
        return [
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "num_key_value_heads",
            "head_dim",
            "pad_token_id",
            "vocab_size",
            "max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "hidden_act",
        ]


class NeuronQwen3ForCausalLM(NeuronBaseForCausalLM):
    @classmethod
    def get_config_cls(cls) -> type[InferenceConfig]:
        return Qwen3InferenceConfig

    @staticmethod
    def attention_head_dim(config: InferenceConfig) -> int:
        return getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
