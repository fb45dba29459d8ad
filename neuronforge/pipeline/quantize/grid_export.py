"""Pick bf16 weights that NxD re-quantizes to exactly the codes we tuned, and prove it.

bf16 cannot hold code * scale exactly, and NxD recomputes the scale from the stored row max, so
a plain `bf16(q * s)` export drifts. Per row we first fix the stored |max| (the value whose code is
+-qmax), derive NxD's scale from it exactly as NxD does (fp32), then for each code pick the bf16
value nearest q * s' that rounds back to q under NxD's math, nudging by one bf16 ulp when needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from neuronforge.core.bits import same_bits
from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    import torch

_NUDGES = (0, 1, -1, 2, -2)  # bf16 ulps tried around bf16(q * s'), nearest first


def nxd_scale_from_amax(amax: torch.Tensor, dtype: str) -> torch.Tensor:
    """NxD's per-channel scale for rows whose |max| is `amax` ([out, 1]), in fp32."""
    from neuronforge.neuron.numerics.grid import fp8_per_channel_scale, int8_per_channel_scale

    if dtype == "int8":
        return int8_per_channel_scale(amax)
    return fp8_per_channel_scale(amax, dtype)


def _nxd_codes(weight: torch.Tensor, scale: torch.Tensor, dtype: str) -> torch.Tensor:
    """NxD's codes (int8, or fp8 values) for `weight` under a given per-row scale."""
    from neuronforge.neuron.numerics.grid import fp8_codes, int8_codes

    return int8_codes(weight, scale) if dtype == "int8" else fp8_codes(weight, scale, dtype)


def _nudge(values: torch.Tensor, ulps: int) -> torch.Tensor:
    """Move bf16 values by `ulps` units in the last place (in magnitude order of the bit pattern)."""
    import torch

    if ulps == 0:
        return values
    bits = values.view(torch.int16).to(torch.int32) + ulps
    moved = bits.clamp(-(2**15), 2**15 - 1).to(torch.int16).view(torch.bfloat16)
    return torch.where(torch.isfinite(moved) & (values != 0), moved, values)


def exact_bf16(codes: torch.Tensor, scale: torch.Tensor, dtype: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """bf16 weights whose NxD re-quantization equals `codes` (int8 codes or fp8 values, [out, in]), written into
    `out` when given (a bf16 tensor of that shape: the export writes straight into the model's weight rows).

    `scale` ([out, 1], fp32) is the grid the codes were tuned on; rows must use their extreme
    code for their largest element (true for NxD's own grid, which our data types preserve).
    Per row, the stored |max| is fixed first and NxD's scale s' derived from it as NxD will. Then bf16(q * s')
    is the answer whenever its row extremes land exactly on the stored |max| (checked per row): NxD re-derives
    s' from it, and bf16's relative error (2^-9) moves q * s' / s' by under 0.25 of an int8 step or 1/16 of an
    e4m3 step (well inside half a step of either grid), so every code comes back; `grid_check` proves it on what
    is written. When some row's extremes miss (rows under NxD's scale floors), the per-element search decides
    instead. Either way the bits are the search's.
    """
    import torch

    q = codes.float()
    q_abs_max = q.abs().amax(dim=1, keepdim=True)
    stored_amax = (q_abs_max * scale.float()).to(torch.bfloat16)
    nxd_scale = nxd_scale_from_amax(stored_amax.float(), dtype)
    if out is None:
        out = torch.empty(codes.shape, dtype=torch.bfloat16, device=codes.device)
    if same_bits((q_abs_max * nxd_scale).to(torch.bfloat16), stored_amax):
        return torch.mul(q, nxd_scale, out=out)  # computed in fp32, rounded once to bf16 (as .to(bfloat16))
    return out.copy_(_nudged(q, q_abs_max, stored_amax, nxd_scale, dtype))


def _same_codes(found: torch.Tensor, intended: torch.Tensor) -> bool:
    """Equal codes: the same bits (fast), else the same values as fp32 (float-typed codes, fp8 -0 and +0)."""
    import torch

    return same_bits(found, intended) or torch.equal(found.float(), intended.float())


def _nudged(
    q: torch.Tensor, q_abs_max: torch.Tensor, stored_amax: torch.Tensor, nxd_scale: torch.Tensor, dtype: str
) -> torch.Tensor:
    """The per-element search: extremes on +-stored |max|, then each code that NxD would re-round moved by the
    fewest bf16 ulps that bring it back (never above the row's stored |max|)."""
    import torch

    is_extreme = (q.abs() == q_abs_max) & (q_abs_max > 0)
    out = torch.where(is_extreme, torch.sign(q) * stored_amax.float(), q * nxd_scale).to(torch.bfloat16)
    pending = _nxd_codes(out, nxd_scale, dtype).float() != q
    base = out
    for ulps in _NUDGES[1:]:
        if not pending.any():
            break
        candidate = _nudge(base, ulps)
        fits = (_nxd_codes(candidate, nxd_scale, dtype).float() == q) & (candidate.float().abs() <= stored_amax.float())
        fix = pending & fits
        out = torch.where(fix, candidate, out)
        pending = pending & ~fix
    return out


# A weight "keeps its value" when the device's value is within bf16 precision of the one the quantizer chose.
VALUE_TOLERANCE = 2.0**-8


@dataclass(frozen=True)
class Agreement:
    """How many weights NxD re-quantizes to the intended codes, and how many keep the intended value."""

    matching: int
    total: int
    values_kept: int = 0

    @property
    def fraction(self) -> float:
        return self.matching / self.total if self.total else 1.0

    @property
    def value_fraction(self) -> float:
        return self.values_kept / self.total if self.total else 1.0

    def __add__(self, other: Agreement) -> Agreement:
        return Agreement(self.matching + other.matching, self.total + other.total, self.values_kept + other.values_kept)


def agreement(
    stored: torch.Tensor, intended_codes: torch.Tensor, dtype: str, intended_values: torch.Tensor | None = None
) -> Agreement:
    """Compare NxD's codes for a stored weight with the codes the quantizer intended, and optionally
    the device's dequantized values (code * NxD scale) with the values the quantizer tuned."""
    from neuronforge.neuron.numerics.grid import quantize_weight

    codes, scale = quantize_weight(stored, dtype)
    same = codes.float() == intended_codes.float()
    kept = 0
    if intended_values is not None:
        target = intended_values.float()
        kept = int(((codes.float() * scale - target).abs() <= VALUE_TOLERANCE * target.abs()).sum())
    return Agreement(int(same.sum()), same.numel(), kept)


def grid_check(stored: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, dtype: str) -> Agreement:
    """`agreement` of an export with the codes and fp32 row scales it was built from: the export's proof.

    NxD's quantizer re-quantizes `stored` on its own. When every code comes back (the expected case), the
    values are checked per row: code x NxD scale is within VALUE_TOLERANCE of code x tuned scale exactly when
    the two scales are. Rows clearly inside (half the tolerance, so fp32 rounding of the products cannot
    matter) count whole; anything else goes element by element through `agreement`. Same counts either way.
    """
    from neuronforge.neuron.numerics.grid import quantize_weight

    nxd_codes, nxd_scale = quantize_weight(stored, dtype)
    if _same_codes(nxd_codes, codes) and bool(((nxd_scale - scale).abs() <= VALUE_TOLERANCE / 2 * scale.abs()).all()):
        return Agreement(codes.numel(), codes.numel(), codes.numel())
    return agreement(stored, codes, dtype, intended_values=codes.float() * scale)


def naive_agreement(weight: torch.Tensor, dtype: str) -> Agreement:
    """Agreement of AutoRound's stock export (int: qmax 128 + signed scale; fp8: +-448) once NxD re-quantizes it.

    Uses auto-round's own registered RTN functions on the weight and stores the result in bf16, as its
    fake export does on CPU. AutoRound's codes are compared on a positive-scale convention (code * sign(scale)),
    its values with what the device computes from NxD's own scale.
    """
    import torch
    from auto_round.data_type.register import QUANT_FUNC_WITH_DTYPE

    w = weight.detach().to(torch.bfloat16)
    if dtype == "int8":
        qdq, scale, _ = QUANT_FUNC_WITH_DTYPE["int_sym"](w, bits=8, group_size=-1)
        scale = scale.float().reshape(-1, 1)
        ar_codes = torch.round(qdq.float() / scale) * torch.sign(scale)
    else:
        qdq, scale, _ = QUANT_FUNC_WITH_DTYPE["fp8_sym"](w, group_size=-1)
        scale = scale.float().reshape(-1, 1)
        ar_codes = (qdq.float() / scale).to(torch.float8_e4m3fn).float()
    return agreement(qdq.to(torch.bfloat16), ar_codes, dtype, intended_values=qdq)


def require_exact(result: Agreement, where: str) -> None:
    """Refuse to finalize a checkpoint NxD would re-round."""
    if result.matching != result.total:
        raise NeuronforgeError(
            f"grid check failed for {where}: NxD re-quantizes {result.total - result.matching} of {result.total} "
            f"weights to different codes ({100 * result.fraction:.4f}% agreement)",
            "this is a bug in the grid-exact export; please report it with the model and flags used",
        )


def checked_grid_exact(weight: torch.Tensor, dtype: str, where: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, fp32 scale, grid-exact bf16) of `weight` (tuned onto NxD's grid, or rounded to it here), the bf16
    proven to re-quantize to those codes: what a tuned or RTN Linear holds once it leaves the tuning."""
    from neuronforge.neuron.numerics.grid import quantize_weight

    codes, scale = quantize_weight(weight.detach().float(), dtype)
    exact = exact_bf16(codes, scale, dtype)
    require_exact(grid_check(exact, codes, scale, dtype), where)
    return codes, scale, exact
