"""NxD's weight quantization grids, re-implemented in pure torch (no NxD code).

These functions decide what an inf2/trn1 will hold in memory, so they must match NxD bit for bit:
int8 goes through torch's quantized kernels in NxD (fp32 reciprocal multiply, round-half-even);
fp8 goes through NxD's own code (fp32 divide, cast with round-to-nearest-even). See
docs/nxd-numerics.md ("Weight grids") for the NxD source lines.
"""

from __future__ import annotations

import torch

from neuronforge.neuron.numerics.dtypes import QUANT_DTYPES, QUANT_TYPES, QuantDtype, QuantType

INT8_PER_CHANNEL_DIVISOR = 127.0
INT8_PER_TENSOR_DIVISOR = 127.5  # (qmax - qmin) / 2 in torch's MinMaxObserver
FP32_EPS = torch.finfo(torch.float32).eps
FP8_SCALE_FLOOR = 1e-5
E4M3_NEURON_MAX = 240.0  # Neuron's IEEE-style E4M3, not OCP's 448

TORCH_DTYPES: dict[str, torch.dtype] = {
    "int8": torch.int8,
    "f8e4m3": torch.float8_e4m3fn,
    "f8e5m2": torch.float8_e5m2,
}


def fp8_max(dtype: QuantDtype) -> float:
    """Largest magnitude NxD lets a weight take in `dtype` (240 for e4m3 on Neuron)."""
    if dtype == "f8e4m3":
        return E4M3_NEURON_MAX
    if dtype == "f8e5m2":
        return float(torch.finfo(torch.float8_e5m2).max)
    raise ValueError(f"{dtype} is not an fp8 dtype")


def divide(values: torch.Tensor, divisor: float) -> torch.Tensor:
    """`values / divisor` as NxD's CPU computes it (IEEE division), on any device.

    CUDA computes `tensor / python_float` as a multiply by the fp32 reciprocal (pytorch/pytorch
    aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu: "if the second operand is a CPU scalar, compute
    a * reciprocal(b)"), one ulp off for some values: 6% of int8 and 56% of e4m3 row scales. A divisor tensor on
    the values' own device is no CPU scalar, so every device divides.
    """
    return values / torch.full((), divisor, dtype=values.dtype, device=values.device)


def int8_per_channel_scale(weight: torch.Tensor) -> torch.Tensor:
    """fp32 `[out, 1]` scale = max(amax_row / 127, fp32 eps)."""
    amax = weight.float().abs().amax(dim=1, keepdim=True)
    return torch.clamp(divide(amax, INT8_PER_CHANNEL_DIVISOR), min=FP32_EPS)


def int8_codes(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes as torch's quantize kernels compute them: round_half_even(w * (1/s)), clamped."""
    return _int8_rounded(weight, scale).to(torch.int8)


def _int8_rounded(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int8 codes as fp32 values, in a fresh tensor (in place after the first step: one temporary, not three)."""
    inv = torch.ones_like(scale) / scale
    return (weight.float() * inv).round_().clamp_(-128, 127)


def fp8_per_channel_scale(weight: torch.Tensor, dtype: QuantDtype) -> torch.Tensor:
    amax = weight.float().abs().amax(dim=1, keepdim=True)
    return torch.clamp(divide(amax, fp8_max(dtype)), min=FP8_SCALE_FLOOR)


def fp8_codes(weight: torch.Tensor, scale: torch.Tensor, dtype: QuantDtype) -> torch.Tensor:
    limit = fp8_max(dtype)
    return (weight.float() / scale).clamp_(-limit, limit).to(TORCH_DTYPES[dtype])


def quantize_weight(
    weight: torch.Tensor, dtype: QuantDtype = "int8", qtype: QuantType = "per_channel_symmetric"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, fp32 scale) exactly as NxD's offline quantizer stores them for one Linear weight."""
    if weight.dim() != 2:
        raise ValueError(f"expected a 2-D [out, in] Linear weight, got shape {tuple(weight.shape)}")
    if dtype not in QUANT_DTYPES:
        raise ValueError(f"unknown quantization dtype {dtype!r}; expected one of {QUANT_DTYPES}")
    if qtype == "per_channel_symmetric":
        # Row by row math, so a row block at a time: the fp32 temporaries stay at CHUNK_ELEMENTS whatever the weight
        # (a whole 49152 x 2048 head would take three 0.4 GB ones).
        codes = torch.empty(weight.shape, dtype=TORCH_DTYPES[dtype], device=weight.device)
        scale = torch.empty((weight.shape[0], 1), dtype=torch.float32, device=weight.device)
        for rows in row_chunks(weight.shape, chunk_elements(weight.device)):
            block = weight[rows].float()  # once (a bf16 weight would otherwise be converted for scale and codes)
            if dtype == "int8":
                scale[rows] = int8_per_channel_scale(block)
                codes[rows] = int8_codes(block, scale[rows])
            else:
                scale[rows] = fp8_per_channel_scale(block, dtype)
                codes[rows] = fp8_codes(block, scale[rows], dtype)
        return codes, scale
    if qtype == "per_tensor_symmetric":
        if dtype == "int8":
            amax = weight.float().abs().max()
            scale = torch.clamp(divide(amax, INT8_PER_TENSOR_DIVISOR), min=FP32_EPS).reshape(1)
            return int8_codes(weight, scale), scale
        # NxD computes the fp8 per-tensor scale in the weight's own dtype, without an epsilon.
        scale = divide(weight.abs().max(), fp8_max(dtype))
        codes = torch.clamp(weight / scale, -fp8_max(dtype), fp8_max(dtype)).to(TORCH_DTYPES[dtype])
        return codes, scale.float().reshape(())
    raise ValueError(f"unknown quantization type {qtype!r}; expected one of {QUANT_TYPES}")


# Per-channel math is row by row, so weights go through it in row blocks of at most this many elements: the fp32
# temporaries stay at 1 MB each whatever the layer (cache-sized, and small enough for malloc to reuse instead of
# mapping fresh pages each time). Measured on a 5632x2048 weight, the export's grid math runs 4.5x faster than
# with 64 MB blocks (benchmarks/bench_scale.py).
CHUNK_ELEMENTS = 1 << 18
# On a GPU the math of a 1 MB block takes microseconds and its ~130 launches and syncs a millisecond or more
# (docs/gpu.md): blocks of 64M elements (256 MB of fp32 temporaries) keep the device busy instead.
GPU_CHUNK_ELEMENTS = 1 << 26


def chunk_elements(device: torch.device | str) -> int:
    """Row-block size for per-row math on `device`: cache-sized on the CPU, launch-bound-proof elsewhere."""
    return CHUNK_ELEMENTS if torch.device(device).type == "cpu" else GPU_CHUNK_ELEMENTS


def row_chunks(shape: torch.Size | tuple[int, ...], max_elements: int) -> list[slice]:
    """Row slices of a [out, in] weight, each of at most `max_elements` elements (one row at least)."""
    step = max(1, max_elements // max(1, shape[1]))
    return [slice(start, start + step) for start in range(0, shape[0], step)]


def rounding_error(weight: torch.Tensor, dtype: QuantDtype = "int8") -> torch.Tensor:
    """Q(W) - W in fp32 for NxD's per-channel grid: what the device's weight differs by (`dequantize(quantize_weight(W))`
    less W, computed in place in one temporary: sensitivity analysis runs it over every weight)."""
    weight = weight.float()
    if dtype == "int8":
        scale = int8_per_channel_scale(weight)
        return _int8_rounded(weight, scale).mul_(scale).sub_(weight)
    codes, scale = quantize_weight(weight, dtype)
    return codes.float().mul_(scale).sub_(weight)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reference dequantization (codes * scale in fp32); Neuron itself scales the matmul output instead."""
    return (codes.float() * scale.float()).to(dtype)
