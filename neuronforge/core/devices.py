"""Which device the heavy steps run on: the first CUDA GPU when there is one (and the work fits), else the CPU."""

from __future__ import annotations


def accelerator(needed_bytes: int = 0) -> str:
    """`cuda:0` on a GPU host whose free GPU memory holds `needed_bytes`, else `cpu` (torch imported on call)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if needed_bytes and torch.cuda.mem_get_info(0)[0] < needed_bytes:
        from neuronforge.core.progress import err_console

        free = torch.cuda.mem_get_info(0)[0]
        err_console.print(
            f"note: running on the CPU: {needed_bytes / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free on the GPU"
        )
        return "cpu"
    return "cuda:0"
