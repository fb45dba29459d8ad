"""Stand-in for neuronx_distributed_inference.models.qwen2.modeling_qwen2 (NxDI 0.8 and 0.9).

aws-neuron/neuronx-distributed-inference@cd3abf3 src/neuronx_distributed_inference/models/qwen2/modeling_qwen2.py:
Qwen2InferenceConfig sets qkv_bias=True, o_bias=False (:59-62) and requires :65-76; NeuronQwen2Attention sizes heads
as hidden_size // num_attention_heads whatever config.head_dim says (:86-97). utils/constants.py:57 maps "qwen2" here.
"""

from __future__ import annotations

from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM


class Qwen2InferenceConfig(InferenceConfig):
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


class NeuronQwen2ForCausalLM(NeuronBaseForCausalLM):
    qkv_bias = True

    @classmethod
    def get_config_cls(cls) -> type[InferenceConfig]:
        return Qwen2InferenceConfig
