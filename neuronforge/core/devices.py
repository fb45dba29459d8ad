"""Which device the heavy steps run on: the first CUDA GPU when there is one, else the CPU."""

from __future__ import annotations


def accelerator() -> str:
    """`cuda:0` on a GPU host, `cpu` elsewhere (torch is imported only when asked)."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"
