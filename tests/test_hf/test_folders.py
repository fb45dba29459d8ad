"""Shard-by-shard loading: any source dtype becomes the bf16 model HF would build, one shard at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from testkit.checkpoints import resharded

from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import (
    READ_BLOCK_BYTES,
    differing_tensors,
    finite,
    load_model,
    map_windows,
    mapped_tensors,
    reload_weights,
    shard_keys,
)


def _sharded(make_tiny_llama, tmp_path: Path, dtype: torch.dtype) -> Path:
    src = make_tiny_llama(f"load-{dtype}", dtype=dtype, tie_word_embeddings=False)
    return resharded(src, tmp_path / "sharded", dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_any_source_dtype_loads_as_the_model_hf_builds(make_tiny_llama, tmp_path: Path, dtype: torch.dtype) -> None:
    from transformers import AutoModelForCausalLM

    folder = _sharded(make_tiny_llama, tmp_path, dtype)
    seen: list[int] = []
    model = load_model(folder, after_window=lambda m: seen.append(sum(not p.is_meta for p in m.parameters())))
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert len(seen) >= len(shard_keys(folder)) > 2 and seen == sorted(seen) and seen[0] < seen[-1]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    got, want = model.state_dict(), reference.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    ids = torch.arange(24).reshape(2, 12)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_tied_head_is_the_embedding(tiny_llama_dir: Path) -> None:
    model = load_model(tiny_llama_dir)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_a_missing_weight_is_refused(make_tiny_llama, tmp_path: Path) -> None:
    folder = _sharded(make_tiny_llama, tmp_path, torch.bfloat16)
    shard = next(name for name, keys in shard_keys(folder).items() if "model.norm.weight" in keys)
    tensors = load_file(folder / shard)
    del tensors["model.norm.weight"]
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    payload = json.loads(index.read_text())
    del payload["weight_map"]["model.norm.weight"]
    index.write_text(json.dumps(payload))
    with pytest.raises(NeuronforgeError, match="has no weight model.norm.weight"):
        load_model(folder)


@pytest.mark.parametrize("block", [READ_BLOCK_BYTES, 7])  # one read per tensor, and many uneven ones
def test_a_written_shard_is_compared_bit_for_bit(tmp_path: Path, monkeypatch, block: int) -> None:
    from neuronforge.hf import folders

    monkeypatch.setattr(folders, "READ_BLOCK_BYTES", block)
    tensors = {
        "w": torch.randn(8, 16).to(torch.bfloat16),
        "codes": torch.arange(-64, 64, dtype=torch.int8).reshape(4, 32),
        "norm": torch.ones(5),
    }
    shard = tmp_path / "model.safetensors"
    save_file(tensors, shard)
    assert differing_tensors(shard, tensors) == []

    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor in the file
    shard.write_bytes(bytes(data))
    last = max(
        tensors, key=lambda k: json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])[k]["data_offsets"][1]
    )
    assert differing_tensors(shard, tensors) == [last]

    save_file(tensors, shard)
    assert differing_tensors(shard, {**tensors, "w": tensors["w"].reshape(16, 8), "gone": torch.zeros(1)}) == [
        "w",
        "gone",
    ]


def test_a_shard_is_read_a_map_window_at_a_time(tmp_path: Path) -> None:
    """safetensors keeps every page read in RSS until the file closes; mapped_tensors reopens it each window."""
    from testkit.memory import mapped_rss

    mib = 1 << 20
    file = tmp_path / "shard.safetensors"
    tensors = {f"t{i}": torch.full((mib // 2,), float(i), dtype=torch.bfloat16) for i in range(8)}  # 1 MiB each
    save_file(tensors, file)
    resident = []
    for key, tensor in mapped_tensors(file, map_windows(file, list(tensors), window=2 * mib)):
        assert torch.equal(tensor, tensors[key])  # touches every page of the tensor
        resident.append(mapped_rss(file))
    assert len(resident) == 8 and max(resident) <= 2 * mib + 16 * 4096
    held = []  # one window as big as the file: everything read stays resident, as with one safe_open
    for _, tensor in mapped_tensors(file, map_windows(file, list(tensors), window=8 * mib)):
        held.append(float(tensor.sum()))
        resident.append(mapped_rss(file))
    assert resident[-1] >= 8 * mib
    del tensor  # the last tensor read keeps its map alive; with it gone, the file is unmapped
    assert mapped_rss(file) == 0


def test_map_windows_group_keys_by_their_bytes(tmp_path: Path) -> None:
    file = tmp_path / "shard.safetensors"
    kib = {"empty": 0, "a": 3, "b": 1, "big": 9, "c": 2, "d": 2}  # KiB of bf16 data each
    save_file({k: torch.zeros(n * 512, dtype=torch.bfloat16) for k, n in kib.items()}, file)
    assert map_windows(file, list(kib), window=4 << 10) == [["empty", "a", "b"], ["big"], ["c", "d"]]
    assert map_windows(file, ["c"], window=1) == [["c"]] and map_windows(file, []) == []


def test_load_model_reads_through_map_windows(make_tiny_llama, tmp_path: Path, monkeypatch) -> None:
    """Every weight load_model copies comes through copied_tensors, so a shard is never resident whole; each shard's
    header is read once, to group its keys into windows."""
    from neuronforge.hf import folders

    folder = _sharded(make_tiny_llama, tmp_path, torch.bfloat16)
    real, real_header = folders.copied_tensors, folders.read_header
    read: list[str] = []
    headers: list[str] = []

    def watched(file: Path, runs: list[list[str]], dtype: torch.dtype, window: int):
        for key, tensor in real(file, runs, dtype, window):
            read.append(key)
            yield key, tensor

    monkeypatch.setattr(folders, "copied_tensors", watched)
    monkeypatch.setattr(folders, "read_header", lambda handle: headers.append(handle.name) or real_header(handle))
    monkeypatch.setattr(folders, "MAP_WINDOW_BYTES", 16 << 10)  # several windows a shard
    model = load_model(folder)
    assert sorted(read) == sorted(name for name, _ in model.named_parameters())
    assert sorted(headers) == sorted(str(folder / shard) for shard in shard_keys(folder))


def test_after_window_runs_for_each_map_window_of_new_weights(make_tiny_llama, monkeypatch) -> None:
    """The emulator converts what arrived after each window, so at most one window of bf16 weights is ever waiting
    for conversion, however large the shard (a tensor larger than the window arrives alone)."""
    from neuronforge.hf import folders

    folder = make_tiny_llama("one-file", tie_word_embeddings=False)  # one ~270 KB model.safetensors
    window = 32 << 10
    monkeypatch.setattr(folders, "MAP_WINDOW_BYTES", window)
    loaded: list[int] = []
    model = load_model(
        folder,
        after_window=lambda m: loaded.append(
            sum(p.numel() * p.element_size() for p in m.parameters() if not p.is_meta)
        ),
    )
    sizes = {p.numel() * p.element_size() for p in model.parameters()}
    arrived = [after - before for before, after in zip([0, *loaded], loaded, strict=False)]
    assert len(shard_keys(folder)) == 1 and len(arrived) > 5
    assert all(0 < size <= window or size in sizes for size in arrived)
    assert sum(arrived) == sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_tensor_larger_than_the_window_is_never_mapped_whole(
    make_tiny_llama, tmp_path: Path, monkeypatch, dtype: torch.dtype
) -> None:
    """A vocabulary-sized head is larger than any window. Copied from one map, every page of it would be resident on
    top of its copy (0.2 GB at 1.2e9 parameters); it is read a window of rows at a time, each through its own map."""
    from testkit.memory import mapped_rss
    from torch.overrides import TorchFunctionMode

    from neuronforge.hf import folders

    folder = make_tiny_llama(f"big-head-{dtype}", dtype=dtype, tie_word_embeddings=False, vocab_size=1 << 17)
    (file,) = (folder / shard for shard in shard_keys(folder))
    window = 1 << 20  # lm_head: 131072 x 64, 16 MiB in bf16, 32 MiB in fp32
    monkeypatch.setattr(folders, "MAP_WINDOW_BYTES", window)
    resident: list[int] = []

    class AfterEachCopy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.Tensor.to, torch.Tensor.__setitem__, torch.Tensor.copy_):
                resident.append(mapped_rss(file))
            return out

    with AfterEachCopy():
        model = load_model(folder)
    head = load_file(file)["lm_head.weight"]
    assert head.nbytes >= 4 * window and torch.equal(model.lm_head.weight, head.to(torch.bfloat16))
    # A page fault maps the whole page-cache folio it falls in (up to 2 MiB) and its neighbours: up to that much more
    # either side of a block
    assert 0 < max(resident) <= window + 2 * (2 << 20)


def test_no_page_of_a_shard_stays_mapped_once_it_is_loaded(make_tiny_llama, tmp_path: Path) -> None:
    """When `after_window` runs (the emulator converts the window's Linears then), nothing read from any shard is
    still mapped: a tensor left alive from the last window would keep it resident on top of the conversion."""
    from testkit.memory import mapped_rss

    folder = _sharded(make_tiny_llama, tmp_path, torch.bfloat16)
    shards = [folder / name for name in shard_keys(folder)]
    resident: list[int] = []
    load_model(folder, after_window=lambda model: resident.append(sum(mapped_rss(shard) for shard in shards)))
    assert len(resident) >= len(shards) > 2 and set(resident) == {0}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_value_anywhere_is_named(dtype: torch.dtype, bad: float) -> None:
    """The load's check looks at the extremes only; one NaN or inf in a large matrix still shows in them."""
    weight = torch.randn(1000, 333).to(dtype)
    assert finite(Path("m.safetensors"), "w", weight) is weight
    assert finite(Path("m.safetensors"), "e", weight[:0]).numel() == 0  # (aminmax refuses an empty tensor)
    weight[517, 200] = bad
    with pytest.raises(NeuronforgeError, match="m.safetensors: weight w holds NaN or infinite"):
        finite(Path("m.safetensors"), "w", weight)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_reload_weights_puts_back_what_load_model_read_and_names_what_is_missing(
    make_tiny_llama, tmp_path: Path, dtype: torch.dtype
) -> None:
    """Stage 1 ships RTN after all when its tuning lost: the tuned weights go back to the source's, from any shard."""
    src = _sharded(make_tiny_llama, tmp_path, dtype)
    model, loaded = load_model(src), load_model(src)
    keys = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "lm_head.weight"]
    assert len({shard for shard, names in shard_keys(src).items() for key in keys if key in names}) > 1
    untouched = model.get_parameter("model.layers.0.mlp.up_proj.weight").detach().clone()
    for key in [*keys, "model.layers.0.mlp.up_proj.weight"]:
        model.get_parameter(key).data.mul_(1.5)
    reload_weights(src, model, keys)
    for key in keys:
        assert torch.equal(model.get_parameter(key), loaded.get_parameter(key)), key
        assert model.get_parameter(key).dtype == torch.bfloat16
    assert torch.equal(model.get_parameter("model.layers.0.mlp.up_proj.weight"), untouched * 1.5)  # not asked for
    with pytest.raises(NeuronforgeError, match=r"lacks the weights \['model.layers.9.mlp.up_proj.weight'\]"):
        reload_weights(src, model, ["model.layers.9.mlp.up_proj.weight"])
