"""Validate and load an ordinary Hugging Face folder (config.json + safetensors + tokenizer), with clear errors.

Path-only: embedded model names are resolved above this layer (`neuronforge.assets.models.resolve_model`).
Nothing here ever reaches a model hub.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronforge.core.bits import same_bits
from neuronforge.core.memory import release_freed_tensors, trim_free_heap
from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError, expect
from neuronforge.hf.families import check_family, undeclared_bias_problem
from neuronforge.hf.headers import read_header

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2"


def force_offline() -> None:
    """Make any accidental hub access fail fast instead of hanging or downloading."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def read_config(path: Path) -> dict[str, Any]:
    """config.json as a dict; anything else (bad JSON, not an object, not UTF-8) is a clear error."""
    file = path / "config.json"
    fix = "re-export the model with save_pretrained"
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeuronforgeError(f"{file} is not valid JSON ({exc})", fix) from None
    if not isinstance(payload, dict):
        raise NeuronforgeError(f"{file} holds a JSON {type(payload).__name__}, not an object of config keys", fix)
    return payload


def validate_hf_folder(path: Path) -> Path:
    """Check that `path` is a loadable HF causal-LM folder of a supported family that NxDI computes as transformers
    does (hf/families.py), reading only config.json and the safetensors headers."""
    if not path.exists():
        raise NeuronforgeError(
            f"model path {path} does not exist",
            f"pass a Hugging Face model folder, or '{DEFAULT_MODEL}' after `neuronforge model fetch {DEFAULT_MODEL}`",
        )
    if not path.is_dir() or not (path / "config.json").exists():
        raise NeuronforgeError(
            f"{path} is not a Hugging Face model folder (no config.json)",
            "point at the directory written by save_pretrained (config.json, *.safetensors, tokenizer files)",
        )
    if not any(path.glob("*.safetensors")):
        raise NeuronforgeError(
            f"{path} has no *.safetensors weights",
            "re-save the model with save_pretrained(..., safe_serialization=True)",
        )
    config = read_config(path)
    if config.get("model_type") is None:
        raise NeuronforgeError(
            f"{path}/config.json has no model_type", "re-export the model with save_pretrained (it writes model_type)"
        )
    check_family(config, str(path))  # before any weight is read (hf/families.py)
    check_config_values(path, config)
    shards = shard_headers(path)
    check_index(path, shards)
    if problem := undeclared_bias_problem(config, [key for keys in shards.values() for key in keys]):
        raise NeuronforgeError(f"{path}: {problem[0]}", problem[1])  # report A36
    return path


# config.json sizes: positive integers (transformers would divide by them, or take a string), and at most about 4x
# the largest released model's, so a typo cannot make `plan` or a load run for hours (report E06: 10**6 layers).
# The largest today: Llama 3.1 405B (126 layers, hidden 16384, 128 heads, intermediate 53248), Nemotron-4 340B
# (hidden 18432, intermediate 73728), Gemma 3 (vocab 262208, head_dim 256), Llama 4 Scout (10485760 positions).
CONFIG_SIZE_LIMITS = {
    "hidden_size": 65_536,
    "intermediate_size": 262_144,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "vocab_size": 2**20,
    "max_position_embeddings": 2**25,
    "head_dim": 1024,
}


def check_config_values(path: Path, config: dict[str, Any]) -> None:
    """The sizes config.json gives are positive integers within CONFIG_SIZE_LIMITS: a 0, a negative number or "64"
    fails here, named, instead of as a ZeroDivisionError or a type error deep inside transformers (report A22-A24),
    and 10**6 layers instead of as a plan that never ends (E06)."""
    fix = "fix config.json (or re-export the model with save_pretrained)"
    for key, limit in CONFIG_SIZE_LIMITS.items():
        value = config.get(key)
        if value is None:
            continue  # absent or null: transformers' default (or a derived value) applies
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NeuronforgeError(f"{path}/config.json: {key} must be a positive integer, got {value!r}", fix)
        if value > limit:
            raise NeuronforgeError(
                f"{path}/config.json: {key} must be at most {limit:,} (about 4x today's largest models), got {value:,}",
                fix,
            )


# safetensors dtypes of real (unquantized) weights; anything else is an integer code, a bool or an fp8/fp4 code
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")


def shard_headers(path: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """shard file name -> {tensor key: shape}, from each *.safetensors header (safetensors checks each file is
    complete: a truncated or padded shard is caught here, without reading any weights). A tensor that is not
    floating point is refused here too: an int8 one was cast to bf16 and quantized as if it were a real weight
    (report A04)."""
    from safetensors import SafetensorError, safe_open

    shards: dict[str, dict[str, tuple[int, ...]]] = {}
    for shard in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(shard, framework="numpy") as handle:
                slices = {key: handle.get_slice(key) for key in handle.keys()}
                shards[shard.name] = {key: tuple(piece.get_shape()) for key, piece in slices.items()}
                coded = {key: piece.get_dtype() for key, piece in slices.items()}
        except (SafetensorError, OSError) as exc:
            raise NeuronforgeError(
                f"{shard} is not a readable safetensors file ({exc}); it may be truncated or still downloading",
                "copy or download the model again",
            ) from None
        coded = {key: dtype for key, dtype in coded.items() if dtype not in FLOAT_DTYPES}
        if coded:
            key, dtype = next(iter(coded.items()))
            raise NeuronforgeError(
                f"{shard} holds {len(coded)} tensor(s) that are not floating point, e.g. {key} ({dtype}): the "
                "checkpoint looks already quantized, and its codes would be read as if they were weights",
                "give the original (unquantized) bf16, fp16 or fp32 checkpoint; neuronforge quantizes it itself",
            )
    return shards


def _index_map(path: Path) -> dict[str, str]:
    """model.safetensors.index.json's weight_map, checked to be an object of tensor key -> file name."""
    index = path / INDEX_NAME
    fix = "re-save the model with save_pretrained (it writes the index with its shards), or delete the index of a "
    fix += "single-file model"
    try:
        payload = json.loads(index.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NeuronforgeError(f"{index} is not valid JSON ({exc})", fix) from None
    mapping = payload.get("weight_map") if isinstance(payload, dict) else None
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise NeuronforgeError(f"{index} has no weight_map object (tensor name -> shard file)", fix)
    return mapping


def check_index(path: Path, shards: dict[str, dict[str, tuple[int, ...]]]) -> None:
    """A sharded folder's index names shards that exist and that hold the tensors it maps to them (report A06-A10:
    a damaged index was a JSONDecodeError or KeyError traceback after the model stage had passed)."""
    if not (path / INDEX_NAME).exists():
        return
    fix = "re-save the model with save_pretrained, or copy the shards and the index again"
    for key, shard in _index_map(path).items():
        if shard not in shards:
            raise NeuronforgeError(
                f"{path}/{INDEX_NAME} maps {key} to {shard}, which is not in the folder (a missing shard?)", fix
            )
        if key not in shards[shard]:
            raise NeuronforgeError(f"{path}/{INDEX_NAME} maps {key} to {shard}, but that shard does not hold it", fix)


def header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape across a folder's shards, read from the headers (see `shard_headers`)."""
    return {key: shape for shapes in shard_headers(path).values() for key, shape in shapes.items()}


READ_BLOCK_BYTES = 16 << 20


def differing_tensors(shard: Path, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of `tensors` that the safetensors file `shard` does not hold bit for bit (missing or other shape too).

    The file is read with plain reads, a block at a time, and compared with the tensors' bytes: checking a
    written shard costs one block of memory. (A memory map, as safe_open uses, would count every page of the
    file in the process's RSS while it is open: a whole shard on top of the model.)
    """
    import torch

    buffer = bytearray(READ_BLOCK_BYTES)
    differ = []
    with shard.open("rb") as handle:
        data_start, header = read_header(handle)
        for key, tensor in tensors.items():
            entry = header.get(key, {"shape": None, "data_offsets": (0, -1)})
            expected = tensor.contiguous().view(-1).view(torch.uint8)
            begin, end = entry["data_offsets"]
            if entry["shape"] != list(tensor.shape) or end - begin != expected.numel():
                differ.append(key)
                continue
            handle.seek(data_start + begin)
            for start in range(0, expected.numel(), READ_BLOCK_BYTES):
                count = handle.readinto(memoryview(buffer)[: min(READ_BLOCK_BYTES, expected.numel() - start)])
                if not same_bits(
                    torch.frombuffer(buffer, dtype=torch.uint8, count=count), expected[start : start + count]
                ):
                    differ.append(key)
                    break
    return differ


def check_weights(path: Path) -> None:
    """The shards hold every weight the config describes, each with the shape the model class expects.

    The expected shapes come from transformers' own model class built on the meta device (no memory). Tensors the
    class lacks: `check_unexpected`. A tied model's file may still hold its own lm_head.weight: transformers ties it
    to the embedding, and so does NxD Inference (NXDI8 models/application_base.py:729-730 calls
    update_state_dict_for_tied_weights, models/llama/modeling_llama.py:1568-1569: lm_head := embed_tokens), so the
    emulation computes what the device will; a head that differs is only named, with a warning (report A19).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    force_offline()
    shards = shard_headers(path)
    located = {key: shard for shard, shapes in shards.items() for key in shapes}
    found = {key: shape for shapes in shards.values() for key, shape in shapes.items()}
    try:  # transformers' own validators (rope_scaling, head counts, types): their errors are no NeuronforgeError
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise NeuronforgeError(
            f"{path}/config.json is invalid: transformers cannot build the model from it ({type(exc).__name__}: {exc})",
            "fix config.json (or re-export the model with save_pretrained)",
        ) from None
    tied = _tied_heads(skeleton) if config.tie_word_embeddings else {}
    fix = "re-export the model with save_pretrained, or fix config.json to match the weights"
    expected = skeleton.state_dict()
    for key, tensor in expected.items():
        want = tuple(tensor.shape)
        if key not in found:
            if key in tied:
                continue
            raise NeuronforgeError(f"{path} has no weight {key} (shape {want}) in its *.safetensors", fix)
        if found[key] != want:
            raise NeuronforgeError(f"{path}: weight {key} has shape {found[key]} but config.json implies {want}", fix)
    check_unexpected(path, set(found) - set(expected), skeleton)
    for head, source in tied.items():
        if head in found and found[head] == found.get(source) and not _same_tensor(path, located, head, source):
            warn_once(
                f"{path}: config.json ties the output head to the embedding (tie_word_embeddings: true), but the "
                f"checkpoint holds a {head} that differs from {source}; it is ignored, as transformers and NxD "
                f"Inference ignore it. fix: set tie_word_embeddings to false in config.json if that head is meant"
            )


def _tied_heads(model: PreTrainedModel) -> dict[str, str]:
    """Tied head key -> the key it is tied to: transformers 5 declares a dict, 4.x (the Neuron host's) a list of
    heads tied to the input embedding."""
    declared = getattr(model, "_tied_weights_keys", None) or {}
    return dict(declared) if isinstance(declared, dict) else dict.fromkeys(declared, _input_embedding_key(model))


# Unexpected keys transformers itself drops as leftovers of older versions (modeling_utils.py:4919-4928 in 5.23.0):
# per-layer RoPE frequency buffers (recomputed from config.json) and position_ids buffers.
LEFTOVER_KEYS = re.compile(r"(^|\.)rotary_emb\.inv_freq$|(^|\.)position_ids$")


def check_unexpected(path: Path, unexpected: set[str], skeleton: PreTrainedModel) -> None:
    """Tensors the model class does not have. transformers drops them all and only logs it, and NxD Inference never
    asks for them; our export copied them through (report A12). A leftover buffer that transformers knows to be
    harmless (`ignored_on_load`) is named in one warning and left out of the export; any other tensor may be part
    of the model's math (an adapter, a bias, another architecture's layer), so it is refused, named. Undeclared
    Linear biases were refused earlier, with the config key to set (`validate_hf_folder`)."""
    leftovers = sorted(key for key in unexpected if ignored_on_load(skeleton, key))
    unknown = sorted(unexpected - set(leftovers))
    if unknown:
        raise NeuronforgeError(
            f"{path} holds {len(unknown)} tensor(s) that a '{skeleton.config.model_type}' model does not have: "
            f"{', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}; ignoring them would compute another "
            "model than the checkpoint's",
            "use the config.json the model was trained with (model_type, architectures), or remove those tensors "
            "from the *.safetensors if they are not part of the model",
        )
    if leftovers:
        warn_once(
            f"{path}: {len(leftovers)} leftover buffer(s) are ignored ({', '.join(leftovers[:2])}"
            f"{', ...' if len(leftovers) > 2 else ''}): transformers recomputes them from config.json"
        )


def ignored_on_load(model: Any, key: str) -> bool:
    """Whether loading a checkpoint into `model` ignores its tensor `key`, in transformers as in NxD Inference: a
    leftover buffer (LEFTOVER_KEYS, or a pattern the class lists itself), or a tied model's own copy of its head
    (see `check_weights`). The export leaves these out: the checkpoint it writes holds only what is computed."""
    patterns = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()
    tied = getattr(model, "_tied_weights_keys", None) or {}
    tied_head = isinstance(tied, dict) and key in tied and getattr(model.config, "tie_word_embeddings", False)
    return bool(tied_head) or any(re.search(pattern, key) for pattern in (LEFTOVER_KEYS, *patterns))


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """One `warning:` line per message and process: run checks a folder before its stages and each stage loads it."""
    if message not in _WARNED:
        _WARNED.add(message)
        err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def _same_tensor(path: Path, located: dict[str, str], key: str, other: str) -> bool:
    """Whether tensors `key` and `other` (of one shape) hold the same values, read a map window of rows at a time."""
    import torch

    mine = row_blocks(path / located[key], key, torch.float32)
    theirs = row_blocks(path / located[other], other, torch.float32)  # same shape, so the same blocks
    return all(torch.equal(a, b) for (_, a), (_, b) in zip(mine, theirs, strict=True))


def check_tokenizer(path: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every token id the tokenizer can produce has a row in the model's embedding (else: IndexError mid-run)."""
    rows = read_config(path).get("vocab_size") if (path / "config.json").is_file() else None
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise NeuronforgeError(
            f"the tokenizer in {path} has {len(tokenizer)} tokens but the model's vocab_size is {rows}: token ids "
            f">= {rows} have no embedding",
            "save the tokenizer the model was trained with next to its weights "
            "(or resize the embeddings with model.resize_token_embeddings(len(tokenizer)) and save again)",
        )


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def weight_map(path: Path) -> dict[str, str]:
    """Tensor key -> safetensors file of an HF folder (reads only the index or the single file's header)."""
    from safetensors import safe_open

    if (path / INDEX_NAME).exists():
        return _index_map(path)
    if (path / SINGLE_NAME).exists():
        with safe_open(path / SINGLE_NAME, framework="pt") as handle:
            return dict.fromkeys(handle.keys(), SINGLE_NAME)
    raise NeuronforgeError(
        f"{path} has neither {SINGLE_NAME} nor {INDEX_NAME}", "re-save the model with save_pretrained"
    )


def shard_keys(path: Path) -> dict[str, list[str]]:
    """safetensors file -> the tensor keys it holds, files in name order."""
    shards: dict[str, list[str]] = {}
    for key, shard in sorted(weight_map(path).items(), key=lambda item: item[1]):
        shards.setdefault(shard, []).append(key)
    return shards


# safetensors maps a whole file, and every page a tensor read touched stays in the process's RSS until the file
# is closed (and no tensor read from it is alive): a whole shard, 5 GB for the usual save_pretrained shards.
MAP_WINDOW_BYTES = 64 << 20


def map_windows(file: Path, keys: list[str], window: int = MAP_WINDOW_BYTES) -> list[list[str]]:
    """`keys` of one safetensors file in runs of at most `window` bytes of data (a larger tensor is a run alone)."""
    with file.open("rb") as handle:
        _, header = read_header(handle)
    runs: list[list[str]] = []
    size = 0
    for key in keys:
        begin, end = header[key]["data_offsets"]
        if not runs or size + end - begin > window:
            runs.append([])
            size = 0
        runs[-1].append(key)
        size += end - begin
    return runs


def mapped_tensors(file: Path, runs: list[list[str]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor) for the keys of one safetensors file grouped by `map_windows`, memory-mapped by safetensors,
    which is reopened for every run: while each tensor is dropped (or copied) before the next run, at most one
    window's pages (or one larger tensor's) are resident, however large the shard."""
    from safetensors import safe_open

    for run in runs:
        with safe_open(file, framework="pt") as handle:
            for key in run:
                yield key, handle.get_tensor(key)


def copied_tensors(
    file: Path, runs: list[list[str]], dtype: torch.dtype, window: int = MAP_WINDOW_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, the tensor copied out of `file` as `dtype`) for the runs of `map_windows`: nothing mapped outlives its
    run, and a tensor alone in its run (as every tensor larger than the window is) is copied `window` bytes of rows
    at a time, each block through a map of its own, so its pages are never resident whole (lm_head: 0.2 GB at
    1.2e9 parameters)."""
    for run in runs:
        if len(run) == 1:
            yield run[0], finite(file, run[0], _copied_by_rows(file, run[0], dtype, window))
        else:  # the copies are made before the run's map is closed; no mapped tensor leaves the comprehension
            copies = [(key, tensor.to(dtype, copy=True)) for key, tensor in mapped_tensors(file, [run])]
            yield from [(key, finite(file, key, tensor)) for key, tensor in copies]


def finite(file: Path, key: str, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` when every value is finite. A NaN or inf weight makes every logit NaN: quantize reported 100% grid
    agreement and emulate a NaN perplexity beside "emulation exact" (report X14/X15); it is named here instead.
    The check looks at the extremes only (amin/amax propagate NaN, and an inf is one): one min/max pass costs an
    eighth of `isfinite`'s boolean tensor in bf16 (17 vs 135 ms on a 5632 x 2048 matrix; isfinite took 20 s of a
    1.17e9-parameter load)."""
    import torch

    if (
        tensor.is_floating_point()
        and tensor.numel()
        and not bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all())
    ):
        raise NeuronforgeError(
            f"{file}: weight {key} holds NaN or infinite values, so every output of the model would be NaN",
            "use a checkpoint without NaN/inf weights (re-export it, or check the training or conversion that "
            "wrote it)",
        )
    return tensor


def _copied_by_rows(file: Path, key: str, dtype: torch.dtype, window: int) -> torch.Tensor:
    import torch
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:  # (no tensor read from a map may outlive it: it keeps its pages)
        shape = handle.get_slice(key).get_shape()
        if not shape:  # a scalar
            return handle.get_tensor(key).to(dtype, copy=True)
    out = torch.empty(shape, dtype=dtype)
    for rows, block in row_blocks(file, key, dtype, window):
        out[rows] = block
    return out


def row_blocks(
    file: Path, key: str, dtype: torch.dtype, window: int = MAP_WINDOW_BYTES
) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, those rows of tensor `key` copied as `dtype`) for an [n, ...] tensor of `file`, `window` bytes of it a
    block, each block read through a map of its own: at most a window of the tensor's pages is ever resident."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:
        rows = handle.get_slice(key).get_shape()[0]
        row_bytes = handle.get_slice(key)[0:1].nbytes
    step = max(1, window // max(1, row_bytes))
    for start in range(0, rows, step):
        with safe_open(file, framework="pt") as handle:
            block = handle.get_slice(key)[start : start + step].to(dtype, copy=True)
        yield slice(start, start + step), finite(file, key, block)


def load_model(
    path: Path,
    dtype: torch.dtype | None = None,
    after_window: Callable[[PreTrainedModel], None] | None = None,
    deferred: Collection[str] = (),
    embedding_from_file: bool = False,
) -> PreTrainedModel:
    """Load a validated folder on CPU in `dtype` (default bf16, what Neuron computes in), a map window at a time.

    The model is built without storage, then each safetensors shard's tensors are copied in (cast to `dtype`)
    by `copied_tensors`: host RAM holds the model once plus one map window, whatever the source dtype
    (bf16, fp16 or fp32) and the shard size. `after_window(model)` runs after each window, with no page of any
    shard mapped (the emulator converts the Linears that just arrived, so at most a window of them is ever in
    bf16); then the free heap's pages go back to the OS. The `deferred` weights are left on "meta" for the caller
    to read (the emulator quantizes the largest Linears from the file a block of rows at a time). Tied weights are
    tied last. With `embedding_from_file`, an untied input embedding is not loaded: a `FileEmbedding` reads the
    rows of each call's tokens from its shard (hf/file_embedding.py; the emulator's load: stage 1's AutoRound needs
    the embedding as a parameter). A tied one is the head's weight too, and is loaded.
    """
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    force_offline()
    validate_hf_folder(path)
    check_weights(path)
    release_freed_tensors()
    dtype = dtype or torch.bfloat16
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    with init_empty_weights(include_buffers=False):  # parameters on "meta"; buffers (RoPE frequencies) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    wanted = {name for name, _ in model.named_parameters()} - set(deferred)
    embedding = _input_embedding_key(model) if embedding_from_file and not config.tie_word_embeddings else None
    for shard, keys in shard_keys(path).items():
        if embedding in keys and _embedding_read_from(model, path / shard, embedding, dtype):
            wanted.discard(embedding)
        for run in map_windows(path / shard, [key for key in keys if key in wanted], MAP_WINDOW_BYTES):
            _copy_in(model, path / shard, run, dtype)
            if after_window is not None:
                after_window(model)
            trim_free_heap()  # what the window freed leaves holes no later tensor fills (core/memory.py)
    model.tie_weights()
    missing = [name for name, param in model.named_parameters() if param.is_meta and name not in deferred]
    if missing:
        raise NeuronforgeError(
            f"{path} lacks the weights {missing[:3]} ({len(missing)} in all)",
            "re-save the whole model with save_pretrained",
        )
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path, local_files_only=True)
    model.eval()
    return model


def reload_weights(path: Path, model: PreTrainedModel, keys: Collection[str]) -> None:
    """Put the parameters `keys` of `model` back to what `load_model` read from `path` (cast to each one's dtype),
    a map window at a time: stage 1 ships RTN after all when its tuning lost (pipeline/quantize/autoround_check.py)."""
    wanted = set(keys)
    for shard, shard_names in shard_keys(path).items():
        names = [key for key in shard_names if key in wanted]
        for run in map_windows(path / shard, names, MAP_WINDOW_BYTES):
            _copy_in(model, path / shard, run, model.get_parameter(run[0]).dtype)
            wanted.difference_update(run)
    if wanted:
        raise NeuronforgeError(
            f"{path} lacks the weights {sorted(wanted)[:3]} ({len(wanted)} in all)",
            "re-save the whole model with save_pretrained",
        )


def _input_embedding_key(model: PreTrainedModel) -> str:
    embeddings = model.get_input_embeddings()
    return next(f"{name}.weight" for name, module in model.named_modules() if module is embeddings)


def _embedding_read_from(model: PreTrainedModel, file: Path, key: str, dtype: torch.dtype) -> bool:
    """Put a `FileEmbedding` over `key` of `file` in place of the model's embedding; False if it cannot read it."""
    from neuronforge.hf.file_embedding import FileEmbedding

    module = FileEmbedding.from_file(file, key, dtype)
    if module is not None:
        model.set_submodule(key.removesuffix(".weight"), module)
    return module is not None


def _copy_in(model: PreTrainedModel, file: Path, run: list[str], dtype: torch.dtype) -> None:
    """One map window's tensors copied into `model`'s parameters. A function of its own so that no copy outlives it
    in a loop variable: the emulator replaces the Linears of the window next, and a bf16 weight still referenced
    (lm_head's 0.2 GB at 1.2e9 parameters) would stay on top of its codes."""
    import torch

    for key, value in copied_tensors(file, [run], dtype, MAP_WINDOW_BYTES):
        module_name, _, name = key.rpartition(".")
        model.get_submodule(module_name)._parameters[name] = torch.nn.Parameter(value, requires_grad=False)


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    force_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise NeuronforgeError(
            f"no usable tokenizer in {path} ({exc.__class__.__name__})",
            "save the tokenizer next to the weights (tokenizer.save_pretrained(folder))",
        ) from exc
    check_tokenizer(path, tokenizer)
    return tokenizer


def check_loaded_model(model: Any, where: str) -> None:
    """The Python API's `model` argument is a torch module whose weights are loaded (not on the meta device):
    a string or None was an AttributeError, a meta model a torch error 16 frames deep (report J09, J21)."""
    import torch

    expect(model, torch.nn.Module, where, "a loaded model (a torch.nn.Module, e.g. AutoModelForCausalLM)")
    meta = [name for name, param in model.named_parameters() if param.is_meta]
    if meta:
        raise NeuronforgeError(
            f"{where}: the model's weights are on the meta device (not loaded), e.g. {meta[0]}",
            "load the weights first (from_pretrained without device_map='meta'/init_empty_weights)",
        )


def check_tokenizer_object(tokenizer: Any, where: str) -> None:
    """The Python API's `tokenizer` argument is a transformers tokenizer (a string was called as one: J11)."""
    from transformers import PreTrainedTokenizerBase

    expect(tokenizer, PreTrainedTokenizerBase, where, "a tokenizer (AutoTokenizer.from_pretrained(folder))")
