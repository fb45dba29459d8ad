"""Stand-in for neuronx_distributed_inference.models.mistral.modeling_mistral, which exists from NxDI 0.9 on.

NxDI 0.9 (ef2731e) models/mistral/modeling_mistral.py:60 MistralInferenceConfig, :190 NeuronMistralForCausalLM with
get_config_cls() -> MistralInferenceConfig (:228); utils/constants.py:55 maps HF "mistral" to it. NxDI 0.8 has neither.
"""

from __future__ import annotations

from neuronx_distributed_inference.models.config import InferenceConfig
from neuronx_distributed_inference.models.llama.modeling_llama import LlamaInferenceConfig, NeuronLlamaForCausalLM


class MistralInferenceConfig(LlamaInferenceConfig):
    pass


class NeuronMistralForCausalLM(NeuronLlamaForCausalLM):
    @classmethod
    def get_config_cls(cls) -> type[InferenceConfig]:
        return MistralInferenceConfig
