"""Stand-in for neuronx_distributed.quantization.quantization_config: the classes neuronforge touches, copied.

Copied (Apache-2.0; only reformatted by ruff) from aws-neuron/neuronx-distributed@v2.28.0
src/neuronx_distributed/quantization/quantization_config.py:10-17 (MyEnumMeta), 65-80 (QuantizationType,
KVQuantizationConfig with its direct-cast assert) and 100-120 (QuantizedDtype, without the packed x4 members).
Identical at fbac349 (SDK 2.29). Copied rather than imitated so the stand-in rejects exactly what NxD rejects.
"""

import enum
from enum import Enum

import torch


class MyEnumMeta(enum.EnumMeta):
    def __contains__(cls, item):
        try:
            cls(item)
        except ValueError:
            return False
        else:
            return True


class QuantizationType(Enum, metaclass=MyEnumMeta):
    PER_TENSOR_SYMMETRIC = "per_tensor_symmetric"
    PER_CHANNEL_SYMMETRIC = "per_channel_symmetric"
    PER_KEY_SYMMETRIC = "per_key_symmetric"
    BLOCKWISE_SYMMETRIC = "blockwise_symmetric"
    EXPERT_WISE_PER_CHANNEL_SYMMETRIC = "expert_wise_per_channel_symmetric"


class KVQuantizationConfig:
    def __init__(self, **kwargs):
        self.k_quant_method = kwargs.pop("k_quant_method", QuantizationType.PER_TENSOR_SYMMETRIC)
        self.v_quant_method = kwargs.pop("v_quant_method", QuantizationType.PER_TENSOR_SYMMETRIC)
        self.quant_dtype = kwargs.pop("quant_dtype", torch.float8_e4m3fn)
        self.direct_cast = kwargs.pop("direct_cast", True)

        if self.direct_cast:
            assert (
                self.k_quant_method == QuantizationType.PER_TENSOR_SYMMETRIC
                and self.v_quant_method == QuantizationType.PER_TENSOR_SYMMETRIC
            ), "When using direct cast both K and V quantization strategies must be PER_TENSOR_SYMMETRIC"


class QuantizedDtype(Enum, metaclass=MyEnumMeta):
    INT8 = torch.int8
    F8E4M3 = torch.float8_e4m3fn
    F8E4M3FN = torch.float8_e4m3fn
    F8E5M2 = torch.float8_e5m2

    @classmethod
    def has_dtype(cls, dtype_string: str) -> None:
        """Check if the dtype string is a valid QuantizedDtype."""
        assert dtype_string.upper() in cls.__members__, f"{dtype_string} is not a valid QuantizedDtype."

    @classmethod
    def get_dtype(cls, dtype_string: str) -> torch.dtype:
        """Return the value for the given dtype string (in uppercase) if it exists."""
        QuantizedDtype.has_dtype(dtype_string=dtype_string)
        return cls[dtype_string.upper()].value
