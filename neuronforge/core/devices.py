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


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def capped_threads(requested: int) -> int:
    """A thread count no larger than the machine's CPUs: more only adds contention, and an absurd one made the
    tokenizer's thread pool fail to start and the process segfault (report D19: `emulate --threads 100000`)."""
    cpus = usable_cpus()
    if requested > cpus:
        from neuronforge.core.progress import err_console

        err_console.print(f"note: --threads {requested} capped at {cpus}, the CPUs this process may use")
    return min(requested, cpus)
