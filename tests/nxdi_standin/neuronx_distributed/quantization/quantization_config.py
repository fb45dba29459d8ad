"""Stand-in for neuronx_distributed.quantization.quantization_config (SDK 2.28 names)."""

from __future__ import annotations

from enum import Enum

import torch


class QuantizationType(Enum):
    PER_TENSOR_SYMMETRIC = "per_tensor_symmetric"
    PER_CHANNEL_SYMMETRIC = "per_channel_symmetric"


class KVQuantizationConfig:
    """Same signature and direct-cast assertion as NxD's; refuses strings where Enums/dtypes belong."""

    def __init__(
        self,
        k_quant_method: QuantizationType = QuantizationType.PER_TENSOR_SYMMETRIC,
        v_quant_method: QuantizationType = QuantizationType.PER_TENSOR_SYMMETRIC,
        quant_dtype: torch.dtype = torch.float8_e4m3fn,
        direct_cast: bool = True,
    ) -> None:
        if not isinstance(k_quant_method, QuantizationType) or not isinstance(v_quant_method, QuantizationType):
            raise TypeError("k/v_quant_method must be QuantizationType members")
        if not isinstance(quant_dtype, torch.dtype):
            raise TypeError("quant_dtype must be a torch.dtype")
        if direct_cast:
            assert k_quant_method == v_quant_method == QuantizationType.PER_TENSOR_SYMMETRIC
        self.k_quant_method, self.v_quant_method = k_quant_method, v_quant_method
        self.quant_dtype, self.direct_cast = quant_dtype, direct_cast
