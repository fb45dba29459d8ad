"""glibc returns freed layers to the OS, or recycles them, as we ask (a fresh process each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


LOAD_PROBE = """
import ctypes, sys
from pathlib import Path
from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
emulated = load_emulated(Path(sys.argv[1]), EmulationSpec(dtype="int8", kv="fp8"))
resident, inside = 0, False
for line in open("/proc/self/smaps"):
    fields = line.split()
    if not fields[0].endswith(":"):
        inside = len(fields) >= 6 and fields[5] == "[heap]"
    elif inside and fields[0] == "Rss:":
        resident += int(fields[1]) * 1024
print(resident, libc.mallinfo2().uordblks)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc behaviour")
def test_loading_for_emulation_leaves_no_freed_memory_resident(smollm2_dir: Path) -> None:
    """Each map window's bf16 copies and conversion temporaries are freed as the load goes on; their heap pages go
    back to the OS instead of staying resident as holes between the codes (73-93 MB for the default model)."""
    out = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE, str(smollm2_dir)], capture_output=True, text=True, check=True
    ).stdout.split()
    heap_resident, in_use = int(out[0]), int(out[1])
    assert heap_resident - in_use < 16 << 20  # the main heap's resident bytes that hold no live allocation
