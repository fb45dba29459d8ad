"""How NxD Inference names a Llama's Linear layers, and how it matches `modules_to_not_convert`.

NxDI's module paths differ from HF's (q/k/v live under `qkv_proj`, o_proj under `o_proj.o_proj`),
and its runtime skips a layer when its local name equals an entry exactly, or when an entry is a
substring of its path. Matching on HF names instead would disagree with the device.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_ATTN_QKV = re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.([qkv]_proj)$")
_ATTN_O = re.compile(r"^(?:model\.)?layers\.(\d+)\.self_attn\.o_proj$")
_MLP = re.compile(r"^(?:model\.)?layers\.(\d+)\.mlp\.(gate_proj|up_proj|down_proj)$")


def nxdi_path(hf_name: str) -> str:
    """The NxDI module path of an HF Llama Linear, e.g. model.layers.0.self_attn.q_proj -> layers.0.self_attn.qkv_proj.q_proj."""
    if hf_name == "lm_head":
        return "lm_head"
    if m := _ATTN_QKV.match(hf_name):
        return f"layers.{m[1]}.self_attn.qkv_proj.{m[2]}"
    if m := _ATTN_O.match(hf_name):
        return f"layers.{m[1]}.self_attn.o_proj.o_proj"
    if m := _MLP.match(hf_name):
        return f"layers.{m[1]}.mlp.{m[2]}"
    raise ValueError(f"{hf_name!r} is not a Linear layer NxDI's Llama converts")


def linear_name(key: str) -> str | None:
    """The HF module name if `key` is the weight/bias of a Linear NxDI's Llama converts, else None."""
    module, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias"):
        return None
    try:
        nxdi_path(module)
    except ValueError:
        return None
    return module


def nxdi_skips(hf_name: str, modules_to_not_convert: list[str] | tuple[str, ...]) -> bool:
    """True if NxDI's runtime leaves this layer in bf16 given the list."""
    path = nxdi_path(hf_name)
    local = path.rsplit(".", 1)[-1]
    return any(entry == local or entry in path for entry in modules_to_not_convert)


def block_of(hf_name: str) -> str:
    """The safe-granularity block a Linear belongs to: lm_head, layers.{i}.self_attn or layers.{i}.mlp."""
    path = nxdi_path(hf_name)
    if path == "lm_head":
        return "lm_head"
    layer, kind = path.split(".")[1], path.split(".")[2]
    return f"layers.{layer}.{kind}"


def checkpoint_linears(keys: Iterable[str]) -> list[str]:
    """The Linears NxDI's Llama builds from a checkpoint's tensor names; lm_head always (a tied one is copied)."""
    names = {name for key in keys if (name := linear_name(key)) is not None} | {"lm_head"}
    return sorted(names)


def canonical_blocks(linears: Iterable[str]) -> list[str]:
    """The safe-granularity blocks (lm_head, layers.N.self_attn, layers.N.mlp) those Linears belong to."""
    return sorted({block_of(name) for name in linears})


def unmatched(modules_to_not_convert: Iterable[str], linears: Iterable[str]) -> list[str]:
    """Entries that keep no Linear in bf16 under NxDI's rule: a list that matches nothing is a mistake."""
    linears = list(linears)
    return [entry for entry in modules_to_not_convert if not any(nxdi_skips(n, [entry]) for n in linears)]
