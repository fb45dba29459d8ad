"""Selection of the blocks kept in bf16: the budget is never exceeded, forced blocks are always kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.planner.plan import deployment_from, instance_budget, load_model_shape, plan_row
from neuronforge.pipeline.quantize.selection import extra_bytes, quantized_bytes, select
from neuronforge.pipeline.quantize.sensitivity import Block

CONFIGS = Path(__file__).parents[2] / "fixtures" / "configs"


@st.composite
def scored_blocks(draw: st.DrawFn) -> tuple[list[Block], dict[str, float]]:
    n = draw(st.integers(1, 12))
    blocks, scores = [], {}
    for i in range(n):
        rows = draw(st.integers(1, 64))
        block = Block(f"layers.{i // 2}.{'mlp' if i % 2 else 'self_attn'}", [], rows * draw(st.integers(8, 512)), rows)
        blocks.append(block)
        scores[block.name] = draw(st.floats(0.0, 1e3))
    if draw(st.booleans()):
        blocks.append(Block("lm_head", ["lm_head"], 4096, 64, forced=True))
    return blocks, scores


@settings(max_examples=300, deadline=None)
@given(scored_blocks(), st.floats(0.0, 2.0))
def test_budget_is_respected_and_filled_greedily(case: tuple[list[Block], dict[str, float]], fraction: float) -> None:
    blocks, scores = case
    choice = select(blocks, scores, "budget", max_extra_memory=fraction)
    choosable = [b for b in blocks if not b.forced]
    budget = int(fraction * sum(quantized_bytes(b) for b in choosable))
    assert choice.budget_bytes == budget
    assert choice.extra_bytes == sum(extra_bytes(b) for b in choosable if b.name in choice.kept) <= budget
    assert all(b.name in choice.kept for b in blocks if b.forced)
    # Nothing useful was left out that would still have fit.
    for block in choosable:
        if block.name not in choice.kept and scores[block.name] > 0:
            assert choice.extra_bytes + extra_bytes(block) > budget


def _blocks() -> tuple[list[Block], dict[str, float]]:
    blocks = [
        Block("layers.0.self_attn", [], 1000, 10),
        Block("layers.0.mlp", [], 3000, 10),
        Block("layers.1.self_attn", [], 1000, 10),
        Block("lm_head", [], 5000, 50, forced=True),
    ]
    return blocks, {"layers.0.self_attn": 5.0, "layers.0.mlp": 9.0, "layers.1.self_attn": 1.0}


def test_budget_prefers_damage_per_byte() -> None:
    blocks, scores = _blocks()
    # 0.6 * (1040 + 3040 + 1040) = 3072 bytes: layers.0.mlp alone would fit (2960 extra bytes), but per byte
    # layers.0.self_attn (5 / 960) beats it (9 / 2960); after that only layers.1.self_attn still fits.
    choice = select(blocks, scores, "budget", max_extra_memory=0.6)
    assert choice.kept == ["layers.0.self_attn", "layers.1.self_attn", "lm_head"]
    assert choice.extra_bytes == 2 * 960


def test_topk_threshold_and_none() -> None:
    blocks, scores = _blocks()
    assert select(blocks, scores, "topk", topk=2).kept == ["layers.0.self_attn", "layers.0.mlp", "lm_head"]
    assert select(blocks, scores, "threshold", threshold=0.5).kept == ["layers.0.mlp", "lm_head"]
    assert select(blocks, scores, "none").kept == ["lm_head"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "budget", "max_extra_memory": -0.1}, "max-extra-memory"),
        ({"rule": "topk"}, "--topk"),
        ({"rule": "threshold", "threshold": 1.5}, "--threshold"),
    ],
)
def test_bad_selection_arguments_fail_clearly(kwargs: dict, message: str) -> None:
    blocks, scores = _blocks()
    with pytest.raises(NeuronforgeError, match=message):
        select(blocks, scores, **kwargs)


def test_missing_score_is_an_error() -> None:
    blocks, scores = _blocks()
    del scores["layers.0.mlp"]
    with pytest.raises(NeuronforgeError, match="no finite sensitivity score"):
        select(blocks, scores)


def _llama3_8b_blocks() -> list[Block]:
    """Llama-3-8B's 65 blocks (32 attention, 32 MLP, lm_head) with their weight and output-row counts."""
    attention = Block("", [], 2 * 4096 * 4096 + 2 * 1024 * 4096, 4096 + 1024 + 1024 + 4096)
    mlp = Block("", [], 3 * 14336 * 4096, 14336 + 14336 + 4096)
    blocks = []
    for i in range(32):
        blocks += [
            Block(f"layers.{i}.self_attn", [], attention.weights, attention.rows),
            Block(f"layers.{i}.mlp", [], mlp.weights, mlp.rows),
        ]
    return [*blocks, Block("lm_head", [], 128256 * 4096, 128256)]


def test_instance_budget_keeps_as_many_blocks_as_still_fit(tmp_path: Path) -> None:
    config = CONFIGS / "llama-3-8b.json"
    (tmp_path / "config.json").write_text(config.read_text())  # a config-only model folder
    deployment = deployment_from(dtype="int8")
    fits = instance_budget(tmp_path, "ml.inf2.xlarge", deployment)  # tp 2: neuron-config's choice
    blocks = _llama3_8b_blocks()
    scores = {b.name: float(len(blocks) - i) for i, b in enumerate(blocks)}
    choice = select(blocks, scores, "budget", fits=fits)
    assert choice.budget_bytes is None
    assert fits(choice.kept) and 0 < len(choice.kept) < len(blocks)
    for block in blocks:  # maximal: any block left out would no longer fit
        if block.name not in choice.kept:
            assert not fits([*choice.kept, block.name])
    model = load_model_shape(tmp_path)
    chosen = deployment.model_copy(update={"modules_to_not_convert": tuple(choice.kept)})
    row = plan_row(model, chosen, "ml.inf2.xlarge", 2)
    assert row.fits_hbm and row.host_bytes <= row.host_usable_bytes  # host RAM is what binds on inf2.xlarge
    bigger = select(blocks, scores, "budget", fits=instance_budget(tmp_path, "ml.inf2.8xlarge", deployment))
    assert len(bigger.kept) > len(choice.kept)


def test_instance_budget_refuses_when_nothing_fits(tmp_path: Path) -> None:
    config = CONFIGS / "qwen3-14b.json"  # int8: 14.5 GiB to load through 12 GiB of usable host RAM
    (tmp_path / "config.json").write_text(config.read_text())
    with pytest.raises(NeuronforgeError, match=r"will not fit ml\.inf2\.xlarge") as err:
        instance_budget(tmp_path, "ml.inf2.xlarge", deployment_from(dtype="int8"))
    assert "--instance ml.inf2.8xlarge" in err.value.fix


def test_unknown_rule_is_refused_by_the_options(tmp_path: Path) -> None:
    from neuronforge.pipeline.evaluate.api import options_from as evaluate_options
    from neuronforge.pipeline.quantize.api import options_from

    with pytest.raises(NeuronforgeError, match="selection: Input should be 'budget', 'topk', 'threshold' or 'none'"):
        options_from(model="m", out=tmp_path, selection="greedy")
    with pytest.raises(NeuronforgeError, match="selection: Input should be 'budget', 'topk' or 'threshold'"):
        evaluate_options(out=tmp_path, selection="none")  # evaluate always selects
