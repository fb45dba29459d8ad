"""The emulator: exact when quantization is off, NeuronQuantLinear weights, NxDI's fp8 KV cache and skip rules,
shard-by-shard loading and device selection."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import load_model
from neuronforge.neuron.numerics.emulate import (
    EmulationSpec,
    emulate,
    load_emulated,
    perplexity,
    perplexity_from_logits,
    perplexity_report,
)
from neuronforge.neuron.numerics.grid import quantize_weight
from neuronforge.neuron.numerics.kv_cache import fp8_roundtrip
from neuronforge.neuron.numerics.qlinear import Bf16Linear, Fp32Gemm, NeuronQuantLinear

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")


def tokens(n: int = 2, seq: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 512, (n, seq), generator=torch.Generator().manual_seed(seed))


def dequantized_reference(folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """Independent int8 reference: every Llama Linear's weight replaced by torch's own per-channel qint8
    dequantization (torch.quantize_per_channel, scale amax/127), then a plain HF forward."""
    model = load_model(folder, dtype=dtype)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rpartition(".")[2].endswith("proj") or name == "lm_head":
                w = module.weight.float()
                scale = torch.clamp(w.abs().amax(dim=1) / 127.0, min=torch.finfo(torch.float32).eps).double()
                q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
                module.weight.copy_(q.dequantize().to(dtype))
    return model


def decode_loop_logits(model: torch.nn.Module, ids: torch.Tensor, prefill_len: int, kv_fp8: bool) -> torch.Tensor:
    """An explicit device-style run with a plain (sdpa) model: prefill, then one token per step, the
    cache's stored K/V pushed through fp8 before each step reads them."""
    rows = []
    for row in ids:
        cache = DynamicCache(config=model.config)
        step = [model(row[None, :prefill_len], past_key_values=cache, use_cache=True).logits.float()]
        for t in range(prefill_len, ids.shape[1]):
            if kv_fp8:
                for layer in cache.layers:
                    layer.keys, layer.values = fp8_roundtrip(layer.keys), fp8_roundtrip(layer.values)
            step.append(model(row[None, t : t + 1], past_key_values=cache, use_cache=True).logits.float())
        rows.append(torch.cat(step, dim=1))
    return torch.cat(rows)


@torch.inference_mode()
def test_quantization_off_is_exactly_hf(tiny_llama_dir: Path) -> None:
    ids = tokens()
    expected = load_model(tiny_llama_dir)(ids).logits.float()
    emulated = load_emulated(tiny_llama_dir, EmulationSpec(fast_bf16=False))
    assert emulated.converted == []
    assert torch.equal(emulated.logits(ids), expected)
    assert emulated.kv_risk.total == 0
    # fast_bf16: fp32 GEMMs on the same bf16 operands, one bf16 rounding: only summation order differs.
    fast = load_emulated(tiny_llama_dir, EmulationSpec(fast_bf16=True))
    assert sum(isinstance(m, Bf16Linear) for m in fast.model.modules()) == 15
    exact32 = load_model(tiny_llama_dir, dtype=torch.float32)(ids).logits.float()
    noise = (expected - exact32).abs()
    error = (fast.logits(ids) - exact32).abs()
    assert error.mean() <= 1.5 * noise.mean() and error.max() <= 2 * noise.max()


@torch.inference_mode()
def test_int8_matches_dequantized_reference(tiny_llama_dir: Path) -> None:
    ids = tokens()
    got, plain = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(tiny_llama_dir, dtype=dtype)
        embedding = model.get_input_embeddings().weight.detach().clone()
        plain[dtype] = model(ids).logits.float()
        emulated = emulate(model, EmulationSpec(dtype="int8", fast_bf16=False))
        got[dtype] = emulated.logits(ids)
        assert len(emulated.converted) == 15 and isinstance(model.lm_head, NeuronQuantLinear)
        assert torch.equal(model.get_input_embeddings().weight, embedding)  # untied: the embedding is not quantized
    ref32 = dequantized_reference(tiny_llama_dir, torch.float32)(ids).logits.float()
    ref16 = dequantized_reference(tiny_llama_dir, torch.bfloat16)(ids).logits.float()
    # fp32 activations: scaling the matmul output equals dequantize-then-matmul up to fp32 rounding,
    # and both are far from the unquantized model.
    error32 = (got[torch.float32] - ref32).abs().max()
    assert error32 <= 2e-4
    assert (plain[torch.float32] - ref32).abs().max() > 100 * error32
    # bf16 (what Neuron computes in): within the reference's own bf16 noise.
    noise = (ref16 - ref32).abs()
    error16 = (got[torch.bfloat16] - ref32).abs()
    assert error16.mean() <= 2 * noise.mean() and error16.max() <= 2 * noise.max()


@torch.inference_mode()
# bf16: the emulator rounds decode attention scores as NxDI does (bf16 Q@K^T, bf16 probabilities), HF's decode loop
# as sdpa does; test_emulate_tp.py checks the former against a transcription of NxDI's code.
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-4), (torch.bfloat16, 0.08)])
def test_fp8_kv_only_affects_decode_positions_and_matches_decode_loop(
    make_tiny_llama: Callable[..., Path], dtype: torch.dtype, atol: float
) -> None:
    folder = make_tiny_llama("tinykv", seed=3)
    ids, prefill = tokens(seq=28, seed=1), 11
    plain_model = load_model(folder, dtype=dtype)
    plain = plain_model(ids).logits.float()
    fp8_loop = decode_loop_logits(plain_model, ids, prefill, kv_fp8=True)
    bf16_loop = decode_loop_logits(plain_model, ids, prefill, kv_fp8=False)

    emulated = emulate(load_model(folder, dtype=dtype), EmulationSpec(kv="fp8", fast_bf16=False))
    got = emulated.logits(ids, prefill_len=prefill)
    assert torch.equal(got[:, :prefill], plain[:, :prefill])  # context encoding attends over fresh K/V
    effect = (got[:, prefill:] - plain[:, prefill:]).abs().amax(dim=-1)
    assert torch.all(effect > 0)  # every decode position reads fp8 K/V
    assert (got[:, prefill:] - fp8_loop[:, prefill:]).abs().max() <= atol
    if dtype == torch.float32:  # without bf16 noise, the fp8 effect dwarfs the one-pass vs loop difference
        assert (bf16_loop - fp8_loop).abs().max() > 100 * (got - fp8_loop).abs().max()
    assert emulated.kv_risk.total == 2 * 2 * ids.numel() * 2 * 16  # K and V, 2 layers, 2 kv heads, head_dim 16
    assert emulated.kv_risk.over == 0
    assert emulated.logits(ids).shape == plain.shape  # default prefill_len = s // 2


@torch.inference_mode()
def test_generate_matches_explicit_greedy_loop(make_tiny_llama: Callable[..., Path]) -> None:
    folder = make_tiny_llama("tinygen", seed=5)
    prompt, new = tokens(n=1, seq=9, seed=2), 12
    model = load_model(folder, dtype=torch.float32)
    model.generation_config.eos_token_id = None
    cache, sequence, step = DynamicCache(config=model.config), prompt, prompt
    for _ in range(new):
        step = model(step, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, step], dim=1)
        for layer in cache.layers:  # the cache stores fp8; the next step reads it back
            layer.keys, layer.values = fp8_roundtrip(layer.keys), fp8_roundtrip(layer.values)
    emulated = emulate(load_model(folder, dtype=torch.float32), EmulationSpec(kv="fp8", fast_bf16=False))
    emulated.model.generation_config.eos_token_id = None
    out = emulated.generate(prompt, new)
    assert out.shape == (1, 9 + new)
    assert torch.equal(out, sequence)
    assert emulated.kv_risk.total == 2 * 2 * (9 + new - 1) * 2 * 16  # every token written once, the last never fed back


@torch.inference_mode()
def test_generate_stops_at_eos(tiny_llama_dir: Path) -> None:
    emulated = load_emulated(tiny_llama_dir, EmulationSpec(dtype="int8", kv="fp8", fast_bf16=False))
    prompt = tokens(n=1, seq=5)
    first = int(emulated.generate(prompt, 1)[0, -1])
    emulated.model.generation_config.eos_token_id = first
    assert emulated.generate(prompt, 10).shape == (1, 6)


@torch.inference_mode()
def test_kv_risk_counts_values_beyond_240(make_tiny_llama: Callable[..., Path]) -> None:
    folder = make_tiny_llama("tinyrisk", seed=1)
    model = load_model(folder)
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight.mul_(400.0)
    emulated = emulate(model, EmulationSpec(kv="fp8", fast_bf16=False))
    emulated.logits(tokens())
    assert 0 < emulated.kv_risk.over < emulated.kv_risk.total
    assert emulated.kv_risk.max_abs > 240
    assert "exceed" in emulated.kv_risk.describe() and "undefined" in emulated.kv_risk.describe()


@torch.inference_mode()
def test_not_convert_follows_nxdi_runtime_rules(make_tiny_llama: Callable[..., Path]) -> None:
    folder = make_tiny_llama("tiny12e", num_hidden_layers=12, hidden_size=32, intermediate_size=32)
    original = {
        n: m.weight.detach().clone() for n, m in load_model(folder).named_modules() if isinstance(m, torch.nn.Linear)
    }

    def kept(entries: tuple[str, ...]) -> set[str]:
        model = load_model(folder)
        emulate(model, EmulationSpec(dtype="int8", modules_to_not_convert=entries, fast_bf16=False))
        names = set()
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                assert torch.equal(module.weight, original[name])  # bit-identical bf16 Linear
                names.add(name)
            else:
                assert not (name in original and not isinstance(module, NeuronQuantLinear))
        return names

    attn = {f"model.layers.1.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert kept(("layers.1.self_attn", "lm_head")) == attn | {"lm_head"}
    # "layers.1" is a substring of layers.10 and layers.11 too
    assert {n.split(".")[2] for n in kept(("layers.1",))} == {"1", "10", "11"}
    # exact local-name match: NxDI's o_proj lives at ...o_proj.o_proj, its local name is "o_proj"
    assert kept(("o_proj",)) == {f"model.layers.{i}.self_attn.o_proj" for i in range(12)}
    # full HF names never match NxDI's paths (q_proj lives under qkv_proj): the device quantizes it anyway
    assert kept(("model.layers.0.self_attn.q_proj",)) == set()


SPECS = {
    "int8": EmulationSpec(dtype="int8", kv="fp8", modules_to_not_convert=("layers.1.mlp",)),
    "int8 tp2": EmulationSpec(dtype="int8", modules_to_not_convert=("lm_head",), tp_degree=2),
    "f8e4m3": EmulationSpec(dtype="f8e4m3"),  # (keeps the biased blocks bf16: NxD's fp8 quantizer drops biases)
}


@torch.inference_mode()
@pytest.mark.parametrize("by_rows", [False, True], ids=["windows", "rows"])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_shard_by_shard_load_gives_the_whole_model_conversion(
    make_tiny_llama: Callable[..., Path], tmp_path, monkeypatch, spec: EmulationSpec, by_rows: bool
) -> None:
    """Converted a map window at a time, or (weights larger than a window) quantized from the file a block of rows at
    a time, the model is the one converted whole: same codes, scales, biases and logits. (Its untied embedding is
    read from the file per call: the only weight it does not hold.)"""
    from testkit.checkpoints import resharded

    from neuronforge.hf import folders
    from neuronforge.neuron.numerics import emulate as emulate_module

    src = make_tiny_llama("emu-shards", tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    sharded = resharded(src, tmp_path / "sharded")
    if by_rows:  # every Linear but q/o_proj (64 x 64, 8 KiB) larger than a window, read 4 KiB at a time
        monkeypatch.setattr(folders, "MAP_WINDOW_BYTES", 8 << 10)
        monkeypatch.setattr(emulate_module, "QUANTIZE_BLOCK_BYTES", 4 << 10)
    streamed = load_emulated(sharded, spec)
    whole = emulate(load_model(src), spec)
    assert streamed.converted == whole.converted and streamed.converted
    # fp8 keeps every biased block bf16 (NxD's fp8 quantizer drops Linear biases: hf/families.py)
    assert ("model.layers.0.mlp.down_proj" in streamed.converted) == (spec.dtype == "int8")
    mine, theirs = streamed.model.state_dict(), whole.model.state_dict()
    assert mine.keys() == theirs.keys() - {"model.embed_tokens.weight"}
    assert spec.dtype != "int8" or any(name.endswith("proj.bias") for name in mine)
    assert all(torch.equal(buffer, theirs[name]) for name, buffer in mine.items())
    assert torch.equal(streamed.logits(tokens()), whole.logits(tokens()))


@torch.inference_mode()
@pytest.mark.parametrize("spec", [EmulationSpec(dtype="int8", kv="fp8"), EmulationSpec()], ids=["int8", "bf16"])
def test_an_untied_embedding_stays_in_its_file(make_tiny_llama: Callable[..., Path], spec: EmulationSpec) -> None:
    """Only gathered from, an untied embedding (0.2 GB at 49152 x 2048) is read a row per token from the file, never
    loaded; the logits are those of the loaded model. A tied one is the head's weight too, and is loaded."""
    from neuronforge.hf.file_embedding import FileEmbedding

    folder = make_tiny_llama("emu-untied", tie_word_embeddings=False)
    streamed, whole = load_emulated(folder, spec), emulate(load_model(folder), spec)
    embedding = streamed.model.get_input_embeddings()
    assert isinstance(embedding, FileEmbedding)
    loaded = whole.model.get_input_embeddings().weight
    held = [*streamed.model.parameters(), *streamed.model.buffers()]
    assert not any(t.shape == loaded.shape and torch.equal(t, loaded) for t in held)
    assert torch.equal(streamed.logits(tokens()), whole.logits(tokens()))
    tied = load_emulated(make_tiny_llama("emu-tied"), spec).model
    assert type(tied.get_input_embeddings()) is torch.nn.Embedding


def test_a_checkpoint_missing_a_shard_is_a_clear_error(make_tiny_llama: Callable[..., Path], tmp_path) -> None:
    """The row-block reads are planned from the shards' headers before the load: a shard the index names but the
    folder lacks is the loader's clear error, not a KeyError."""
    from testkit.checkpoints import resharded

    folder = resharded(make_tiny_llama("emu-lost-shard", tie_word_embeddings=False), tmp_path / "sharded")
    sorted(folder.glob("model-*.safetensors"))[1].unlink()
    with pytest.raises(NeuronforgeError, match="which is not in the folder"):
        load_emulated(folder, EmulationSpec(dtype="int8"))


@torch.inference_mode()
def test_a_weight_larger_than_a_window_is_never_whole_in_bf16(
    make_tiny_llama: Callable[..., Path], monkeypatch
) -> None:
    """A weight larger than a map window (a vocabulary-sized lm_head: 0.2 GB in bf16 at 49152 x 2048) is quantized
    from the file a block of rows at a time: it is never copied whole, only its codes are whole."""
    from neuronforge.hf import folders
    from neuronforge.neuron.numerics import emulate as emulate_module

    # gate/up/down are 128 KiB in bf16, every other weight 64 KiB or less
    folder = make_tiny_llama("emu-wide-mlp", intermediate_size=1024)
    monkeypatch.setattr(folders, "MAP_WINDOW_BYTES", 96 << 10)
    monkeypatch.setattr(emulate_module, "MAP_WINDOW_BYTES", 96 << 10)  # (imported by name there)
    monkeypatch.setattr(emulate_module, "QUANTIZE_BLOCK_BYTES", 16 << 10)
    whole: dict[str, int] = {}
    blocks: dict[str, list[int]] = {}
    copied_tensors, row_blocks = folders.copied_tensors, folders.row_blocks

    def watched_copies(*args):
        for key, tensor in copied_tensors(*args):
            whole[key] = tensor.nbytes
            yield key, tensor

    def watched_blocks(file, key, *args):
        for rows, block in row_blocks(file, key, *args):
            blocks.setdefault(key, []).append(block.nbytes)
            yield rows, block

    monkeypatch.setattr(folders, "copied_tensors", watched_copies)
    monkeypatch.setattr(folders, "row_blocks", watched_blocks)
    monkeypatch.setattr(emulate_module, "row_blocks", watched_blocks)  # (imported by name there)
    emulated = load_emulated(folder, EmulationSpec(dtype="int8"))
    mlp = {f"model.layers.{i}.mlp.{proj}.weight" for i in range(2) for proj in ("gate_proj", "up_proj", "down_proj")}
    assert set(blocks) == mlp and not mlp & set(whole) and max(whole.values()) <= 96 << 10
    assert all(len(sizes) == 8 and max(sizes) == 16 << 10 for sizes in blocks.values())
    assert isinstance(emulated.model.get_submodule("model.layers.1.mlp.down_proj"), NeuronQuantLinear)


@torch.inference_mode()
def test_fp32_weight_copies_are_kept_only_within_the_budget(tiny_llama_dir: Path, monkeypatch) -> None:
    spec = EmulationSpec(dtype="int8", modules_to_not_convert=("layers.0.mlp",))
    kept = load_emulated(tiny_llama_dir, spec)
    expected = kept.logits(tokens())
    layers = [m for m in kept.model.modules() if isinstance(m, Fp32Gemm)]
    assert {type(m) for m in layers} == {NeuronQuantLinear, Bf16Linear} and all(m._fp32 is not None for m in layers)
    monkeypatch.setattr("neuronforge.neuron.numerics.emulate.FP32_COPY_BUDGET", 0)  # as for a model too large to copy
    per_call = load_emulated(tiny_llama_dir, spec)
    assert torch.equal(per_call.logits(tokens()), expected)  # same numbers
    assert all(m._fp32 is None for m in per_call.model.modules() if isinstance(m, Fp32Gemm))  # nothing kept
    kept.operands_per_call()  # (a model scored a few times beside another: stage 1's AutoRound-vs-RTN check)
    assert all(m._fp32 is None for m in layers)
    assert torch.equal(kept.logits(tokens()), expected) and all(m._fp32 is None for m in layers)


LAYERS: dict[str, Callable[[torch.nn.Linear], Fp32Gemm]] = {
    "int8": lambda linear: NeuronQuantLinear.from_linear(linear, "int8"),
    "f8e4m3": lambda linear: NeuronQuantLinear.from_linear(linear, "f8e4m3"),
    "int8 per tensor": lambda linear: NeuronQuantLinear.from_linear(linear, "int8", "per_tensor_symmetric"),
    "int8 row-parallel": lambda linear: NeuronQuantLinear.from_linear(linear, "int8", tp_degree=2),
    "bf16": Bf16Linear,
    "bf16 row-parallel": lambda linear: Bf16Linear(linear, tp_degree=2),
}


@pytest.mark.parametrize("kind", LAYERS)
@torch.inference_mode()
def test_a_gemm_runs_a_block_of_output_features_at_a_time(kind: str, monkeypatch) -> None:
    """A vocabulary-sized head in fp32 is 0.4 GB at 49152 x 2048, and so are its logits for 2048 tokens: with
    operands made per call, each step makes only a block of either. Every output feature is its own dot product,
    so the blocks give the numbers of one GEMM."""
    from testkit.memory import made_shapes

    from neuronforge.neuron.numerics import qlinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 300, dtype=torch.bfloat16)  # int8 keeps the bias; fp8 drops it, as NxD does
    x = torch.randn(2, 7, 64).to(torch.bfloat16)
    layer = LAYERS[kind](linear)
    whole = layer(x)
    layer.keep_fp32, layer._fp32 = False, None
    monkeypatch.setattr(qlinear, "GEMM_BLOCK_BYTES", 4 * 64 * 32)  # 32 output features a block
    with made_shapes(torch.float32) as made:
        blocked = layer(x)
    assert torch.equal(blocked, whole) and blocked.dtype == torch.bfloat16
    assert (32, 64) in made and (300, 64) not in made and (2, 7, 300) not in made  # blocks of operand and output


@torch.inference_mode()
@pytest.mark.parametrize("spec", [EmulationSpec(dtype="int8", kv="fp8"), EmulationSpec()], ids=["int8", "bf16"])
def test_perplexity_never_holds_a_batch_of_logits(tiny_llama_dir: Path, monkeypatch, spec: EmulationSpec) -> None:
    """A batch's logits are vocabulary-sized (4 x 256 tokens: 0.1 GB in bf16 at SmolLM2's 49k, 0.26 GB at Llama 3's
    128k): perplexity runs the head on a block of one window's positions at a time, bf16 and fp32 alike, and gets
    the numbers of the whole batch's logits."""
    from testkit.memory import made_shapes

    from neuronforge.neuron.numerics import emulate as emulate_module

    monkeypatch.setattr(emulate_module, "NLL_BLOCK_BYTES", 4 * 512 * 5)  # 5 positions of 512 logits a block
    emulated = load_emulated(tiny_llama_dir, spec)
    windows = tokens(n=4, seq=16)
    with made_shapes(torch.float32, torch.bfloat16) as made:
        got = perplexity(emulated, windows, batch_size=4)
    assert got == perplexity_from_logits(emulated.logits(windows), windows)
    vocabulary_wide = {shape for shape in made if shape and shape[-1] == 512}  # (and [1, 512] int8 scales)
    assert vocabulary_wide and all(len(shape) == 2 and shape[0] <= 5 for shape in vocabulary_wide)


@pytest.mark.parametrize("tied", [True, False])
def test_emulation_on_a_gpu_computes_what_the_cpu_computes(make_tiny_llama, tied: bool, monkeypatch) -> None:
    """`--device auto` on a (simulated) GPU: the whole model, an untied embedding read from its file included,
    runs there (a tensor left on the host fails), with the CPU's logits, perplexity and greedy tokens."""
    from testkit.device_sim import simulated_gpu

    folder = make_tiny_llama(f"emulate-gpu-{tied}", tie_word_embeddings=tied)
    spec = EmulationSpec(dtype="int8", kv="fp8")
    windows, prompt = tokens(), tokens(n=1, seq=6)
    on_cpu = load_emulated(folder, spec, device="cpu")
    assert on_cpu.device.type == "cpu"
    expected = (on_cpu.logits(windows), perplexity(on_cpu, windows), on_cpu.generate(prompt, 4))
    with simulated_gpu(monkeypatch) as gpu:
        on_gpu = load_emulated(folder, spec)
        assert on_gpu.device == gpu.device
        got = (on_gpu.logits(windows), perplexity(on_gpu, windows), on_gpu.generate(prompt, 4))
    assert torch.allclose(got[0], expected[0], atol=0.05)  # bf16 attention kernels differ by device in the last bits
    assert got[1] == pytest.approx(expected[1], rel=1e-3)
    assert got[0].device.type == "cpu" and got[2].device.type == "cpu"


def test_bad_spec_is_a_clear_error(tiny_llama_dir: Path) -> None:
    """The spec validates itself on construction: no caller has to remember a validate() call."""
    with pytest.raises(NeuronforgeError, match="weight dtype"):
        EmulationSpec(dtype="int4")  # type: ignore[arg-type]
    with pytest.raises(NeuronforgeError, match="quantization type"):
        EmulationSpec(dtype="int8", qtype="blockwise")  # type: ignore[arg-type]
    with pytest.raises(NeuronforgeError, match="per_tensor_symmetric ignores"):
        EmulationSpec(dtype="int8", qtype="per_tensor_symmetric", modules_to_not_convert=("lm_head",))
    emulated = load_emulated(tiny_llama_dir, EmulationSpec(kv="fp8", fast_bf16=False))
    with pytest.raises(NeuronforgeError, match="prefill_len"):
        emulated.logits(tokens(), prefill_len=0)
    with pytest.raises(NeuronforgeError, match="one non-empty prompt"):
        emulated.generate(tokens(n=2), 3)
    with pytest.raises(NeuronforgeError, match="windows"):
        perplexity(emulated, torch.zeros(3, 1, dtype=torch.long))


@torch.inference_mode()
def test_perplexity_is_exp_mean_nll(tiny_llama_dir: Path) -> None:
    windows = tokens(n=5, seq=16)
    emulated = load_emulated(tiny_llama_dir, EmulationSpec(fast_bf16=False))
    logits = load_model(tiny_llama_dir)(windows).logits.float()[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), windows[:, 1:].reshape(-1))
    assert perplexity(emulated, windows, batch_size=2) == pytest.approx(math.exp(float(nll)), rel=1e-5)
    # One implementation: batching aside, it is the from-logits perplexity evaluate uses.
    assert perplexity(emulated, windows, batch_size=5) == perplexity_from_logits(emulated.logits(windows), windows)


@torch.inference_mode()
def test_the_report_from_logits_is_the_report_from_a_forward_pass(tiny_llama_dir: Path) -> None:
    """Evaluate passes the logits it holds for the KL; `emulate` and the run stage run the forward pass. One
    function builds both reports, and they are the same numbers, KV-cache risk included."""
    spec = EmulationSpec(dtype="int8", kv="fp8")
    windows = {"a": tokens(n=3, seq=16), "b": tokens(n=2, seq=12)}
    forward = perplexity_report(load_emulated(tiny_llama_dir, spec), windows)
    emulated = load_emulated(tiny_llama_dir, spec)
    from_logits = perplexity_report(
        emulated, windows, logits={t: emulated.device_logits(w) for t, w in windows.items()}
    )
    assert from_logits == forward and forward.kv_risk is not None and forward.tokens == {"a": 48, "b": 24}


@pytest.mark.slow
def test_smollm2_quantized_perplexity_close_to_bf16(smollm2_dir: Path) -> None:
    from neuronforge.assets.texts import embedded_splits, evaluation_windows
    from neuronforge.hf.folders import load_tokenizer

    tokenizer = load_tokenizer(smollm2_dir)
    windows = evaluation_windows(
        tokenizer, embedded_splits(("britannica",)).evaluation["britannica"], 256, max_tokens=512
    )
    assert windows.shape == (2, 256)
    ppl = {}
    base = load_model(smollm2_dir)
    for name, spec in {
        "bf16": EmulationSpec(fast_bf16=True),
        "int8": EmulationSpec(dtype="int8", kv="fp8", fast_bf16=True),
        "f8e4m3": EmulationSpec(dtype="f8e4m3", kv="fp8", fast_bf16=True),
    }.items():
        emulated = emulate(copy.deepcopy(base), spec)
        ppl[name] = perplexity(emulated, windows)
        if name == "int8":
            prompt = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
            text = tokenizer.decode(emulated.generate(prompt, 8)[0, prompt.shape[1] :], skip_special_tokens=True)
            assert text.strip()
    assert 1.0 < ppl["bf16"] < 100.0
    assert ppl["int8"] / ppl["bf16"] < 1.03, ppl
    assert ppl["f8e4m3"] / ppl["bf16"] < 1.05, ppl


def test_emulate_cli(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from neuronforge.assets.texts import load_embedded_text
    from neuronforge.cli import app

    text = tmp_path / "doc.txt"
    text.write_text(load_embedded_text("verne")[:20000])
    skip = tmp_path / "skip.json"
    skip.write_text('{"modules_to_not_convert": ["lm_head", "layers.0.mlp"]}')
    runner = CliRunner()
    args = [
        "emulate",
        "--model",
        str(tiny_llama_dir),
        "--text",
        str(text),
        "--eval-tokens",
        "96",
        "--eval-seq-len",
        "32",
        "--max-new-tokens",
        "4",
        "--prompt",
        "The year",
    ]
    result = runner.invoke(app, [*args, "--dtype", "f8e4m3", "--kv", "fp8", "--not-convert", str(skip)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    # 15 Linears minus lm_head and layers.0's gate/up/down
    assert "f8e4m3 per_channel_symmetric weights: 11 of 15 Linears quantized, 4 kept bf16, fp8 e4m3 KV cache" in output
    assert "perplexity doc" in output and "(96 tokens, windows of 32)" in output
    assert "KV risk: 0/" in output and "greedy: The year" in output

    plain = runner.invoke(app, [*args, "--dtype", "none", "--kv", "bf16", "--max-new-tokens", "0"])
    assert plain.exit_code == 0 and "KV risk" not in plain.output and "greedy" not in plain.output

    bad = runner.invoke(app, [*args, "--dtype", "int4"])
    flat = " ".join(bad.output.split())
    assert bad.exit_code == 2 and "'int4' is not one of 'int8', 'f8e4m3'" in flat and "emulate --help" in flat
    skip.write_text('{"modules_to_not_convert": "lm_head"}')
    bad = runner.invoke(app, [*args, "--not-convert", str(skip)])
    assert bad.exit_code == 2 and "list of module names" in " ".join(bad.output.split())


def test_load_emulated_refuses_a_not_convert_name_that_keeps_nothing(tiny_llama_dir: Path) -> None:
    """The check was the emulate command's only: `nf.load_emulated` users got an all-quantized model silently."""
    with pytest.raises(NeuronforgeError, match=r"\['model.layers.0.mlp'\] match no Linear layer"):
        load_emulated(tiny_llama_dir, EmulationSpec(dtype="int8", modules_to_not_convert=("model.layers.0.mlp",)))
    assert load_emulated(tiny_llama_dir, EmulationSpec(modules_to_not_convert=("model.layers.0.mlp",))).converted == []


@torch.inference_mode()
def test_a_layer_given_other_codes_computes_with_them() -> None:
    """Stage 1 scores its tuned model by putting the tuned codes into RTN's emulated model: the kept fp32 operand of
    the old codes must go, or the layer still multiplies by RTN's."""
    linear = torch.nn.Linear(64, 48, bias=False, dtype=torch.bfloat16)  # (codes and scales only: a bias stays)
    other = torch.nn.Linear(64, 48, bias=False, dtype=torch.bfloat16)
    x = torch.randn(3, 64).to(torch.bfloat16)
    layer = NeuronQuantLinear.from_linear(linear, "int8")
    layer(x)  # (keeps the fp32 operand of linear's codes)
    layer.load_codes(*quantize_weight(other.weight, "int8"))
    assert torch.equal(layer(x), NeuronQuantLinear.from_linear(other, "int8")(x))
    with pytest.raises(ValueError, match="do not replace"):
        layer.load_codes(*quantize_weight(other.weight[:8], "int8"))
