"""Grid-exact bf16 export: NxD's own re-quantization must give back exactly the codes we chose."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.numerics.grid import quantize_weight
from neuronforge.pipeline.quantize import grid_export
from neuronforge.pipeline.quantize.grid_export import (
    VALUE_TOLERANCE,
    Agreement,
    agreement,
    exact_bf16,
    grid_check,
    naive_agreement,
    require_exact,
)


def nxd_codes(weight: torch.Tensor, dtype: str) -> torch.Tensor:
    """NxD's codes for a stored weight, as fp32 values for exact comparison."""
    return quantize_weight(weight, dtype)[0].float()


E4M3_VALUES = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
E4M3_NEURON = E4M3_VALUES[torch.isfinite(E4M3_VALUES) & (E4M3_VALUES.abs() <= 240)]


def _rows(draw: st.DrawFn, qmax: int, levels: torch.Tensor | None) -> torch.Tensor:
    """Adversarial code rows: extremes pinned to +-qmax, ties at the top, tiny/zero codes, long rows."""
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if levels is None:
        codes = torch.randint(-qmax, qmax + 1, (rows, cols), generator=gen).float()
    else:
        codes = levels[torch.randint(0, levels.numel(), (rows, cols), generator=gen)]
    pin = torch.randint(0, cols, (rows,), generator=gen)
    sign = torch.where(torch.rand(rows, generator=gen) < 0.5, -1.0, 1.0)
    codes[torch.arange(rows), pin] = sign * qmax
    if draw(st.booleans()):  # many elements tied at the extreme
        codes[:, : cols // 2] = qmax * torch.sign(codes[:, : cols // 2] + 0.5)
    return codes


@st.composite
def int8_case(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    codes = _rows(draw, 127, None)
    scale = torch.tensor([[draw(st.floats(1e-6, 50.0))] for _ in range(codes.shape[0])])
    return codes, scale


@st.composite
def fp8_case(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    codes = _rows(draw, 240, E4M3_NEURON)
    scale = torch.tensor([[draw(st.floats(1.1e-5, 50.0))] for _ in range(codes.shape[0])])
    return codes, scale


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(int8_case())
def test_int8_codes_round_trip_exactly(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, scale = case
    stored = exact_bf16(codes, scale, "int8")
    assert stored.dtype == torch.bfloat16
    assert torch.equal(nxd_codes(stored, "int8"), codes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fp8_case())
def test_fp8_values_round_trip_exactly(case: tuple[torch.Tensor, torch.Tensor]) -> None:
    codes, scale = case
    stored = exact_bf16(codes, scale, "f8e4m3")
    assert torch.equal(nxd_codes(stored, "f8e4m3"), codes)


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
@pytest.mark.parametrize("magnitude", [1e-7, 1e-3, 0.05, 3.0, 900.0])
def test_rtn_codes_of_real_weights_round_trip(dtype: str, magnitude: float) -> None:
    """Any fp32 weight's NxD codes (including rows under NxD's scale floors and all-zero rows) survive bf16."""
    torch.manual_seed(0)
    weight = torch.randn(48, 96) * magnitude
    weight[3] = 0.0
    weight[:, 5] *= 8.0  # outlier channel
    codes, scale = quantize_weight(weight, dtype)
    stored = exact_bf16(codes, scale, dtype)
    assert agreement(stored, codes.float(), dtype) == Agreement(weight.numel(), weight.numel())


def test_plain_bf16_of_code_times_scale_is_not_enough() -> None:
    """Why exact_bf16 exists: bf16(q * s) drifts for some weights when NxD re-derives the scale."""
    torch.manual_seed(1)
    codes, scale = quantize_weight(torch.randn(256, 256), "int8")
    plain = (codes.float() * scale).to(torch.bfloat16)
    assert agreement(plain, codes.float(), "int8").fraction < 1.0
    assert agreement(exact_bf16(codes, scale, "int8"), codes.float(), "int8").fraction == 1.0


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_misaligned_weight_is_caught(dtype: str) -> None:
    """Nudge one weight by the fewest bf16 ulps that change its code (1 for int8; fp8 steps are wider)."""
    torch.manual_seed(2)
    codes, scale = quantize_weight(torch.randn(16, 64), dtype)
    stored = exact_bf16(codes, scale, dtype)
    not_row_max = (codes.float().abs() < codes.float().abs().amax(dim=1, keepdim=True)).view(-1)
    for ulps in (1, -1, 4, -4, 16, -16):  # row maxima, hence NxD's scales, stay unchanged
        bits = stored.view(torch.int16).clone()
        bits.view(-1)[not_row_max] += ulps
        flipped = ((nxd_codes(bits.view(torch.bfloat16), dtype) != codes.float()).view(-1) & not_row_max).nonzero()
        if flipped.numel():
            break
    bad = stored.clone()
    bad.view(torch.int16).view(-1)[flipped[0, 0]] += ulps
    result = agreement(bad, codes.float(), dtype)
    assert result.matching < result.total
    with pytest.raises(NeuronforgeError, match="grid check failed"):
        require_exact(result, "test")


def test_naive_autoround_export_is_rerounded_by_nxd() -> None:
    """AutoRound's stock grids (qmax 128 with signed scale; fp8 +-448) do not survive NxD."""
    torch.manual_seed(3)
    weight = (torch.randn(64, 128) * 0.05).to(torch.bfloat16)
    weight[:, ::16] *= 6.0
    int8 = naive_agreement(weight, "int8")
    fp8 = naive_agreement(weight, "f8e4m3")
    assert int8.total == fp8.total == weight.numel()
    assert int8.fraction < 0.99
    assert fp8.fraction < 0.05
    # Most int8 codes survive (small codes coincide on the /128 and /127 grids), but the device's scale is
    # 128/127 of AutoRound's, so most values move by more than bf16 precision.
    assert int8.value_fraction < 0.2 < int8.fraction
    assert fp8.value_fraction < 0.5


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_grid_exact_export_keeps_the_tuned_values(dtype: str) -> None:
    torch.manual_seed(4)
    weight = torch.randn(48, 96) * 0.02
    codes, scale = quantize_weight(weight, dtype)
    tuned = codes.float() * scale
    result = agreement(exact_bf16(codes, scale, dtype), codes.float(), dtype, intended_values=tuned)
    assert result == Agreement(weight.numel(), weight.numel(), weight.numel())
    plain = agreement(tuned.to(torch.bfloat16), codes.float(), dtype, intended_values=tuned * 1.01)
    assert plain.values_kept < weight.numel() // 10


def _search_only(codes: torch.Tensor, scale: torch.Tensor, dtype: str) -> torch.Tensor:
    """exact_bf16 with its whole-tensor shortcut turned off: the per-element search decides every weight."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grid_export, "same_bits", lambda found, intended: False)
        return exact_bf16(codes, scale, dtype)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(int8_case().map(lambda case: ("int8", case)), fp8_case().map(lambda case: ("f8e4m3", case))))
def test_the_shortcut_writes_the_search_s_bits(dtype_case: tuple[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    dtype, (codes, scale) = dtype_case
    assert torch.equal(
        exact_bf16(codes, scale, dtype).view(torch.int16), _search_only(codes, scale, dtype).view(torch.int16)
    )


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
@pytest.mark.parametrize("magnitude", [1e-7, 1e-3, 3.0])
def test_the_shortcut_writes_the_search_s_bits_for_real_and_tuned_scales(dtype: str, magnitude: float) -> None:
    """NxD's own scales and AutoRound-like ones (a little off NxD's), including rows under NxD's scale floor,
    where the shortcut must step aside (fp8 rows of 1e-7 weights)."""
    torch.manual_seed(5)
    weight = torch.randn(48, 96) * magnitude
    weight[3] = 0.0
    codes, scale = quantize_weight(weight, dtype)
    for tuned in (scale, scale * (1 + 1e-3 * torch.randn_like(scale))):
        assert torch.equal(
            exact_bf16(codes, tuned, dtype).view(torch.int16), _search_only(codes, tuned, dtype).view(torch.int16)
        )


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
@pytest.mark.parametrize("magnitude", [1e-7, 0.02])  # 1e-7: fp8 rows under NxD's scale floor take the search
def test_exact_bf16_writes_into_the_rows_it_is_given(dtype: str, magnitude: float) -> None:
    """The export writes straight into row blocks of the model's weight: the same bits as a fresh tensor, in
    those rows only, and the rows it was given come back (no copy)."""
    torch.manual_seed(7)
    weight = (torch.randn(40, 96) * magnitude).to(torch.bfloat16)
    target = weight.clone()
    rows = slice(8, 24)
    codes, scale = quantize_weight(weight[rows], dtype)
    returned = exact_bf16(codes, scale, dtype, out=target[rows])
    assert returned.data_ptr() == target[rows].data_ptr()
    assert torch.equal(target[rows].view(torch.int16), exact_bf16(codes, scale, dtype).view(torch.int16))
    outside = torch.ones(40, dtype=torch.bool)
    outside[rows] = False
    assert torch.equal(target[outside].view(torch.int16), weight[outside].view(torch.int16))


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
@pytest.mark.parametrize("scale_error", [0.0, 0.75 * VALUE_TOLERANCE, 3 * VALUE_TOLERANCE])
@pytest.mark.parametrize("misplaced", [False, True])
def test_grid_check_counts_what_agreement_counts(dtype: str, scale_error: float, misplaced: bool) -> None:
    """The export's row-wise check gives the element-wise counts, whether the tuned scale is NxD's, within bf16
    precision of it but near the tolerance, or off by more; and with a misplaced weight."""
    torch.manual_seed(6)
    codes, scale = quantize_weight(torch.randn(32, 64) * 0.02, dtype)
    stored = exact_bf16(codes, scale, dtype)
    if misplaced:
        stored[2, int(codes[2].float().abs().argmin())] += 0.01
    tuned = scale * (1 + scale_error)
    expected = agreement(stored, codes, dtype, intended_values=codes.float() * tuned)
    assert grid_check(stored, codes, tuned, dtype) == expected
    assert (expected.matching == expected.total) != misplaced
    share = expected.values_kept / expected.total  # all, some rows (near the tolerance), or only zero codes
    assert share > 0.99 if scale_error == 0 else (0.5 < share < 0.99 if scale_error < VALUE_TOLERANCE else share < 0.1)
