"""Weight bytes as a Neuron device stores a model, from tensor shapes alone (no weights loaded).

NxD keeps each converted Linear as int8/fp8 codes (1 byte each) plus an fp32 scale per output row
(one fp32 for per-tensor), and keeps its bias in bf16 for int8 (fp8 drops Linear biases). Everything
else (embeddings, norms, Linears in `modules_to_not_convert`) stays bf16. NxDI's lm_head is its own
tensor even when the HF model ties it to the embedding (it copies the embedding at load), so lm_head
is always counted separately, in the bf16 reference too.

Per NeuronCore (`rank_shapes`), what NxDI places on each tensor-parallel rank, read from NxDI 0.8
(SDK 2.28, commit cd3abf3) and NxD 0.17 (73ab227); file:line in docs/deployment-planner.md:
- q/k/v and gate/up and lm_head are column-parallel: rows split over tp, their per-channel scales and
  biases split with them; o_proj and down_proj are row-parallel: columns split, scales and biases
  replicated on every rank. Sizes are padded to a multiple of tp (q heads, intermediate, vocab).
- the embedding is split along the hidden dimension (shard_across_embedding), norms are replicated.
- GQA (`gqa_layout`): KV heads kept when tp divides them, replicated to one per rank when they divide
  tp, otherwise converted to MHA (as many KV heads as query heads); k/v weights, their scales and the
  KV cache grow with the replication.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronforge.errors import NeuronforgeError
from neuronforge.hf.families import FAMILIES
from neuronforge.neuron.numerics.dtypes import QuantDtype, QuantType
from neuronforge.neuron.numerics.module_names import linear_name, nxdi_skips

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
    dtype: QuantDtype | None,
    modules_to_not_convert: list[str] | tuple[str, ...] = (),
    qtype: QuantType = "per_channel_symmetric",
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


@dataclass(frozen=True)
class HeadLayout:
    """Attention heads as NxDI shards them for one tp degree (modules/attention/gqa.py)."""

    q_heads: int  # padded to a multiple of tp
    kv_heads: int  # after the GQA rule, a multiple of tp
    strategy: str  # "kept" | "replicated" | "mha"
    head_dim: int

    def kv_heads_per_rank(self, tp: int) -> int:
        return self.kv_heads // tp


def gqa_layout(num_attention_heads: int, num_key_value_heads: int, tp: int, head_dim: int) -> HeadLayout:
    """NxDI's determine_sharding_strategy + get_shardable_head_counts (gqa.py:89-127)."""
    q_heads = num_attention_heads + (-num_attention_heads) % tp
    kv = num_key_value_heads
    if kv == num_attention_heads:
        return HeadLayout(q_heads, q_heads, "kept" if q_heads == kv else "mha", head_dim)
    if kv >= tp and kv % tp == 0:
        return HeadLayout(q_heads, kv, "kept", head_dim)
    if tp % kv == 0:
        return HeadLayout(q_heads, tp, "replicated", head_dim)
    return HeadLayout(q_heads, q_heads, "mha", head_dim)


def _ceil_to(n: int, multiple: int) -> int:
    return n + (-n) % multiple


_COLUMN = re.compile(r"\.(?:self_attn\.([qkv])_proj|mlp\.(?:gate|up)_proj)\.(weight|bias)$")
_ROW = re.compile(r"\.(?:self_attn\.o_proj|mlp\.down_proj)\.(weight|bias)$")


def rank_shapes(shapes: dict[str, tuple[int, ...]], layout: HeadLayout, tp: int) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor on one tensor-parallel rank (see the module docstring); lm_head included."""
    per_rank: dict[str, tuple[int, ...]] = {}
    heads_out = {"q": layout.q_heads, "k": layout.kv_heads, "v": layout.kv_heads}
    for name, shape in with_device_lm_head(shapes).items():
        if name.endswith("embed_tokens.weight"):
            per_rank[name] = (shape[0], _ceil_to(shape[1], tp) // tp)
        elif name == "lm_head.weight":
            per_rank[name] = (_ceil_to(shape[0], tp) // tp, shape[1])
        elif m := _COLUMN.search(name):
            rows = heads_out[m[1]] * layout.head_dim if m[1] else _ceil_to(shape[0], tp)
            per_rank[name] = (rows // tp, *shape[1:])
        elif (m := _ROW.search(name)) and m[1] == "weight":
            cols = layout.q_heads * layout.head_dim if ".self_attn." in name else _ceil_to(shape[1], tp)
            per_rank[name] = (shape[0], cols // tp)
        else:  # norms and row-parallel biases: the whole tensor on every rank
            per_rank[name] = shape
    return per_rank


def kv_cache_bytes(layout: HeadLayout, num_layers: int, tp: int, batch_size: int, seq_len: int, kv_fp8: bool) -> int:
    """One rank's KV cache: a K and a V of (batch, kv heads per rank, seq_len, head_dim) per layer
    (kv_cache_manager.py:159-237); fp8 direct cast stores 1 byte per value, bf16 2. `seq_len` is the cache length:
    a set sliding_window replaces it (`cache_length`)."""
    values = num_layers * 2 * batch_size * layout.kv_heads_per_rank(tp) * seq_len * layout.head_dim
    return values * (CODE_BYTES if kv_fp8 else BF16_BYTES)


def cache_length(seq_len: int, sliding_window: int | None) -> int:
    """The KV cache length NxDI allocates: sliding_window whenever the class reads one and it is set, even above
    seq_len, else max_length = seq_len (NXDI8 modules/kvcache/kv_cache_manager.py:195-203, NXDI9 :196-202)."""
    return sliding_window or seq_len


def config_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The HF parameter shapes of a model of a supported family from its config.json alone (planning without weights):
    Qwen2's q/k/v biases, Qwen3's q/k norms, an explicit head_dim."""
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [key for key in required if key not in config]
    if missing:
        raise NeuronforgeError(
            f"config.json lacks {missing}", "pass the config.json of a model written by save_pretrained"
        )
    hidden, inter = int(config["hidden_size"]), int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    vocab = int(config["vocab_size"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    linears = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv * head_dim, hidden),
        "self_attn.v_proj": (kv * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }
    biased = {module for module in linears if _biased(config, module)}
    family = FAMILIES.get(str(config.get("model_type")))
    qk_norm = family is not None and family.qk_norm
    for i in range(int(config["num_hidden_layers"])):
        prefix = f"model.layers.{i}"
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
        if qk_norm:
            shapes[f"{prefix}.self_attn.q_norm.weight"] = shapes[f"{prefix}.self_attn.k_norm.weight"] = (head_dim,)
        for module, shape in linears.items():
            shapes[f"{prefix}.{module}.weight"] = shape
            if module in biased:
                shapes[f"{prefix}.{module}.bias"] = (shape[0],)
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _biased(config: Mapping[str, Any], module: str) -> bool:
    """Whether this Linear has a bias: Qwen2's q/k/v always (not o_proj), Llama's by attention_bias/mlp_bias."""
    family = FAMILIES.get(str(config.get("model_type")))
    if family is not None and family.qkv_bias:
        return module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    return bool(config.get("mlp_bias" if module.startswith("mlp.") else "attention_bias"))


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
