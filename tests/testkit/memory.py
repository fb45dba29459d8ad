"""What a step holds: a file's resident map pages (each page a read touched counts in RSS), the fp32 tensors it makes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def mapped_rss(file: Path) -> int:
    """Bytes of `file`'s pages resident in this process's memory maps (Linux /proc/self/smaps)."""
    target = str(Path(file).resolve())
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address perms offset device inode [path]
            inside = len(fields) >= 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


@contextmanager
def fp32_shapes() -> Iterator[list[tuple[int, ...]]]:
    """The shape of every fp32 tensor a torch function returns inside the block: a test that a large operand is only
    ever made a block at a time looks for the whole shape among them."""
    import torch
    from torch.overrides import TorchFunctionMode

    made: list[tuple[int, ...]] = []

    class WatchFp32(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype == torch.float32:
                made.append(tuple(out.shape))
            return out

    with WatchFp32():
        yield made
