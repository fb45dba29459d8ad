"""Real checkpoints in the shapes tests need, made from the tiny models conftest builds."""

from __future__ import annotations

from pathlib import Path

import torch


def resharded(src: Path, dst: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """`src` re-saved by transformers in `dtype` shards of 60 KB (more than two for the tiny model), next to its
    tokenizer."""
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(src, dtype=dtype).save_pretrained(dst, max_shard_size="60KB")
    for item in src.glob("tokenizer*"):
        (dst / item.name).write_bytes(item.read_bytes())
    return dst
