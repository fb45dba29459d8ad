"""Make freed tensors go back to the OS, so a process that loads model after model keeps one model's peak.

glibc serves allocations above its mmap threshold with their own mapping, but raises that threshold (up
to 32 MiB) after the first such block is freed; from then on layer-sized tensors come from the heap and
stay in the process when freed. Fixing the threshold keeps every tensor above 1 MiB in its own mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def release_freed_tensors() -> bool:
    """Fix glibc's mmap threshold (idempotent). False where the C library is not glibc (nothing to do)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
