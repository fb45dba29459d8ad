"""NxD's offline weight grids, checked bit for bit against torch's own quantize kernels (what NxD calls for int8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neuronforge.neuron.numerics.grid import (
    dequantize,
    fp8_max,
    int8_per_channel_scale,
    quantize_weight,
    rounding_error,
)

FINITE = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")

SHAPES = st.tuples(st.integers(1, 8), st.integers(1, 24))


def weights(dtype: torch.dtype) -> st.SearchStrategy[torch.Tensor]:
    return arrays(np.float32, SHAPES, elements=FINITE).map(lambda a: torch.from_numpy(a.copy()).to(dtype))


def torch_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What NxD's int8 per-channel path stores: torch.quantize_per_channel on the fp32 weight, axis 0."""
    scale = int8_per_channel_scale(w).reshape(-1).double()
    q = torch.quantize_per_channel(w.float(), scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
    return q.int_repr(), q.q_per_channel_scales().float().reshape(-1, 1)


def torch_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """torch's MinMaxObserver(qint8, per_tensor_symmetric): scale = amax / 127.5, then quantize_per_tensor."""
    amax = w.float().abs().max()
    scale = float(torch.clamp(amax / 127.5, min=torch.finfo(torch.float32).eps))
    return torch.quantize_per_tensor(w.float(), scale, 0, torch.qint8).int_repr(), scale


def adversarial(dtype: torch.dtype) -> list[torch.Tensor]:
    # Row 0: amax 15.875 gives scale 0.125 exactly, so k.5 * 0.125 lands on exact .5 ties (half-even rounding).
    ties = torch.tensor([[15.875, 0.0625, 0.1875, 0.3125, -0.3125, -0.4375, 1.0625, -15.875]])
    zeros = torch.zeros(3, 5)
    outlier = torch.tensor([[1e30, 1.0, -1.0, 1e-3], [1e-38, -1e-38, 0.0, 1e-40]])
    tiny = torch.full((2, 4), 1e-12)
    return [t.to(dtype) for t in (ties, zeros, outlier, tiny)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_int8_per_channel_bit_exact_random(dtype: torch.dtype, data: st.DataObject) -> None:
    w = data.draw(weights(dtype))
    codes, scale = quantize_weight(w, "int8", "per_channel_symmetric")
    ref_codes, ref_scale = torch_per_channel(w)
    assert codes.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (w.shape[0], 1)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(scale, ref_scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_per_channel_bit_exact_adversarial(dtype: torch.dtype) -> None:
    for w in adversarial(dtype):
        codes, scale = quantize_weight(w, "int8", "per_channel_symmetric")
        ref_codes, _ = torch_per_channel(w)
        assert torch.equal(codes, ref_codes), w
        assert torch.all(scale >= torch.finfo(torch.float32).eps)


def test_int8_ties_round_half_to_even() -> None:
    w = adversarial(torch.float32)[0]
    codes, scale = quantize_weight(w, "int8", "per_channel_symmetric")
    assert scale.item() == 0.125
    # 0.5->0, 1.5->2, 2.5->2, -2.5->-2, -3.5->-4, 8.5->8, 127->127, -127->-127
    assert codes.tolist() == [[127, 0, 2, 2, -2, -4, 8, -127]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_int8_per_tensor_bit_exact_random(dtype: torch.dtype, data: st.DataObject) -> None:
    w = data.draw(weights(dtype))
    codes, scale = quantize_weight(w, "int8", "per_tensor_symmetric")
    ref_codes, ref_scale = torch_per_tensor(w)
    assert scale.shape == (1,) and scale.dtype == torch.float32
    assert scale.item() == ref_scale
    assert torch.equal(codes, ref_codes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_per_tensor_bit_exact_adversarial(dtype: torch.dtype) -> None:
    for w in adversarial(dtype):
        codes, _ = quantize_weight(w, "int8", "per_tensor_symmetric")
        assert torch.equal(codes, torch_per_tensor(w)[0]), w


def test_int8_per_tensor_uses_127_5_divisor() -> None:
    w = torch.tensor([[-127.5, 2.5], [127.5, 3.5]])
    codes, scale = quantize_weight(w, "int8", "per_tensor_symmetric")
    assert scale.item() == 1.0
    assert codes.tolist() == [[-128, 2], [127, 4]]  # +amax lands on 127.5 -> 128 -> clipped to 127


@pytest.mark.parametrize(
    "qdtype, torch_dtype, limit", [("f8e4m3", torch.float8_e4m3fn, 240.0), ("f8e5m2", torch.float8_e5m2, 57344.0)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@given(data=st.data())
@settings(max_examples=100, deadline=None)
def test_fp8_per_channel_grid(
    qdtype: str, torch_dtype: torch.dtype, limit: float, dtype: torch.dtype, data: st.DataObject
) -> None:
    w = data.draw(weights(dtype))
    codes, scale = quantize_weight(w, qdtype, "per_channel_symmetric")
    assert fp8_max(qdtype) == limit
    assert codes.dtype == torch_dtype and scale.dtype == torch.float32 and scale.shape == (w.shape[0], 1)
    amax = w.float().abs().amax(dim=1, keepdim=True)
    assert torch.equal(scale, torch.clamp(amax / limit, min=1e-5))
    values = codes.float()
    assert values.abs().max() <= limit and not torch.isnan(values).any()
    # The row maximum maps onto the grid's edge whenever the 1e-5 floor is not active.
    unfloored = (amax / limit >= 1e-5).reshape(-1)
    if unfloored.any():
        assert torch.all(values.abs().amax(dim=1)[unfloored] == limit)
    # Every code is the round-to-nearest fp8 value of w / s (so dequantizing is within half an fp8 ulp).
    exact = (w.float() / scale).clamp(-limit, limit)
    mantissa_bits, subnormal_step_exp = (3, -9) if qdtype == "f8e4m3" else (2, -16)
    exponent = torch.floor(torch.log2(exact.abs().clamp(min=2.0**subnormal_step_exp)))
    step = 2.0 ** torch.clamp(exponent - mantissa_bits, min=subnormal_step_exp)
    assert torch.all((values - exact).abs() <= step / 2 + 1e-12)


def test_fp8_e4m3_adversarial_never_exceeds_240() -> None:
    for w in adversarial(torch.float32) + [torch.tensor([[448.0, 300.0, -1e6, 239.9]])]:
        codes, scale = quantize_weight(w, "f8e4m3", "per_channel_symmetric")
        assert codes.float().abs().max() <= 240.0
        assert torch.all(scale >= 1e-5)
    zero_codes, zero_scale = quantize_weight(torch.zeros(2, 3), "f8e4m3")
    assert torch.all(zero_scale == 1e-5) and torch.all(zero_codes.float() == 0)


def test_fp8_per_tensor_scale_is_amax_over_240() -> None:
    w = torch.tensor([[480.0, -24.0], [1.0, 0.0]])
    codes, scale = quantize_weight(w, "f8e4m3", "per_tensor_symmetric")
    assert scale.shape == () and scale.item() == 2.0
    assert codes.float().tolist() == [[240.0, -12.0], [0.5, 0.0]]


def test_dequantize_inverts_on_grid_weights() -> None:
    w = torch.randn(16, 32)
    codes, scale = quantize_weight(w, "int8")
    on_grid = dequantize(codes, scale)
    codes2, scale2 = quantize_weight(on_grid, "int8")
    assert torch.equal(scale2, scale) and torch.equal(codes2, codes)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="2-D"):
        quantize_weight(torch.zeros(3), "int8")
    with pytest.raises(ValueError, match="dtype"):
        quantize_weight(torch.zeros(2, 2), "int4")
    with pytest.raises(ValueError, match="type"):
        quantize_weight(torch.zeros(2, 2), "int8", "blockwise_symmetric")


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
@pytest.mark.parametrize("source", [torch.float32, torch.bfloat16])
def test_rounding_error_is_the_dequantized_codes_less_the_weight(dtype: str, source: torch.dtype) -> None:
    torch.manual_seed(7)
    weight = (torch.randn(40, 96) * 0.03).to(source)
    weight[4] = 0.0
    codes, scale = quantize_weight(weight, dtype)
    expected = dequantize(codes, scale) - weight.float()
    before = weight.clone()
    error = rounding_error(weight, dtype)
    assert torch.equal(error.view(torch.int32), expected.view(torch.int32)) and error.abs().max() > 0
    assert torch.equal(weight, before)  # computed in a fresh tensor, even from an fp32 weight


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_per_channel_quantization_never_holds_the_weight_in_fp32_whole(dtype: str) -> None:
    """Per-channel math is row by row, so it runs a row block at a time: quantizing a vocabulary-sized bf16 head
    (0.4 GB in fp32 at 49152 x 2048) costs its codes and scales, not fp32 copies of it. Same bits as whole."""
    from testkit.memory import made_shapes

    from neuronforge.neuron.numerics.grid import fp8_codes, fp8_per_channel_scale, int8_codes
    from neuronforge.neuron.numerics.qlinear import NeuronQuantLinear

    torch.manual_seed(0)
    weight = (torch.randn(1024, 768) * torch.logspace(-3, 1, 768)).bfloat16()  # 3 row blocks of 1 MB in fp32
    linear = torch.nn.Linear(768, 1024, bias=False, dtype=torch.bfloat16)
    linear.weight.data = weight
    with made_shapes(torch.float32) as made:
        codes, scale = quantize_weight(weight, dtype)
        module = NeuronQuantLinear.from_linear(linear, dtype)
    assert made and tuple(weight.shape) not in made
    full = weight.float()  # the per-row steps applied to the whole weight at once
    if dtype == "int8":
        want_scale = int8_per_channel_scale(full)
        want_codes = int8_codes(full, want_scale)
    else:
        want_scale = fp8_per_channel_scale(full, dtype)
        want_codes = fp8_codes(full, want_scale, dtype)
    assert torch.equal(scale, want_scale) and torch.equal(codes.view(torch.int8), want_codes.view(torch.int8))
    assert torch.equal(module.codes.view(torch.int8), codes.view(torch.int8)) and torch.equal(module.scale, scale)


@pytest.mark.parametrize(("dtype", "divisor"), [("int8", 127.0), ("f8e4m3", 240.0)])
def test_scales_are_nxd_division_on_a_gpu_too(dtype: str, divisor: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU (simulated: CUDA divides by a CPU scalar as a multiply by its fp32 reciprocal) the scales and codes
    are still those of NxD's CPU division, bit for bit, so a GPU checkpoint is byte-identical to a CPU one."""
    from testkit.device_sim import on_device, simulated_gpu

    weight = torch.randn(512, 64, generator=torch.Generator().manual_seed(0)).mul_(0.02).to(torch.bfloat16)
    amax = weight.float().abs().amax(dim=1, keepdim=True)
    reciprocal = amax * torch.tensor(1.0 / divisor, dtype=torch.float32)
    assert int((reciprocal != amax / divisor).sum()) > 5  # the inputs tell the two formulas apart
    cpu_codes, cpu_scale = quantize_weight(weight, dtype)
    with simulated_gpu(monkeypatch) as gpu:
        codes, scale = quantize_weight(weight.to(gpu.device), dtype)
        assert on_device(codes) and on_device(scale)
        codes, scale = codes.cpu(), scale.cpu()
    assert torch.equal(scale, cpu_scale)
    assert torch.equal(codes.view(torch.uint8), cpu_codes.view(torch.uint8))


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_autoround_data_types_divide_as_nxd_on_a_gpu(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """AutoRound's tuning on our grid (autoround_nxd.py) computes the same scales on a GPU as on the CPU."""
    from testkit.device_sim import simulated_gpu

    from neuronforge.pipeline.quantize.autoround_nxd import nxd_fp8_sym, nxd_int_sym

    quantize = nxd_int_sym if dtype == "int8" else nxd_fp8_sym
    weight = torch.randn(512, 64, generator=torch.Generator().manual_seed(1)).mul_(0.02)
    cpu_qdq, cpu_scale, _ = quantize(weight)
    with simulated_gpu(monkeypatch) as gpu:
        qdq, scale, _ = quantize(weight.to(gpu.device))
        qdq, scale = qdq.cpu(), scale.cpu()
    assert torch.equal(scale, cpu_scale)
    assert torch.equal(qdq, cpu_qdq)


def test_a_gpu_takes_the_grid_math_in_large_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the 1 MB row blocks sized for a CPU cache would be launch-bound (each costs ~130 torch calls):
    a whole 2048 x 1024 weight is one block there, eight on the CPU, with the same codes."""
    from testkit.device_sim import simulated_gpu
    from torch.utils._python_dispatch import TorchDispatchMode

    class RowMaxima(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            RowMaxima.calls += func is torch.ops.aten.amax.default
            return func(*args, **(kwargs or {}))

    weight = torch.randn(2048, 1024, generator=torch.Generator().manual_seed(2))
    with RowMaxima():
        cpu_codes, _ = quantize_weight(weight, "int8")
    assert RowMaxima.calls == 8
    RowMaxima.calls = 0
    with simulated_gpu(monkeypatch) as gpu, RowMaxima():
        codes, _ = quantize_weight(weight.to(gpu.device), "int8")
    assert RowMaxima.calls == 1
    assert torch.equal(codes.cpu(), cpu_codes)
