"""An input embedding read from its safetensors file a row per token, for a model that only ever gathers from it.

An untied embedding is vocab x hidden in bf16 (0.2 GB at 49152 x 2048, 1 GB for Llama 3 8B, 2.1 GB at 70B), and a
forward reads one row of it per distinct token. `load_model(..., embedding_from_file=True)` (the emulator's load)
makes it this module instead of a Parameter, so host RAM holds only the rows of the batch being run. The rows are
read with `os.preadv`, not through a memory map: a page fault maps the whole page-cache folio it falls in (up to
2 MiB), so a map's resident set grows with how far apart the rows lie, not with how many there are. The file is
opened at load and closed with the module (which refuses to be copied rather than share it), so a checkpoint
renamed over afterwards does not change the model. Each row is cast as `load_model` casts: the output is bit for
bit what the loaded nn.Embedding returns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import torch

from neuronforge.hf.headers import read_header

# safetensors dtype names of the floating-point embeddings a checkpoint can hold.
STORED_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


class FileEmbedding(torch.nn.Module):
    """nn.Embedding's forward over a [vocab, hidden] tensor at `offset` of the open `file`, cast to `dtype`, read
    per call (see `from_file`)."""

    def __init__(
        self, file: BinaryIO, offset: int, shape: tuple[int, int], stored: torch.dtype, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.file, self.offset = file, offset
        self.num_embeddings, self.embedding_dim = shape
        self.stored, self.dtype = stored, dtype
        self.row_bytes = self.embedding_dim * stored.itemsize

    @classmethod
    def from_file(cls, path: Path, key: str, dtype: torch.dtype) -> FileEmbedding | None:
        """The embedding `key` of safetensors file `path`, or None when it is not a 2-D floating-point tensor there
        (the caller then loads it like any weight)."""
        file = open(path, "rb", buffering=0)  # noqa: SIM115  (held open for the module's life)
        data_start, header = read_header(file)
        entry = header.get(key, {})
        if entry.get("dtype") not in STORED_DTYPES or len(entry.get("shape", ())) != 2:
            file.close()
            return None
        rows, width = entry["shape"]
        return cls(file, data_start + entry["data_offsets"][0], (rows, width), STORED_DTYPES[entry["dtype"]], dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens, where = ids.unique(return_inverse=True)  # sorted
        rows = tokens.tolist()
        if rows and not 0 <= rows[0] <= rows[-1] < self.num_embeddings:
            raise IndexError(f"token ids must lie in [0, {self.num_embeddings}), got {rows[0]}..{rows[-1]}")
        table = torch.empty(len(rows), self.embedding_dim, dtype=self.stored)
        buffer = memoryview(table.view(-1).view(torch.uint8).numpy())
        for i, row in enumerate(rows):
            block = buffer[i * self.row_bytes : (i + 1) * self.row_bytes]
            if os.preadv(self.file.fileno(), [block], self.offset + row * self.row_bytes) != self.row_bytes:
                raise OSError(f"the checkpoint's embedding ended early at row {row}: was the file truncated?")
        return table.to(self.dtype).to(ids.device)[where]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, read per call from its file as {self.stored}"
