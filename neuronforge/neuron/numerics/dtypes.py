"""The dtype and quantization-type names every options model shares, defined once (no torch import).

NxD's weight quantizer takes int8, f8e4m3 or f8e5m2, per channel or per tensor; stage 1 tunes and exports
grid-exactly for int8 and f8e4m3 (auto-round has no e5m2 grid of ours); the KV cache is NxDI's direct-cast
fp8 (e4m3) or bf16.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

QuantDtype = Literal["int8", "f8e4m3", "f8e5m2"]
QuantType = Literal["per_channel_symmetric", "per_tensor_symmetric"]
ExportDtype = Literal["int8", "f8e4m3"]
KvDtype = Literal["fp8", "bf16"]

QUANT_DTYPES: tuple[QuantDtype, ...] = get_args(QuantDtype)
QUANT_TYPES: tuple[QuantType, ...] = get_args(QuantType)
KV_DTYPES: tuple[KvDtype, ...] = get_args(KvDtype)

# The same names as option-model field types, with the help text every command shows for them.
ExportDtypeOption = Annotated[ExportDtype, Field(description="weight dtype on Neuron: int8 or f8e4m3 (fp8)")]
QuantDtypeOption = Annotated[QuantDtype, Field(description="weight dtype on Neuron as NxD names it")]
QuantTypeOption = Annotated[
    QuantType, Field(description="NxD weight scales: per_channel_symmetric (recommended) or per_tensor_symmetric")
]
KvOption = Annotated[KvDtype, Field(description="KV cache on Neuron: fp8 (NxDI's direct-cast e4m3) or bf16")]
