"""Stand-in for neuronx_distributed_inference.utils.hf_adapter.

load_pretrained_config follows NxDI 0.8 utils/hf_adapter.py:36-80: the HF config's attributes are copied onto
the InferenceConfig and its dtype moves into the NeuronConfig unless the user set one. The real code reads the
config with transformers 4.57's AutoConfig (NxDI setup.py:43 pins transformers==4.57.*); this venv has
transformers 5, so the stand-in reads config.json itself and applies 4.57's LlamaConfig defaults for the keys
that differ between the two (configuration_llama.py in 4.57.6: rope_theta=10000.0, rope_scaling=None,
pad_token_id=None). A config.json without top-level rope_theta therefore gets 10000 here, as on the device.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from neuronx_distributed_inference import record
from neuronx_distributed_inference.models.config import to_torch_dtype

TRANSFORMERS_457_LLAMA_DEFAULTS = {"rope_theta": 10000.0, "rope_scaling": None, "pad_token_id": None}


def load_pretrained_config(model_path_or_name: str | None = None, hf_config: Any = None) -> Callable[[Any], None]:
    record("load_pretrained_config", model_path=model_path_or_name)

    def load_config(self: Any) -> None:
        if (model_path_or_name is None) == (hf_config is None):
            raise ValueError('Please provide only one of "model_path_or_name" or "hf_config"')
        config_dict = (
            dict(hf_config)
            if hf_config is not None
            else {
                **TRANSFORMERS_457_LLAMA_DEFAULTS,
                **json.loads((Path(model_path_or_name) / "config.json").read_text()),
            }
        )
        hf_dtype = config_dict.get("dtype", config_dict.get("torch_dtype", None))
        if hf_dtype is not None:
            if self.neuron_config is not None and not self.neuron_config.overrides_torch_dtype:
                self.neuron_config.torch_dtype = hf_dtype
                if isinstance(self.neuron_config.torch_dtype, str):
                    self.neuron_config.torch_dtype = to_torch_dtype(self.neuron_config.torch_dtype)
            config_dict.pop("dtype", None)
            config_dict.pop("torch_dtype", None)
        self.__dict__.update(config_dict)

    return load_config


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
