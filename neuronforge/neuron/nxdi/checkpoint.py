"""Write the quantized state dict NxDI's `save_quantized_state_dict` would write, on CPU, one shard at a time.

NxDI itself loads the whole HF model in fp32 and requantizes it on every compile; this writer produces the
same tensors (keys without `model.`, int8/fp8 codes + fp32 `.scale`) while holding only one input shard
in memory, so a user can pre-build `quantized_checkpoints_path` anywhere. See docs/nxd-numerics.md
("Weight grids", "modules_to_not_convert") for the NxDI/NxD source lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open
from safetensors.torch import save_file

from neuronforge.core.atomic import atomic_write_json
from neuronforge.core.outputs import check_apart, check_replaceable, output_dir
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import (
    INDEX_NAME,
    SINGLE_NAME,
    check_weights,
    read_config,
    validate_hf_folder,
    weight_map,
)
from neuronforge.hf.not_convert import write_not_convert
from neuronforge.neuron.numerics.grid import QUANT_DTYPES, QUANT_TYPES, quantize_weight
from neuronforge.neuron.numerics.module_names import linear_name

if TYPE_CHECKING:
    import torch

    from neuronforge.neuron.numerics.dtypes import QuantDtype, QuantType

_MODEL_PREFIX = "model."


@dataclass
class NxdCheckpoint:
    """What was written: the folder, the HF Linear names quantized / kept in bf16, and the shard files."""

    out_dir: Path
    quantized: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)


def hf_side_excluded(hf_name: str, modules_to_not_convert: Sequence[str], qtype: str) -> bool:
    """NxDI's offline rule: per-channel skips a Linear when an entry is a substring of its HF name;
    per-tensor never receives the list."""
    if qtype != "per_channel_symmetric":
        return False
    return any(entry in hf_name for entry in modules_to_not_convert)


def per_tensor_list_ignored(qtype: str, modules_to_not_convert: Sequence[str]) -> bool:
    """True when NxDI would quantize listed modules offline yet skip them at runtime (int8 codes, no scale)."""
    return qtype == "per_tensor_symmetric" and bool(modules_to_not_convert)


def _nxd_key(key: str) -> str:
    return key[len(_MODEL_PREFIX) :] if key.startswith(_MODEL_PREFIX) else key


def convert_shard(
    tensors: dict[str, torch.Tensor],
    dtype: QuantDtype,
    qtype: QuantType,
    modules_to_not_convert: Sequence[str],
    tied_lm_head: bool,
    record: NxdCheckpoint,
) -> dict[str, torch.Tensor]:
    """Map one input shard's tensors to NxD's layout; pure apart from appending names to `record`."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        module = linear_name(key)
        if tied_lm_head and key == "lm_head.weight":
            continue  # the embedding's copy is written instead
        if module is None:
            out[_nxd_key(key)] = tensor
            if tied_lm_head and key == "model.embed_tokens.weight":
                out.update(_linear_entries("lm_head", tensor, dtype, qtype, modules_to_not_convert, record))
        elif key.endswith(".weight"):
            out.update(_linear_entries(module, tensor, dtype, qtype, modules_to_not_convert, record))
        elif dtype == "int8" or hf_side_excluded(module, modules_to_not_convert, qtype):
            out[_nxd_key(key)] = tensor  # fp8's QuantizedLinear drops Linear biases
    return out


def _linear_entries(
    module: str,
    weight: torch.Tensor,
    dtype: QuantDtype,
    qtype: QuantType,
    modules_to_not_convert: Sequence[str],
    record: NxdCheckpoint,
) -> dict[str, torch.Tensor]:
    name = _nxd_key(module)
    if hf_side_excluded(module, modules_to_not_convert, qtype):
        record.kept.append(module)
        return {f"{name}.weight": weight.clone()}
    # NxDI quantizes the HF model loaded in fp32; bf16 -> fp32 is exact, and fp8 per-tensor depends on it.
    codes, scale = quantize_weight(weight.float(), dtype, qtype)
    record.quantized.append(module)
    return {f"{name}.weight": codes, f"{name}.scale": scale}


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def validate_options(dtype: str, qtype: str) -> tuple[QuantDtype, QuantType]:
    """`dtype` and `qtype` typed as the names NxD accepts, or an error."""
    if dtype not in QUANT_DTYPES:
        raise NeuronforgeError(f"unknown quantization dtype '{dtype}'", f"choose one of: {', '.join(QUANT_DTYPES)}")
    if qtype not in QUANT_TYPES:
        raise NeuronforgeError(f"unknown quantization type '{qtype}'", f"choose one of: {', '.join(QUANT_TYPES)}")
    return dtype, qtype  # (narrowed by the membership tests)


def write_quantized_checkpoint(
    hf_dir: Path,
    out_dir: Path,
    dtype: str = "int8",
    qtype: str = "per_channel_symmetric",
    modules_to_not_convert: Sequence[str] = (),
    *,
    overwrite: bool = False,
) -> NxdCheckpoint:
    """Stream `hf_dir` shard by shard into `out_dir` (atomically) in NxDI's quantized-checkpoint layout.

    Like NxDI, per_tensor_symmetric ignores `modules_to_not_convert` here (see `per_tensor_list_ignored`).
    """
    hf_dir = validate_hf_folder(Path(hf_dir))
    check_weights(hf_dir)  # every tensor is one the model has (or one NxDI ignores): nothing unknown is copied
    quant_dtype, quant_type = validate_options(dtype, qtype)
    out_dir = Path(out_dir)
    check_apart(out_dir, {"--model": hf_dir})
    check_replaceable(out_dir, overwrite=overwrite)
    source_map = weight_map(hf_dir)
    sources = sorted(set(source_map.values()))
    # NxDI builds a tied model's lm_head from the HF model, i.e. from the embedding: a lm_head.weight the file
    # holds anyway is ignored, as transformers ignores it (hf/folders.py `check_weights`).
    tied = bool(read_config(hf_dir).get("tie_word_embeddings"))
    names = _shard_names(len(sources))
    written_map: dict[str, str] = {}
    total_size = 0
    with output_dir(out_dir, overwrite=overwrite) as tmp:
        record = NxdCheckpoint(out_dir=out_dir, shards=names)
        for source, name in zip(sources, names, strict=True):
            with safe_open(hf_dir / source, framework="pt") as handle:
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            converted = convert_shard(tensors, quant_dtype, quant_type, modules_to_not_convert, tied, record)
            del tensors
            save_file(converted, tmp / name, metadata={"format": "pt"})
            for key, tensor in converted.items():
                written_map[key] = name
                total_size += tensor.numel() * tensor.element_size()
            del converted
        if len(names) > 1:
            atomic_write_json(tmp / INDEX_NAME, {"metadata": {"total_size": total_size}, "weight_map": written_map})
        write_not_convert(tmp, modules_to_not_convert)
    return record
