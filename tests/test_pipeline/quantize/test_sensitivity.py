"""Per-block sensitivity on the tiny Llama: blocks, forced lm_head, and scores that react to real damage."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from neuronforge.assets.texts import calibration_samples, embedded_splits
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import load_model, load_tokenizer
from neuronforge.neuron.numerics.grid import dequantize, quantize_weight
from neuronforge.pipeline.quantize.sensitivity import (
    analyze,
    calibration_batches,
    find_blocks,
    first_order_scores,
    variance_scores,
)

BLOCKS = ["layers.0.self_attn", "layers.0.mlp", "layers.1.self_attn", "layers.1.mlp"]


@pytest.fixture(scope="module")
def samples(tiny_llama_dir: Path) -> list[torch.Tensor]:
    return calibration_samples(load_tokenizer(tiny_llama_dir), embedded_splits().calibration, 4, 32)


def _model_with_zero_block(path: Path, block: str) -> torch.nn.Module:
    """Zero one block's Linears: quantizing zeros is exact, so that block must score exactly 0."""
    model = load_model(path)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and f"{block}." in f"{name.removeprefix('model.')}.":
                module.weight.zero_()
    return model


def test_blocks_of_tied_model(tiny_llama_dir: Path) -> None:
    blocks = find_blocks(load_model(tiny_llama_dir))
    assert [b.name for b in blocks] == [*BLOCKS, "lm_head"]
    assert [b.name for b in blocks if b.forced] == ["lm_head"]
    mlp = blocks[1]
    assert mlp.linears == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    assert (mlp.weights, mlp.rows) == (3 * 64 * 128, 128 + 128 + 64)


def test_untied_lm_head_is_scored(make_tiny_llama, samples: list[torch.Tensor]) -> None:
    model = load_model(make_tiny_llama("untied", tie_word_embeddings=False))
    result = analyze(model, samples, "int8", "first_order")
    assert not any(b.forced for b in result.blocks)
    assert set(result.scores) == {*BLOCKS, "lm_head"}


def test_model_without_linear_layers_is_refused() -> None:
    with pytest.raises(NeuronforgeError, match="no Linear layers"):
        find_blocks(torch.nn.Sequential(torch.nn.Embedding(10, 4)))


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_first_order_is_zero_exactly_where_quantization_is_lossless(tiny_llama_dir: Path, samples, dtype: str) -> None:
    model = _model_with_zero_block(tiny_llama_dir, "layers.1.mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = analyze(model, samples, dtype, "first_order")
    assert set(result.scores) == set(BLOCKS)  # tied lm_head is forced, not scored
    assert result.scores["layers.1.mlp"] == 0.0
    assert all(result.scores[b] > 0 for b in BLOCKS if b != "layers.1.mlp")
    # The model is only read: bf16 weights unchanged, no gradients or grad flags left behind.
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert all(v.dtype == torch.bfloat16 and torch.equal(before[k], v) for k, v in model.state_dict().items())


def _whole_model_first_order(path: Path, samples: list[torch.Tensor], dtype: str) -> dict[str, float]:
    """The definition, computed the direct way: one fp32 forward+backward of the whole model per batch."""
    model = load_model(path, dtype=torch.float32)
    blocks = [b for b in find_blocks(model) if not b.forced]
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for name in [n for b in blocks for n in b.linears]:
        linears[name].weight.requires_grad_(True)
    for batch in calibration_batches(samples):
        (model(input_ids=batch, labels=batch).loss * (batch.shape[0] / len(samples))).backward()
    error = {n: m.weight.detach() - dequantize(*quantize_weight(m.weight.detach(), dtype)) for n, m in linears.items()}
    return {b.name: float(sum((linears[n].weight.grad * error[n]).abs().sum() for n in b.linears)) for b in blocks}


@pytest.mark.parametrize("head_rows", [None, 7])  # None: the whole tiny head in one block; 7: many row blocks
@pytest.mark.parametrize("tied", [True, False])
def test_block_by_block_first_order_equals_the_whole_model_gradient(
    make_tiny_llama, samples, tied: bool, head_rows: int | None, monkeypatch
) -> None:
    from neuronforge.pipeline.quantize import sensitivity

    path = make_tiny_llama(f"fo-{tied}", tie_word_embeddings=tied)
    model = load_model(path)
    if head_rows:
        monkeypatch.setattr(sensitivity, "HEAD_BLOCK_ELEMENTS", head_rows * model.config.hidden_size)
    head = model.get_output_embeddings().weight.untyped_storage().data_ptr()
    head_scored: list[bool] = []
    real_score = sensitivity._score

    def score(weights: list, dtype: str) -> float:
        head_scored.extend(w.untyped_storage().data_ptr() == head for w, _ in weights)
        return real_score(weights, dtype)

    monkeypatch.setattr(sensitivity, "_score", score)
    scores = first_order_scores(model, find_blocks(model), samples, "int8", device="cpu")
    expected = _whole_model_first_order(path, samples, "int8")
    assert set(scores) == set(expected) == ({*BLOCKS} if tied else {*BLOCKS, "lm_head"})
    assert any(head_scored) != tied  # a tied (forced, unscored) lm_head gets no weight gradient
    for block, value in expected.items():
        assert scores[block] == pytest.approx(value, rel=1e-5), block


@pytest.mark.parametrize("tied", [True, False])
def test_the_lm_head_is_never_in_fp32_whole(make_tiny_llama, samples, monkeypatch, tied: bool) -> None:
    """The head (vocabulary x hidden: 2.1 GB in fp32 for a 128256-token, 4096-wide head) is used in fp32 row
    blocks, and an untied head's weight gradient is formed and scored a row block at a time: nothing of the
    head's whole shape is ever created in fp32."""
    from testkit.memory import made_shapes

    from neuronforge.pipeline.quantize import sensitivity

    model = load_model(make_tiny_llama(f"fo-head-{tied}", tie_word_embeddings=tied))
    shape = tuple(model.get_output_embeddings().weight.shape)
    monkeypatch.setattr(sensitivity, "HEAD_BLOCK_ELEMENTS", 16 * shape[1])
    with made_shapes(torch.float32) as made:
        first_order_scores(model, find_blocks(model), samples, "int8", device="cpu")
    assert made and shape not in made


def test_first_order_runs_on_a_gpu_as_on_the_cpu(tiny_llama_dir: Path, samples, monkeypatch) -> None:
    """Every line after the first move to the device runs (simulated GPU, tests/testkit/device_sim.py: a tensor
    left on the wrong device fails): same scores as on the CPU, and the model itself never leaves the host."""
    from testkit.device_sim import simulated_gpu

    model = load_model(tiny_llama_dir)
    on_cpu = first_order_scores(model, find_blocks(model), samples, "int8", device="cpu")
    with simulated_gpu(monkeypatch) as gpu:
        on_gpu = first_order_scores(model, find_blocks(model), samples, "int8", device=gpu.device)
    assert gpu.ops_on_device > 1000
    assert on_gpu == pytest.approx(on_cpu, rel=1e-6)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


@pytest.mark.parametrize("method", ["first_order", "measured"])
def test_sensitivity_of_a_model_that_lives_on_the_gpu(tiny_llama_dir: Path, samples, method, monkeypatch) -> None:
    """A caller's model already on the GPU (Python API): the calibration ids go where the model is, and the
    model stays there. (`measured` runs the model in bf16, whose attention kernels differ by device in the last
    bits, as a real GPU's do: the KL figures agree to a few percent.)"""
    from testkit.device_sim import on_device, simulated_gpu

    on_cpu = analyze(load_model(tiny_llama_dir), samples, "int8", method, device="cpu").scores
    with simulated_gpu(monkeypatch) as gpu:
        model = load_model(tiny_llama_dir).to(gpu.device)
        on_gpu = analyze(model, samples, "int8", method, device=gpu.device).scores
        assert all(on_device(p) for p in model.parameters())
    assert on_gpu == pytest.approx(on_cpu, rel=1e-5 if method == "first_order" else 0.1)


def test_scores_are_computed_on_the_gradient_s_device(monkeypatch) -> None:
    """lm_head's bf16 weight stays on the host while its gradient is formed on the accelerator: the rounding error
    must be computed where the gradient is (a CPU tensor times a CUDA one fails). `meta` stands in for the GPU."""
    from neuronforge.neuron.numerics import grid
    from neuronforge.pipeline.quantize.sensitivity import _score

    real, seen = grid.rounding_error, []

    def watched(weight: torch.Tensor, dtype: str) -> torch.Tensor:
        seen.append(weight.device.type)
        return real(weight, dtype)

    monkeypatch.setattr(grid, "rounding_error", watched)
    weight, grad = torch.randn(8, 4).bfloat16(), torch.randn(8, 4, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):  # a meta tensor has no value to sum up at the end
        _score([(weight, grad)], "int8")
    assert seen == ["meta"]


def test_measured_kl_and_rank_correlations(tiny_llama_dir: Path, samples: list[torch.Tensor]) -> None:
    model = _model_with_zero_block(tiny_llama_dir, "layers.0.self_attn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = []
    result = analyze(model, samples, "int8", "measured", step=lambda: steps.append(1))
    assert len(steps) == len(BLOCKS)
    assert result.scores["layers.0.self_attn"] == 0.0
    assert all(result.scores[b] > 0 for b in BLOCKS if b != "layers.0.self_attn")
    # The model is restored after each block's trial quantization.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model.model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert set(result.spearman) == {"first_order", "variance"}
    assert all(-1.0 <= r <= 1.0 for r in result.spearman.values() if not math.isnan(r))
    payload = result.to_json()
    assert payload["spearman_vs_measured"] == result.spearman
    shares = [b["share"] for b in payload["blocks"] if b["share"] is not None]
    assert math.isclose(sum(shares), 1.0)


def test_variance_score_matches_definition(tiny_llama_dir: Path) -> None:
    model = load_model(tiny_llama_dir)
    blocks = find_blocks(model)
    scores = variance_scores(model, blocks)
    attn = model.model.layers[1].self_attn
    expected = (
        sum(m.weight.detach().float().var(dim=1).mean() for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj))
        / 4
    )
    assert scores["layers.1.self_attn"] == pytest.approx(float(expected))


def test_unknown_method_is_refused_by_the_options(tmp_path: Path) -> None:
    """Sensitivity is one Literal, checked where options are built (quantize, evaluate and run alike)."""
    from neuronforge.pipeline.evaluate.api import options_from as evaluate_options
    from neuronforge.pipeline.quantize.api import options_from
    from neuronforge.pipeline.run.config import build_config

    with pytest.raises(NeuronforgeError, match="sensitivity: Input should be 'first_order', 'measured' or 'variance'"):
        options_from(model="m", out=tmp_path, sensitivity="hessian")
    with pytest.raises(NeuronforgeError, match="sensitivity: Input should be"):
        evaluate_options(out=tmp_path, sensitivity="hessian")
    with pytest.raises(NeuronforgeError, match="sensitivity: Input should be"):
        build_config({"sensitivity": "hessian"}, {})


def test_first_order_scores_a_bounded_number_of_tokens(tiny_llama_dir: Path, samples, monkeypatch, capsys) -> None:
    """Its host memory grows with the tokens it scores (every layer's inputs are kept for the backward pass):
    a large AutoRound budget is cut to FIRST_ORDER_MAX_TOKENS for it, and it says so."""
    from neuronforge.core import presets

    model = load_model(tiny_llama_dir)
    first_two = first_order_scores(model, find_blocks(model), samples[:2], "int8", device="cpu")
    monkeypatch.setattr(presets, "FIRST_ORDER_MAX_TOKENS", 2 * samples[0].shape[-1])
    assert first_order_scores(model, find_blocks(model), samples, "int8", device="cpu") == first_two
    assert "scores 2 of the 4 calibration windows" in " ".join(capsys.readouterr().err.split())
