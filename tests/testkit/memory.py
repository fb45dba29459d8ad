"""What a step holds: a file's resident map pages (each page a read touched counts in RSS), the tensors it makes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


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
def made_shapes(*dtypes: torch.dtype) -> Iterator[list[tuple[int, ...]]]:
    """The shape of every tensor of `dtypes` a torch function returns inside the block (on a device: "meta" ones hold
    no memory): a test that a large operand is only ever made a block at a time looks for the whole shape among them."""
    import torch
    from torch.overrides import TorchFunctionMode

    made: list[tuple[int, ...]] = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.dtype in dtypes and not out.is_meta:
                made.append(tuple(out.shape))
            return out

    with Watch():
        yield made
