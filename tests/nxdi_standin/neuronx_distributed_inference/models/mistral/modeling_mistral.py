"""Stand-in for neuronx_distributed_inference.models.mistral.modeling_mistral, which exists from NxDI 0.9 on.

aws-neuron/neuronx-distributed-inference@ef2731e src/neuronx_distributed_inference/models/mistral/modeling_mistral.py:
MistralInferenceConfig (:60) requires :64-76 (tie_word_embeddings, no pad_token_id); NeuronMistralAttention sizes heads
as hidden_size // num_attention_heads and ignores config.head_dim (:83-99), so a Mistral-NeMo checkpoint (head_dim
128, 5120 // 32 = 160) cannot be sharded (NEW-2 of the 2026-12-07 audit); NeuronMistralForCausalLM (:190) with
get_config_cls() -> MistralInferenceConfig (:228); utils/constants.py:55 maps HF "mistral" to it. NxDI 0.8 has neither.
"""

from __future__ import annotations

from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.model_base import NeuronBaseForCausalLM


class MistralInferenceConfig(InferenceConfig):
    def get_required_attributes(self) -> list[str]:
        return [
            "hidden_size",
            "num_attention_heads",
            "num_hidden_layers",
            "num_key_value_heads",
            "vocab_size",
            "max_position_embeddings",
            "rope_theta",
            "rms_norm_eps",
            "hidden_act",
            "tie_word_embeddings",
        ]


class NeuronMistralForCausalLM(NeuronBaseForCausalLM):
    @classmethod
    def get_config_cls(cls) -> type[InferenceConfig]:
        return MistralInferenceConfig
