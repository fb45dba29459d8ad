"""Stand-in for neuronx_distributed_inference.models.config: NeuronConfig, InferenceConfig and their JSON round trip.

Copied (Apache-2.0; reformatted by ruff) from aws-neuron/neuronx-distributed-inference@cd3abf3 (NxDI 0.8, SDK 2.28),
src/neuronx_distributed_inference/models/config.py: to_torch_dtype 46-55 and to_dict 62-77 verbatim;
NeuronConfig.__init__ keeps, line for line, the keys neuronforge sets or NxDI derives from them (92-138, 161-170,
210-228, 299-304, 574-580, 604-605, 656-663); InferenceConfig 808-871 and 886-1001 without fused speculation.
"""

from __future__ import annotations

import inspect
import json
import logging
import os

import torch
from neuronx_distributed.quantization.quantization_config import KVQuantizationConfig, QuantizedDtype

from neuronx_distributed_inference import record

CONFIG_FILE = "neuron_config.json"


def to_torch_dtype(dtype_str: str) -> torch.dtype:
    dtype_mapping = {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float8_e4m3fn": torch.float8_e4m3fn,
        "float8_e5m2": torch.float8_e5m2,
    }
    assert dtype_str in dtype_mapping, f"Unsupported dtype: {dtype_str}"
    return dtype_mapping[dtype_str]


def to_dict(obj):
    if type(obj) is dict:
        return {k: to_dict(v) for k, v in obj.items()}
    elif type(obj) is list:
        return [to_dict(v) for v in obj]
    elif inspect.isclass(obj):
        return {
            "__module__": obj.__module__,
            "__name__": obj.__name__,
        }
    elif hasattr(obj, "__dict__"):
        return {k: to_dict(v) for k, v in obj.__dict__.items()}
    elif type(obj) is torch.dtype:
        return str(obj).split(".")[1]
    else:
        return obj


class NeuronConfig:
    def __init__(self, **kwargs) -> None:
        record("NeuronConfig", kwargs=dict(kwargs))
        self.batch_size = kwargs.pop("batch_size", 1)
        self.seq_len = kwargs.pop("seq_len", 128)
        self.n_active_tokens = kwargs.pop("n_active_tokens", self.seq_len)
        self.n_positions = kwargs.pop("n_positions", self.seq_len)

        if "torch_dtype" in kwargs:
            self.torch_dtype = kwargs.pop("torch_dtype")
            if isinstance(self.torch_dtype, str):
                self.torch_dtype = to_torch_dtype(self.torch_dtype)
            self.overrides_torch_dtype = kwargs.pop("overrides_torch_dtype", True)
        else:
            self.torch_dtype = torch.bfloat16
            self.overrides_torch_dtype = False

        self.max_context_length = kwargs.pop("max_context_length", self.seq_len)
        self.max_length = kwargs.pop("max_length", self.seq_len)
        self.ctx_batch_size = kwargs.pop("ctx_batch_size", self.batch_size)
        self.tkg_batch_size = kwargs.pop("tkg_batch_size", self.batch_size)
        self.max_batch_size = kwargs.pop("max_batch_size", self.batch_size)
        self.is_continuous_batching = kwargs.pop("is_continuous_batching", False)
        self.kv_cache_batch_size = kwargs.pop("kv_cache_batch_size", self.batch_size)
        self.buckets = kwargs.pop("buckets", [self.seq_len])

        self.quantized = kwargs.pop("quantized", False)
        self.quantized_checkpoints_path = kwargs.pop("quantized_checkpoints_path", None)
        if self.quantized is True:
            assert self.quantized_checkpoints_path is not None, "quantized_checkpoints_path is required"
        self.quantization_type: str = kwargs.pop("quantization_type", "per_tensor_symmetric")
        self.quantization_dtype: str = kwargs.pop("quantization_dtype", "int8")
        self.modules_to_not_convert = kwargs.pop("modules_to_not_convert", None)
        self.kv_cache_quant = kwargs.pop("kv_cache_quant", False)

        self.kv_quant_config = kwargs.pop("kv_quant_config", None)
        if type(self.kv_quant_config) is dict:
            self.kv_quant_config = KVQuantizationConfig(**self.kv_quant_config)

        self.tp_degree = kwargs.pop("tp_degree", 1)
        self.save_sharded_checkpoint = kwargs.pop("save_sharded_checkpoint", False)
        self.on_device_sampling_config = kwargs.pop("on_device_sampling_config", None)

        self._verify_quantized_config()

        if kwargs:
            logging.warning(f"NeuronConfig init: Unexpected keyword arguments: {kwargs}")

    def _verify_quantized_config(self):
        if not self.quantized:
            return
        assert self.quantized_checkpoints_path is not None, "quantized_checkpoints_path is required"
        QuantizedDtype.has_dtype(self.quantization_dtype)


class InferenceConfig:
    attribute_map: dict[str, str] = {}

    def __init__(
        self,
        neuron_config: NeuronConfig,
        fused_spec_config=None,
        load_config=None,
        metadata: dict | None = None,
        **kwargs,
    ):
        record("InferenceConfig", neuron_config=neuron_config)
        self.neuron_config = neuron_config
        self.fused_spec_config = fused_spec_config
        if load_config is not None:
            load_config(self)
        else:
            self.load_config()
        self.metadata = metadata
        for key, value in kwargs.items():
            setattr(self, key, value)
        self.add_derived_config()
        self.validate_config()

    def add_derived_config(self):
        self.num_cores_per_group = 1

    def load_config(self):
        pass

    def get_required_attributes(self) -> list[str]:
        return []

    def validate_config(self):
        missing_attributes = [x for x in self.get_required_attributes() if not hasattr(self, x)]
        assert len(missing_attributes) == 0, f"Config must define {missing_attributes}"

    def save(self, model_path: str | os.PathLike):
        if not os.path.exists(model_path):
            os.makedirs(model_path)
        self.to_json_file(os.path.join(model_path, CONFIG_FILE))

    def to_json_file(self, json_file: str | os.PathLike):
        with open(json_file, "w", encoding="utf-8") as writer:
            writer.write(self.to_json_string() + "\n")

    def to_json_string(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, model_path: str | os.PathLike, **kwargs) -> InferenceConfig:
        return cls.from_json_file(os.path.join(model_path, CONFIG_FILE), **kwargs)

    @classmethod
    def from_json_file(cls, json_file: str | os.PathLike, **kwargs) -> InferenceConfig:
        with open(json_file, encoding="utf-8") as reader:
            return cls.from_json_string(reader.read(), **kwargs)

    @classmethod
    def from_json_string(cls, json_string: str, **kwargs) -> InferenceConfig:
        merged_kwargs = json.loads(json_string)
        merged_kwargs.update(kwargs)
        if "neuron_config" in merged_kwargs and isinstance(merged_kwargs["neuron_config"], dict):
            merged_kwargs["neuron_config"] = cls.get_neuron_config_cls()(**merged_kwargs["neuron_config"])
        return cls(**merged_kwargs)

    @classmethod
    def get_neuron_config_cls(cls) -> type[NeuronConfig]:
        return NeuronConfig
