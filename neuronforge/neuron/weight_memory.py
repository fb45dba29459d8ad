"""Weight bytes as a Neuron device stores a model, from tensor shapes alone (no weights loaded).

NxD keeps each converted Linear as int8/fp8 codes (1 byte each) plus an fp32 scale per output row
(one fp32 for per-tensor), and keeps its bias in bf16 for int8 (fp8 drops Linear biases). Everything
else (embeddings, norms, Linears in `modules_to_not_convert`) stays bf16. NxDI's lm_head is its own
tensor even when the HF model ties it to the embedding (it copies the embedding at load), so lm_head
is always counted separately, in the bf16 reference too.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.module_names import linear_name, nxdi_skips

BF16_BYTES = 2
SCALE_BYTES = 4  # fp32
CODE_BYTES = 1  # int8 / fp8


@dataclass(frozen=True)
class WeightMemory:
    """Device weight bytes of one variant, and the bf16 bytes of the same model for comparison."""

    total_bytes: int
    bf16_bytes: int
    quantized_linears: int
    bf16_linears: int
    by_kind: dict[str, int] = field(default_factory=dict)  # codes / scales / bf16

    @property
    def percent_of_bf16(self) -> float:
        return 100.0 * self.total_bytes / self.bf16_bytes


def with_device_lm_head(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Add `lm_head.weight` for tied models (NxDI materialises it from the embedding)."""
    if "lm_head.weight" in shapes:
        return dict(shapes)
    embed = next((s for n, s in shapes.items() if n.endswith("embed_tokens.weight")), None)
    if embed is None:
        raise NeuronforgeError(
            "the checkpoint has neither lm_head.weight nor embed_tokens.weight", "is it a causal LM?"
        )
    return {**shapes, "lm_head.weight": embed}


def weight_memory(
    shapes: dict[str, tuple[int, ...]],
    dtype: str | None,
    modules_to_not_convert: list[str] | tuple[str, ...] = (),
    qtype: str = "per_channel_symmetric",
) -> WeightMemory:
    """Bytes on the device for parameter `shapes` quantized to `dtype` (None = all bf16)."""
    shapes = with_device_lm_head(shapes)
    bf16_total = sum(math.prod(s) for s in shapes.values()) * BF16_BYTES
    kinds = {"codes": 0, "scales": 0, "bf16": 0}
    converted: set[str] = set()
    kept: set[str] = set()
    for name, shape in shapes.items():
        numel = math.prod(shape)
        module = linear_name(name)
        quantize = dtype is not None and module is not None and not nxdi_skips(module, modules_to_not_convert)
        if module is not None:
            (converted if quantize else kept).add(module)
        if not quantize:
            kinds["bf16"] += numel * BF16_BYTES
        elif name.endswith(".weight"):
            kinds["codes"] += numel * CODE_BYTES
            kinds["scales"] += (shape[0] if qtype == "per_channel_symmetric" else 1) * SCALE_BYTES
        elif dtype == "int8":  # a converted Linear's bias: kept in bf16 by int8, dropped by fp8
            kinds["bf16"] += numel * BF16_BYTES
    return WeightMemory(sum(kinds.values()), bf16_total, len(converted), len(kept), kinds)


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header (8-byte length + JSON), without reading the data."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: tuple(meta["shape"]) for name, meta in header.items() if name != "__metadata__"}


def checkpoint_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape across a folder's *.safetensors shards."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        shapes.update(_safetensors_shapes(shard))
    if not shapes:
        raise NeuronforgeError(f"no safetensors tensors found in {model_dir}", "point at a save_pretrained folder")
    return shapes


def format_bytes(n: int) -> str:
    """Human-readable size in decimal units (what the published table uses: GB = 1e9 bytes)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
