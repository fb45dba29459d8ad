"""Make the neuron_config.json NxDI writes loadable by NxDI itself (the fp8-KV endpoint start-up bug).

NxDI saves the compiled model's InferenceConfig with a generic `to_dict` (NxDI 0.8 models/config.py:62-77) that
turns each `QuantizationType` member of `kv_quant_config` into a dict of its attributes
(`{"_value_": "per_tensor_symmetric", "_name_": ..., "__objclass__": {...}}`) and the torch dtype into its name.
vllm-neuron loads precompiled artifacts with `neuronx_model_cls(compiled_path)` (vllm_neuron/worker/
neuronx_distributed_model_loader.py:216), NxDI re-reads that JSON (application_base.py:82-83, config.py:925-1001)
and builds `KVQuantizationConfig(**dict)` (config.py:299-304), whose direct-cast assert compares the dict with the
Enum member and fails (NxD quantization/quantization_config.py:72-80); the loader catches only FileNotFoundError
and ValueError (loader:189), so the server dies. No JSON value can be an Enum member, but NxD's constructor
defaults are exactly the one KV mode NxDI can serve (per-tensor K and V, float8_e4m3fn, direct cast): leaving out
every key that equals the installed NxD's default makes the real loader rebuild the same settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any

from neuronforge.errors import NeuronforgeError

KV_KEYS = ("k_quant_method", "v_quant_method", "quant_dtype", "direct_cast")
_JSON_NATIVE = ("direct_cast",)  # keys whose value survives JSON as is


def plain_value(value: Any) -> Any:
    """An Enum member, its to_dict() form, a torch dtype or a plain value, as the plain JSON value it stands for."""
    if isinstance(value, Mapping) and "_value_" in value:
        return value["_value_"]
    if isinstance(value, Enum):
        return value.value
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":  # torch.float8_e4m3fn -> its name
        return str(value).removeprefix("torch.")
    return value


def kv_settings(kv: Any) -> dict[str, Any]:
    """The four KV-quantization settings of a KVQuantizationConfig object or of any dict form of it, as plain values."""
    source = kv if isinstance(kv, Mapping) else vars(kv)
    return {key: plain_value(source[key]) for key in KV_KEYS if key in source}


def loadable_kv_quant_config(written: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The kv_quant_config dict that KVQuantizationConfig(**it) turns back into `written`'s settings.

    `defaults` are the settings of the installed NxD's `KVQuantizationConfig()`. Keys equal to a default are left
    out (NxD fills them in as real Enum members and dtypes); a non-default Enum or dtype cannot be written as JSON
    that NxDI reads back, so it is refused.
    """
    want, have = kv_settings(written), kv_settings(defaults)
    loadable: dict[str, Any] = {}
    for key, value in want.items():
        if key in _JSON_NATIVE:
            loadable[key] = value
        elif value != have.get(key):
            raise NeuronforgeError(
                f"kv_quant_config {key}={value!r} differs from NxD's default {have.get(key)!r}, and NxDI cannot "
                "re-read a non-default Enum or dtype from neuron_config.json",
                "use --kv fp8 (direct-cast e4m3, per-tensor: NxD's defaults) or --kv bf16",
            )
    return loadable


def unloadable_kv_quant_config(neuron_config: Mapping[str, Any]) -> str | None:
    """Why NxDI could not re-read this neuron_config.json's kv_quant_config (None when it can)."""
    kv = neuron_config.get("kv_quant_config")
    if not isinstance(kv, Mapping):
        return None
    enums = sorted(key for key, value in kv.items() if isinstance(value, Mapping))
    if enums:
        return f"kv_quant_config holds {', '.join(enums)} as serialized Enums, which NxDI's loader rejects"
    if isinstance(kv.get("quant_dtype"), str):
        return "kv_quant_config holds quant_dtype as a string, which NxDI's KV cache cannot use as a torch dtype"
    return None
