"""`neuronforge evaluate` end to end on the tiny model: every variant measured, cached variant checkpoints reused,
a broken variant flagged, and the CLI's error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.evaluate import api as ev


def test_plan_variants_adds_a_kv_only_row_for_fp8_kv():
    assert [p.key for p in ev.plan_variants("int8", False)] == [
        "bf16",
        "rtn",
        "autoround",
        "rtn_selective",
        "autoround_selective",
    ]
    fp8 = ev.plan_variants("f8e4m3", True)
    assert [p.key for p in fp8][:2] == ["bf16", "bf16_kv"]
    assert not fp8[0].kv_fp8 and all(p.kv_fp8 for p in fp8[1:])
    assert [p.checkpoint for p in fp8] == [None, None, None, "autoround", "rtn_selective", "autoround_selective"]


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(NeuronforgeError, match="prefill_len 300 must be <= eval_seq_len 256"):
        ev.options_from(out=tmp_path, prefill_len=300)
    with pytest.raises(NeuronforgeError, match="dtype"):
        ev.options_from(out=tmp_path, dtype="int4")


@pytest.fixture(scope="module")
def tiny_run(tiny_llama_dir, tmp_path_factory):
    gsm = tmp_path_factory.mktemp("task") / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": q, "answer": f"#### {a}"}) for q, a in [("2+2?", 4), ("3+3?", 6)]))
    options = ev.options_from(
        model=str(tiny_llama_dir),
        out=tmp_path_factory.mktemp("eval") / "report",
        dtype="int8",
        kv="fp8",
        eval_tokens=128,
        eval_seq_len=64,
        iters=2,
        nsamples=4,
        calib_seq_len=32,
        selection="topk",
        topk=1,
        gsm8k=gsm,
        max_new_tokens=4,
    )
    return options, ev.evaluate(options, command="neuronforge evaluate (test)")


def test_every_variant_is_measured_and_written(tiny_run):
    options, report = tiny_run
    out = options.out
    assert {p.name for p in out.iterdir()} >= {"report.md", "report.json", "report.png", "variants"}
    by_key = {v.key: v for v in report.variants}
    assert list(by_key) == ["bf16", "bf16_kv", "rtn", "autoround", "rtn_selective", "autoround_selective"]
    ref = by_key["bf16"]
    assert ref.kl == 0.0 and ref.agreement == 1.0 and ref.flags == []
    assert all(r == pytest.approx(100.0) for r in ref.ppl_recovery.values())
    assert ref.weight_percent == 100.0 and ref.task_accuracy is not None
    for key in ("bf16_kv", "rtn", "autoround", "rtn_selective", "autoround_selective"):
        assert by_key[key].kl > 0.0, key  # every variant really differs from bf16
    # The tuned variant is the tuning only where the whole-model check kept it; where RTN won, it is RTN's checkpoint.
    for tuned, untuned in (("autoround", "rtn"), ("autoround_selective", "rtn_selective")):
        choice = by_key[tuned].autoround_vs_rtn
        assert choice is not None and choice["kept"] in ("autoround", "rtn"), tuned
        assert choice["autoround"]["validation"]["kl"] != choice["rtn"]["validation"]["kl"]  # (tuning changed codes)
        same = by_key[tuned].perplexity == by_key[untuned].perplexity
        assert same == (choice["kept"] == "rtn"), tuned
        assert by_key[untuned].autoround_vs_rtn is None
        assert f"- {by_key[tuned].label}: " in (out / "report.md").read_text()  # whose weights were written
    # tied lm_head always stays bf16; topk=1 keeps one more block, shared by both selective variants
    assert by_key["rtn"].modules_to_not_convert == by_key["autoround"].modules_to_not_convert == ["lm_head"]
    selective = by_key["rtn_selective"].modules_to_not_convert
    assert len(selective) == 2 and "lm_head" in selective
    assert by_key["autoround_selective"].modules_to_not_convert == selective
    assert (
        by_key["rtn"].weight_bytes
        == by_key["autoround"].weight_bytes
        < by_key["rtn_selective"].weight_bytes
        < ref.weight_bytes
    )
    assert by_key["bf16_kv"].weight_bytes == ref.weight_bytes
    # the tiny model fits the smallest inf2 at neuron-config's tp (4 heads, 2 KV heads on 2 cores)
    assert {(v.instance, v.instance_tp, v.instance_usd_per_hour) for v in report.variants} == {
        ("ml.inf2.xlarge", 2, 0.7582)
    }
    assert all(v.kv_out_of_range == 0.0 for v in report.variants[1:])
    md = (out / "report.md").read_text()
    assert md.count("\n| ") == 1 + len(report.variants) and "AutoRound int8 + selective" in md
    assert "| inf2.xlarge (tp 2, $0.76) |" in md and "seq-len 1024" in md
    assert json.loads((out / "report.json").read_text())["variants"][2]["key"] == "rtn"


def test_perplexity_agrees_with_the_emulator_s_own(tiny_run, tiny_llama_dir):
    from neuronforge.assets.texts import embedded_splits, evaluation_windows
    from neuronforge.hf.folders import load_tokenizer
    from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated, perplexity

    options, report = tiny_run
    tok = load_tokenizer(tiny_llama_dir)
    name, text = next(iter(embedded_splits().evaluation.items()))
    windows = evaluation_windows(tok, text, options.eval_seq_len, options.eval_tokens)
    emulated = load_emulated(
        tiny_llama_dir, EmulationSpec(dtype="int8", kv="fp8", modules_to_not_convert=("lm_head",), fast_bf16=True)
    )
    rtn = next(v for v in report.variants if v.key == "rtn")
    assert rtn.perplexity[name] == pytest.approx(perplexity(emulated, windows), rel=1e-4)


def test_rerun_reuses_cached_variant_checkpoints(tiny_run, monkeypatch):
    import neuronforge.pipeline.quantize.api as quantize_module

    options, first = tiny_run
    calls = []
    real = quantize_module.quantize
    monkeypatch.setattr(ev, "quantize", lambda o: calls.append(o) or real(o))  # (imported by name there)
    again = ev.evaluate(options)
    assert calls == []
    assert [v.perplexity for v in again.variants] == [v.perplexity for v in first.variants]
    assert sorted(p.name.split("-")[0] for p in (options.out / "variants").iterdir()) == [
        "autoround",
        "autoround_selective",
        "rtn_selective",
    ]
    assert all("(cached)" in k for k in again.timings if k.startswith("variant "))
    # a different quantize option is a different cache key, so the variant is quantized again
    ev.variant_checkpoint("rtn_selective", Path(options.model), options.model_copy(update={"topk": 2}))
    assert len(calls) == 1 and len(list((options.out / "variants").glob("rtn_selective-*"))) == 2
    # so is another stage-1 revision (same options, other bytes: a checkpoint made before AutoRound's whole-model check)
    monkeypatch.setattr(ev, "STAGE1_REVISION", ev.STAGE1_REVISION - 1)
    ev.variant_checkpoint("rtn_selective", Path(options.model), options)
    assert len(calls) == 2 and len(list((options.out / "variants").glob("rtn_selective-*"))) == 3


def test_evaluate_on_a_gpu(tiny_run, tmp_path, monkeypatch):
    """`--device cuda` (simulated GPU): the cached stage checkpoints serve (the device is in no cache key: same
    bits anywhere), every variant and the gsm8k generations run on the device, and the report records it."""
    import shutil

    from testkit.device_sim import simulated_gpu

    import neuronforge.pipeline.quantize.api as quantize_module

    options, on_cpu = tiny_run
    shutil.copytree(options.out, tmp_path / "report")
    monkeypatch.setattr(quantize_module, "quantize", lambda o: pytest.fail("a stage ran again"))
    with simulated_gpu(monkeypatch) as gpu:
        on_gpu = ev.evaluate(options.model_copy(update={"out": tmp_path / "report", "device": "cuda"}))
    assert gpu.ops_on_device > 10_000
    assert on_gpu.device["device"] == "gpusim:0" and on_cpu.device["device"] == "cpu"
    assert {v.device for v in on_gpu.variants} == {"gpusim:0"}
    for gpu_variant, cpu_variant in zip(on_gpu.variants, on_cpu.variants, strict=True):
        assert gpu_variant.perplexity == pytest.approx(cpu_variant.perplexity, rel=1e-3), gpu_variant.key
    assert "Device: gpusim:0" in (tmp_path / "report" / "report.md").read_text()


def test_a_zeroed_layer_is_flagged_as_broken(tiny_llama_dir):
    from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated, perplexity_from_logits

    windows = {"t": torch.randint(3, 512, (2, 48), generator=torch.Generator().manual_seed(1))}
    bf16 = load_emulated(tiny_llama_dir, EmulationSpec(fast_bf16=False))
    ref_logits = {"t": bf16.logits(windows["t"])}
    ppl = {"t": perplexity_from_logits(ref_logits["t"], windows["t"])}
    reference = ev.Reference(windows, ref_logits, ppl)
    broken = load_emulated(
        tiny_llama_dir, EmulationSpec(dtype="int8", modules_to_not_convert=("lm_head",), fast_bf16=False)
    )
    healthy = ev.compare(reference, {"t": broken.logits(windows["t"])}, ppl, quantized=True)
    with torch.no_grad():
        broken.model.model.layers[0].mlp.down_proj.scale.zero_()
    figures = ev.compare(reference, {"t": broken.logits(windows["t"])}, ppl, quantized=True)
    assert figures["flags"] and figures["kl"] > healthy["kl"] * 10
    assert figures["agreement"] < healthy["agreement"]
    unquantized = ev.compare(reference, ref_logits, ppl, quantized=True)
    assert any("not quantized" in f for f in unquantized["flags"])


def test_compare_takes_one_window_of_logits_to_fp32_at_a_time():
    """The held-out logits stay bf16 (what the model computes) and the KL's softmaxes run a window at a time: on the
    default model the variant phase peaked at 6.7 GB with every text's fp32 logits concatenated, twice, and softmaxed
    whole (2.2 GB now). The figures are those of the whole computation."""
    from testkit.memory import made_shapes

    from neuronforge.neuron.numerics.emulate import perplexity_from_logits

    generator = torch.Generator().manual_seed(0)
    windows = {t: torch.randint(0, 97, (3, 8), generator=generator) for t in ("a", "b")}
    ref = {t: torch.randn(3, 8, 97, generator=generator).bfloat16() for t in windows}
    var = {t: (ref[t].float() + 0.3 * torch.randn(3, 8, 97, generator=generator)).bfloat16() for t in windows}
    ppl = {t: perplexity_from_logits(ref[t], windows[t]) for t in windows}
    reference = ev.Reference(windows, ref, ppl)
    with made_shapes(torch.float32) as made:
        figures = ev.compare(reference, var, ppl, quantized=True)
    assert max(shape[0] for shape in made if len(shape) == 2 and shape[-1] == 97) == 8  # one window's positions

    whole_ref = torch.cat([ref[t].float().flatten(0, 1) for t in windows])  # every text at once
    whole_var = torch.cat([var[t].float().flatten(0, 1) for t in windows])
    ref_logp, var_logp = torch.log_softmax(whole_ref, dim=-1), torch.log_softmax(whole_var, dim=-1)
    kl = (ref_logp.exp() * (ref_logp - var_logp)).sum(dim=-1).double().mean().item()
    agreement = (whole_ref.argmax(dim=-1) == whole_var.argmax(dim=-1)).double().mean().item()
    assert (figures["kl"], figures["agreement"]) == (kl, agreement) and 0 < agreement < 1


def test_cli_reports_bad_input_without_a_traceback(tmp_path):
    from neuronforge.cli import app

    result = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split()) and "Traceback" not in result.output
