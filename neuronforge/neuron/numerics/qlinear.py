"""A Linear that computes what NxD's QuantizedColumnParallel/RowParallel compute on the device.

Forward: bf16 matmul against the int8/fp8 codes cast to bf16 (exact), then the bf16 output is
multiplied by the fp32 per-row scale and rounded back to bf16; bias is added last.

Tensor parallelism: column-parallel layers (q/k/v, gate/up, lm_head) split output features, so every
output is computed whole on one rank and tp changes nothing. Row-parallel layers (o_proj, down_proj) split
the input features: each of the tp ranks multiplies its slice, scales and rounds its partial output to bf16,
and only then are the partials summed by the all-reduce, with the bias added after it (NxD
quantization_layers.py:937-964; parallel_layers RowParallelLinear pads the input to a multiple of tp, which
adds zeros). The emulator sums the bf16 partials in fp32 and rounds once: the all-reduce's own accumulation
precision is not in the sources we have. The fp32 accumulation order within a GEMM also differs from the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from neuronforge.neuron.numerics.dtypes import QuantDtype, QuantType
from neuronforge.neuron.numerics.grid import TORCH_DTYPES, quantize_weight
from neuronforge.neuron.numerics.module_names import nxdi_path, nxdi_skips

ROW_PARALLEL = ("o_proj", "down_proj")  # NxDI Llama's RowParallelLinear layers (gqa.py:1213, modeling_llama.py:402-433)


def is_row_parallel(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in ROW_PARALLEL


def rank_slices(in_features: int, tp_degree: int) -> list[slice]:
    """The input-feature slice each rank of a row-parallel layer holds (the last one short where NxD zero-pads)."""
    width = -(-in_features // tp_degree)
    return [slice(start, min(start + width, in_features)) for start in range(0, in_features, width)]


def row_parallel_matmul(
    x: torch.Tensor, weight_fp32: torch.Tensor, tp_degree: int, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """sum over ranks of bf16(bf16(x_r @ W_r^T) * scale), in x's dtype; tp_degree 1 is the plain scaled GEMM."""
    compute = x.dtype
    total = None
    for part in rank_slices(weight_fp32.shape[1], tp_degree):
        y = nn.functional.linear(x[..., part].float(), weight_fp32[:, part]).to(compute)
        if scale is not None:
            y = (y.float() * scale).to(compute)
        total = y.float() if total is None else total + y.float()
    assert total is not None
    return total.to(compute)


# Bytes of fp32 each GEMM step may create: its operand rows, or its output columns.
GEMM_BLOCK_BYTES = 4 << 20
# On a GPU: 256 MB steps, so an 8B model's forward is ~30 launches per layer, not ~1000 (docs/gpu.md).
GPU_GEMM_BLOCK_BYTES = 256 << 20


def gemm_block_bytes(device: torch.device) -> int:
    return GEMM_BLOCK_BYTES if device.type == "cpu" else GPU_GEMM_BLOCK_BYTES


class Fp32Gemm(nn.Module):
    """A GEMM on the exact fp32 copy of a weight, run a block of output features at a time.

    The copy is kept after first use, or (large models, where it would cost 4 bytes per parameter) made a
    block at a time for each call. Blocking bounds the fp32 temporaries of a vocabulary-sized lm_head: each
    output feature is its own dot product, so the blocks give the same numbers as one GEMM.
    """

    keep_fp32: bool = True
    _fp32: torch.Tensor | None = None
    in_features: int
    out_features: int
    tp_degree: int

    def _operand_blocks(self, x: torch.Tensor, weight: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """(output features, their fp32 weight rows), at most GEMM_BLOCK_BYTES of operand or output each."""
        if self.keep_fp32 and (self._fp32 is None or self._fp32.device != weight.device):
            self._fp32 = weight.detach().float()
        kept = self._fp32 if self.keep_fp32 else None
        tokens = x.numel() // x.shape[-1]
        step = max(1, gemm_block_bytes(weight.device) // (4 * max(tokens, weight.shape[1])))
        for start in range(0, weight.shape[0], step):
            rows = slice(start, start + step)
            yield rows, kept[rows] if kept is not None else weight[rows].detach().float()


class NeuronQuantLinear(Fp32Gemm):
    """Holds codes (int8 or fp8) and an fp32 scale exactly as NxD's checkpoint stores them."""

    # buffers (register_buffer), declared so that a type checker sees tensors, not nn.Module's Tensor | Module
    codes: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: QuantDtype,
        qtype: QuantType,
        tp_degree: int = 1,
    ) -> None:
        super().__init__()
        self.tp_degree = tp_degree  # > 1 only for row-parallel layers: the ranks that split in_features
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)
        self.quant_dtype = dtype
        self.quant_type = qtype
        self.out_features, self.in_features = codes.shape

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, dtype: QuantDtype, qtype: QuantType = "per_channel_symmetric", tp_degree: int = 1
    ) -> NeuronQuantLinear:
        # NxDI quantizes the HF model loaded in fp32 (exact for bf16). Per-channel math converts a row block at a
        # time (same bits, no whole fp32 copy); the fp8 per-tensor scale is computed in the weight's own dtype.
        weight = linear.weight.detach()
        codes, scale = quantize_weight(weight if qtype == "per_channel_symmetric" else weight.float(), dtype, qtype)
        return cls._with_bias(codes, scale, linear.bias, dtype, qtype, tp_degree)

    @classmethod
    def from_row_blocks(
        cls,
        blocks: Iterable[tuple[slice, torch.Tensor]],
        shape: tuple[int, int],
        bias: torch.Tensor | None,
        dtype: QuantDtype,
        tp_degree: int = 1,
    ) -> NeuronQuantLinear:
        """Per-channel codes and scales made from (rows, weight rows) blocks as they arrive (each row's scale is its
        own, so the bits are `from_linear`'s): a weight read from a file a block at a time is never whole in bf16."""
        codes = torch.empty(shape, dtype=TORCH_DTYPES[dtype])
        scale = torch.empty((shape[0], 1), dtype=torch.float32)
        for rows, block in blocks:
            codes[rows], scale[rows] = quantize_weight(block, dtype)
        return cls._with_bias(codes, scale, bias, dtype, "per_channel_symmetric", tp_degree)

    @classmethod
    def _with_bias(
        cls,
        codes: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        dtype: QuantDtype,
        qtype: QuantType,
        tp_degree: int,
    ) -> NeuronQuantLinear:
        # NxD's fp8 QuantizedLinear drops Linear biases; int8 keeps them (cast to bf16 at load).
        kept = bias.detach().to(torch.bfloat16).clone() if bias is not None and dtype == "int8" else None
        return cls(codes, scale, kept, dtype, qtype, tp_degree)

    def load_codes(self, codes: torch.Tensor, scale: torch.Tensor) -> None:
        """Hold other codes and scales of the same shapes, on this layer's device; the fp32 operand copy made from
        the old codes is dropped (a forward would otherwise still multiply by them)."""
        if codes.shape != self.codes.shape or scale.shape != self.scale.shape or codes.dtype != self.codes.dtype:
            raise ValueError(
                f"codes {tuple(codes.shape)} {codes.dtype} / scale {tuple(scale.shape)} do not replace "
                f"{tuple(self.codes.shape)} {self.codes.dtype} / {tuple(self.scale.shape)}"
            )
        self.codes, self.scale = codes.to(self.codes.device), scale.to(self.scale.device)
        self._fp32 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = x.dtype
        # codes are exact in bf16; an fp32 GEMM rounded once to bf16 is what the PE array's fp32
        # accumulation gives, and avoids CPU bf16 GEMMs (about 6x slower without native bf16).
        per_row = self.scale.dim() == 2
        scale = self.scale.reshape(1, -1) if per_row else self.scale
        y = x.new_empty((*x.shape[:-1], self.out_features))
        for rows, operand in self._operand_blocks(x, self.codes):
            y[..., rows] = row_parallel_matmul(x, operand, self.tp_degree, scale[:, rows] if per_row else scale)
        return y if self.bias is None else y + self.bias.to(compute)

    def extra_repr(self) -> str:
        tp = f", row-parallel over {self.tp_degree} ranks" if self.tp_degree > 1 else ""
        return f"in={self.in_features}, out={self.out_features}, dtype={self.quant_dtype}, {self.quant_type}{tp}"


class Bf16Linear(Fp32Gemm):
    """A bf16 Linear computed as an fp32 GEMM on its bf16 operands, rounded once to bf16.

    Same numerics class as the device (fp32 accumulation, one bf16 rounding), only the accumulation
    order differs from torch's own bf16 kernel, which is several times slower on CPUs without bf16.
    """

    def __init__(self, linear: nn.Linear, tp_degree: int = 1) -> None:
        super().__init__()
        self.weight = linear.weight
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.tp_degree = tp_degree  # > 1 only for row-parallel layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.new_empty((*x.shape[:-1], self.out_features))
        if self.tp_degree > 1:  # bf16 partials summed by the all-reduce, bias after it
            for rows, operand in self._operand_blocks(x, self.weight):
                y[..., rows] = row_parallel_matmul(x, operand, self.tp_degree)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        x32, bias = x.float(), None if self.bias is None else self.bias.float()
        for rows, operand in self._operand_blocks(x, self.weight):
            y[..., rows] = nn.functional.linear(x32, operand, None if bias is None else bias[rows])
        return y


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """HF name -> Linear for every layer NxDI's Llama would convert (q/k/v/o, gate/up/down, lm_head)."""
    found: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            try:
                nxdi_path(name)
            except ValueError:
                continue
            found[name] = module
    return found


def convert_to_neuron_numerics(
    model: nn.Module,
    dtype: QuantDtype,
    modules_to_not_convert: list[str] | tuple[str, ...] = (),
    qtype: QuantType = "per_channel_symmetric",
    tp_degree: int = 1,
) -> list[str]:
    """Swap, in place, every Linear NxDI would quantize for a NeuronQuantLinear; return the HF names swapped.

    Tied embeddings: lm_head shares the embedding's weight; swapping lm_head here mirrors a device
    that really quantized it (callers should list lm_head for tied models, as NxDI requires).
    Linears whose weights are not loaded yet ("meta") are left for a later call (shard-by-shard loading).
    """
    swapped = []
    for name, linear in quantizable_linears(model).items():
        if linear.weight.is_meta or nxdi_skips(name, modules_to_not_convert):
            continue
        tp = tp_degree if is_row_parallel(name) else 1
        replace_module(model, name, NeuronQuantLinear.from_linear(linear, dtype, qtype, tp))
        swapped.append(name)
    return swapped


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at dotted path `name` inside `model`."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
