"""AutoRound or RTN for the whole model: the better on the validation text ships, and the scores are the checkpoint's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.neuron.numerics.grid import quantize_weight
from neuronforge.pipeline.quantize.api import options_from, quantize
from neuronforge.pipeline.quantize.autoround_check import ModelChoice
from neuronforge.pipeline.quantize.scoring import Scores

FAST = dict(iters=2, nsamples=4, calib_seq_len=32)


@pytest.fixture(autouse=True)
def one_window_per_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """One 256-token window per text and split (the default scores four and two): the tests' time stays small."""
    from neuronforge.pipeline.quantize import scoring

    monkeypatch.setattr(scoring, "SPLIT_TOKENS", dict.fromkeys(scoring.SPLITS, scoring.WINDOW))


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update(load_file(shard))
    return found


def _scores(kl: float) -> dict:
    return {"validation": Scores(kl, 0.9, 99.0), "test": Scores(kl, 0.9, 99.0)}


def test_the_lower_validation_kl_wins_and_a_tie_keeps_autoround() -> None:
    assert ModelChoice(_scores(0.010), _scores(0.009), ("lm_head",), 1.0).winner == "rtn"
    assert ModelChoice(_scores(0.008), _scores(0.009), ("lm_head",), 1.0).winner == "autoround"
    assert ModelChoice(_scores(0.009), _scores(0.009), ("lm_head",), 1.0).winner == "autoround"
    # Only validation decides: the test split is reported, never read by the choice.
    test_disagrees = ModelChoice({**_scores(0.008), "test": Scores(0.5, 0.1, 50.0)}, _scores(0.009), ("lm_head",), 1.0)
    assert test_disagrees.winner == "autoround"


def test_tuning_that_hurts_the_whole_model_ships_rtn(tiny_llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """Per-block gains need not add up (cpu-fast int8 on SmolLM2: 23 of 30 blocks kept AutoRound, the model's KL 5%
    above RTN's). Here every block's tuning is made harmful (each weight x 1.25) and the per-block check is made to
    keep it anyway: the whole-model check sees the damage on the validation text and RTN's weights are written."""
    from auto_round.algorithms.composer import AlgorithmComposer

    from neuronforge.pipeline.quantize.autoround_nxd import BlockChoice

    compress_block = AlgorithmComposer.compress_block

    def harmful(composer: object, block: torch.nn.Module, *args: object, **kwargs: object) -> object:
        result = compress_block(composer, block, *args, **kwargs)
        for name, module in block.named_modules():
            if name.endswith("_proj"):
                module.weight.data *= 1.25
        return result

    monkeypatch.setattr(AlgorithmComposer, "compress_block", harmful)
    monkeypatch.setattr(BlockChoice, "winner", property(lambda self: "autoround"))
    out = tmp_path / "q"
    quantize(options_from(model=str(tiny_llama_dir), out=out, selection="none", **FAST))
    report = json.loads((out / "quantization_report.json").read_text())
    assert [b["kept"] for b in report["autoround_vs_rtn"]["blocks"]] == ["autoround", "autoround"]
    whole = report["autoround_vs_rtn"]["whole_model"]
    assert whole["kept"] == "rtn"
    assert whole["autoround"]["validation"]["kl"] > whole["rtn"]["validation"]["kl"] > 0
    assert set(whole["autoround"]) == set(whole["rtn"]) == {"validation", "test"}
    assert report["grid_agreement"] == 1.0 and report["naive_agreement"] is None  # (the RTN path's export)
    assert report["autoround_tuned_layers"] == 0 and len(report["rtn_layers"]) == 14  # (what the checkpoint holds)
    assert whole["modules_to_not_convert"] == ["lm_head"]
    before, after = _tensors(tiny_llama_dir), _tensors(out)
    checked = 0
    for key, tensor in after.items():
        if key.endswith("_proj.weight"):  # NxD's own rounding of the source weight, exactly
            codes, scale = quantize_weight(tensor)
            rtn_codes, rtn_scale = quantize_weight(before[key])
            assert torch.equal(codes, rtn_codes) and torch.equal(scale, rtn_scale), key
            checked += 1
    assert checked == 14


def test_the_whole_model_scores_are_the_written_checkpoints(tiny_llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The tuned model's figure comes from RTN's emulated model with the tuned codes swapped in (no second copy of the
    model): it must be what the written checkpoint emulates to, bit for bit, as RTN's is the source's."""
    from neuronforge.hf.folders import load_tokenizer
    from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated
    from neuronforge.pipeline.quantize.scoring import SplitScorer, split_windows

    monkeypatch.setattr(ModelChoice, "winner", property(lambda self: "autoround"))  # ship the tuning, to emulate it
    out = tmp_path / "q"
    quantize(options_from(model=str(tiny_llama_dir), out=out, selection="none", kv="fp8", **{**FAST, "iters": 8}))
    whole = json.loads((out / "quantization_report.json").read_text())["autoround_vs_rtn"]["whole_model"]
    assert whole["autoround"]["validation"]["kl"] != whole["rtn"]["validation"]["kl"]  # (the tuning changed codes)
    scorer = SplitScorer(tiny_llama_dir, split_windows(load_tokenizer(tiny_llama_dir), None), 2)  # compile's tp
    spec = EmulationSpec(dtype="int8", kv="fp8", modules_to_not_convert=("lm_head",), tp_degree=2)
    for folder, version in ((out, "autoround"), (tiny_llama_dir, "rtn")):
        emulated = load_emulated(folder, spec)
        for split in ("validation", "test"):
            assert scorer.scores(emulated, split).kl == whole[version][split]["kl"], (version, split)


def test_a_held_out_text_too_short_to_score_warns_and_keeps_the_per_block_check(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from neuronforge.assets.texts import embedded_splits

    text = tmp_path / "short.txt"
    calibration = next(iter(embedded_splits().calibration.values()))
    text.write_text(calibration[:1200])  # a held-out quarter of ~300 characters: under a 256-token window per half
    out = tmp_path / "q"
    result = CliRunner().invoke(
        app,
        ["quantize", "--model", str(tiny_llama_dir), "--out", str(out), "--text", str(text), "--selection", "none"]
        + ["--iters", "1", "--nsamples", "2", "--calib-seq-len", "32"],
    )
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "compared with RTN per block only" in result.output
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["autoround_vs_rtn"]["whole_model"] is None and report["autoround_vs_rtn"]["blocks"]
