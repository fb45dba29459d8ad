"""same_bits: dtype, shape and every bit, whatever the size or alignment of the tensors."""

from __future__ import annotations

import pytest
import torch

from neuronforge.core.bits import same_bits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.uint8, torch.float8_e4m3fn])
@pytest.mark.parametrize("shape", [(128, 2048), (3, 5), (7,), ()])
def test_one_flipped_bit_anywhere_is_seen(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    a = (torch.randn(shape) * 20).to(dtype)
    assert same_bits(a, a.clone())
    for index in (0, a.numel() // 2, a.numel() - 1):
        b = a.clone()
        b.view(-1).view(torch.uint8)[index * a.element_size()] ^= 0x01
        assert not same_bits(a, b)


def test_dtype_shape_and_signed_zeros_count() -> None:
    a = torch.zeros(4, 4)
    assert not same_bits(a, a.to(torch.bfloat16)) and not same_bits(a, a.reshape(16))
    zero, negative_zero = torch.tensor([0.0]), torch.tensor([-0.0])
    assert torch.equal(zero, negative_zero) and not same_bits(zero, negative_zero)  # bits, not values


def test_slices_at_any_byte_offset() -> None:
    data = torch.arange(64, dtype=torch.uint8)
    assert same_bits(data[12:20], data.clone()[12:20]) and not same_bits(data[12:20], data[13:21])
