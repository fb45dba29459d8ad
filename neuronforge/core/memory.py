"""glibc malloc settings for the two ways we hold models: many in turn (emulate, evaluate) or one streamed (quantize).

glibc serves allocations above its mmap threshold with their own mapping, returned to the OS when freed, and
the rest from its heap, kept for reuse. By default it raises that threshold (up to 32 MiB) after the first
such block is freed, so layer-sized tensors end up in the heap and stay in the process when freed.

* `release_freed_tensors` (loading model after model): a fixed 4 MiB threshold gives every layer-sized tensor
  its own mapping, so a freed model goes back to the OS and five variants cost one variant's peak.
* `reuse_freed_tensors` (one model streamed through: quantize): a 32 MiB threshold serves shard tensors and
  per-layer copies from the heap, which reuses what the previous layer freed instead of mapping and
  zero-filling fresh pages: 1.2e9-parameter stage 1 ran in 20 s instead of 24 s (benchmarks/bench_scale.py).

Both keep up to 128 MiB of free heap untrimmed: trimming at glibc's default 128 KiB made every 1 MiB
row-block temporary a fresh mapping (7.3 million page faults, more system than user time, in one export).
`trim_free_heap` returns the free heap's pages at a point of our choosing instead: `load_model` calls it after
each map window, whose freed copies and conversion temporaries (below the 4 MiB threshold) otherwise stay
resident as holes between the tensors that stay (73-93 MB after loading the default model for emulation).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers in glibc's malloc.h
M_MMAP_THRESHOLD = -3
RELEASE_THRESHOLD_BYTES = 4 << 20
REUSE_THRESHOLD_BYTES = 32 << 20  # glibc's largest
TRIM_THRESHOLD_BYTES = 128 << 20


def release_freed_tensors() -> bool:
    """Give tensors above 4 MiB their own mapping (idempotent). False where the C library is not glibc."""
    return _mallopt(RELEASE_THRESHOLD_BYTES)


def reuse_freed_tensors() -> bool:
    """Serve tensors up to 32 MiB from the heap (idempotent). False where the C library is not glibc."""
    return _mallopt(REUSE_THRESHOLD_BYTES)


def trim_free_heap() -> bool:
    """Give the pages of every free heap chunk back to the OS now (glibc's malloc_trim), wherever the chunk lies.
    True when it released any; False when there was none, or where the C library is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


def _mallopt(mmap_threshold: int) -> bool:
    libc = _glibc()
    return libc is not None and bool(
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, looked up once (`find_library` searches the system; `load_model` trims after every window)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
