"""glibc returns freed layers to the OS, or recycles them, as we ask (a fresh process each)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import gc, os, resource, sys, torch
from neuronforge.core import memory
applied = getattr(memory, sys.argv[1])() if sys.argv[1] != "default" else True
def rss(): return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
first = torch.ones(16 << 20, dtype=torch.uint8); del first  # glibc raises its mmap threshold to 16 MiB here
base = rss()
layers, small = [], []
for _ in range(48):  # 384 MiB of 8 MiB "layers", each followed by a small tensor that stays
    layers.append(torch.ones(8 << 20, dtype=torch.uint8)); small.append(torch.ones(1 << 18, dtype=torch.uint8))
del layers; gc.collect()
retained = (rss() - base) >> 20
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # a layer-sized temporary, made and freed again and again (stage 1's shard tensors)
    temporary = torch.ones(12 << 20, dtype=torch.uint8); del temporary
print(applied, retained, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""
PAGES = (12 << 20) // 4096  # pages of one temporary


def _probe(mode: str) -> tuple[bool, int, int]:
    """Whether the setting applied, MiB still held after freeing the layers, page faults of the temporaries."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc behaviour")
def test_release_returns_freed_layers_and_reuse_recycles_memory() -> None:
    released_applied, released, released_faults = _probe("release_freed_tensors")
    reused_applied, _, reused_faults = _probe("reuse_freed_tensors")
    _, default, _ = _probe("default")
    assert released_applied and reused_applied
    assert released < 64 < 256 < default  # MiB still held after freeing 384 MiB of layers
    assert released_faults > 40 * PAGES  # every temporary a fresh mapping, zero-filled page by page ...
    assert reused_faults < 5 * PAGES  # ... or the same heap memory (faulted in once or twice)
