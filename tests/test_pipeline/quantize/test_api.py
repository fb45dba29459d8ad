"""End to end on the tiny Llama: grid-exact checkpoints, kept blocks untouched, shards preserved, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from testkit.checkpoints import resharded
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.config_compat import portable_config
from neuronforge.neuron.numerics.grid import quantize_weight
from neuronforge.pipeline.quantize import grid_export
from neuronforge.pipeline.quantize.api import options_from, quantize

FAST = dict(iters=2, nsamples=4, calib_seq_len=32)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update(load_file(shard))
    return found


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_end_to_end_is_grid_exact(tiny_llama_dir: Path, tmp_path: Path, dtype: str) -> None:
    out = tmp_path / "q"
    result = quantize(
        options_from(
            model=str(tiny_llama_dir), out=out, dtype=dtype, sensitivity="first_order", selection="topk", topk=1, **FAST
        )
    )
    assert result.grid_agreement == 1.0
    assert result.naive_agreement is not None and result.naive_agreement < 1.0
    kept = json.loads((out / "modules_to_not_convert.json").read_text())["modules_to_not_convert"]
    assert kept == result.modules_to_not_convert and "lm_head" in kept and len(kept) == 2
    report = json.loads((out / "quantization_report.json").read_text())
    tuned = 14 - (4 if kept[0].endswith("self_attn") else 3)
    assert report["grid_agreement"] == 1.0 and report["autoround_tuned_layers"] == tuned and report["rtn_layers"] == []
    assert set(report["versions"]) == {"neuronforge", "torch", "transformers", "auto-round"}
    assert {"load", "sensitivity", "autoround", "export", "verify", "total"} <= set(report["timings_s"])
    sens = json.loads((out / "sensitivity.json").read_text())
    assert sens["method"] == "first_order" and sens["kept_bf16"] == kept
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "tokenizer.json").read_bytes() == (tiny_llama_dir / "tokenizer.json").read_bytes()
    source_tokenizer = json.loads((tiny_llama_dir / "tokenizer_config.json").read_text())
    assert json.loads((out / "tokenizer_config.json").read_text()) == {  # issue 29: a class 4.57 can load
        **source_tokenizer,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    # config.json: the source's, plus the rope_theta/rope_scaling that transformers 4.57 (NxDI) reads
    source_config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == portable_config(source_config) != source_config

    before, after = _tensors(tiny_llama_dir), _tensors(out)
    assert set(before) == set(after)
    kept_block = kept[0]
    changed = 0
    for key, tensor in after.items():
        assert tensor.dtype == torch.bfloat16
        if key.endswith("_proj.weight") and f".{kept_block}." not in f".{key.removeprefix('model.')}":
            # Quantized weights: NxD's quantizer finds them already on its grid (codes * scale within bf16).
            codes, scale = quantize_weight(tensor, dtype)
            again = grid_export.exact_bf16(codes, scale, dtype)
            assert torch.equal(quantize_weight(again, dtype)[0].float(), codes.float())
            # No range shrink by default (minmax_tuning off): every row keeps NxD's scale of the original weight.
            assert torch.equal(scale, quantize_weight(before[key], dtype)[1]), key
            changed += int(not torch.equal(tensor, before[key]))
        else:
            assert torch.equal(tensor, before[key]), key  # kept blocks, norms, embeddings: bit-identical
    assert changed == tuned


def test_explicit_list_keeps_blocks_bit_identical_and_rtn_mode(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rtn"
    result = quantize(
        options_from(
            model=str(tiny_llama_dir),
            out=out,
            dtype="int8",
            autoround=False,
            modules_to_not_convert=["layers.1.mlp", "layers.0.self_attn"],
            **FAST,
        )
    )
    assert result.modules_to_not_convert == ["layers.0.self_attn", "layers.1.mlp", "lm_head"]
    assert result.grid_agreement == 1.0
    # AutoRound's stock export is only compared when AutoRound tuned (RTN skips importing it at all).
    assert result.naive_agreement is None and result.naive_value_agreement is None
    assert not (out / "sensitivity.json").exists()
    before, after = _tensors(tiny_llama_dir), _tensors(out)
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same == (
            ".layers.0.mlp." not in key and ".layers.1.self_attn." not in key or not key.endswith("_proj.weight")
        )
    # RTN on NxD's grid: the same codes NxD computes from the original weights.
    key = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(quantize_weight(after[key])[0], quantize_weight(before[key])[0])


def test_sharded_input_gives_the_same_shards(make_tiny_llama, tmp_path: Path) -> None:
    src = make_tiny_llama("sharded-src")
    sharded = resharded(src, tmp_path / "sharded")
    in_index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert len(set(in_index["weight_map"].values())) > 2
    out = tmp_path / "q"
    quantize(options_from(model=str(sharded), out=out, autoround=False, selection="none", **FAST))
    out_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert out_index["weight_map"] == in_index["weight_map"]
    for shard in set(in_index["weight_map"].values()):
        assert set(load_file(out / shard)) == set(load_file(sharded / shard))


def _whole_model_export(src: Path, dst: Path, targets: set[str], dtype: str) -> None:
    """The export as it was before streaming: every shard loaded whole, each target weight rounded in fp32 to
    NxD's grid and made grid-exact, the shard saved whole (the reference the streaming export must match)."""
    from safetensors.torch import save_file

    dst.mkdir()
    for shard in sorted(src.glob("*.safetensors")):
        tensors = load_file(shard)
        for key in set(tensors) & targets:
            tensors[key] = grid_export.exact_bf16(*quantize_weight(tensors[key].float(), dtype), dtype)
        save_file(tensors, dst / shard.name, metadata={"format": "pt"})


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_streaming_export_writes_the_same_bytes_as_the_whole_model_export(
    make_tiny_llama, tmp_path: Path, dtype: str
) -> None:
    src = make_tiny_llama("stream-src", tie_word_embeddings=False)
    sharded = resharded(src, tmp_path / "sharded")
    out = tmp_path / "q"
    kept = ["layers.0.mlp"]
    quantize(
        options_from(model=str(sharded), out=out, dtype=dtype, autoround=False, modules_to_not_convert=kept, **FAST)
    )
    targets = {key for key in _tensors(sharded) if key.endswith("proj.weight") and ".layers.0.mlp." not in key}
    expected = tmp_path / "expected"
    _whole_model_export(sharded, expected, targets | {"lm_head.weight"}, dtype)
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 2 and sorted(p.name for p in out.glob("*.safetensors")) == shards
    for shard in shards:
        assert (out / shard).read_bytes() == (expected / shard).read_bytes(), shard


@pytest.mark.parametrize(("source_dtype", "autoround"), [(torch.float32, False), (torch.float16, True)])
def test_fp32_and_fp16_sources_give_a_bf16_grid_exact_checkpoint(
    make_tiny_llama, tmp_path: Path, source_dtype: torch.dtype, autoround: bool
) -> None:
    src = make_tiny_llama(f"src-{source_dtype}", dtype=source_dtype)
    out = tmp_path / "q"
    result = quantize(options_from(model=str(src), out=out, autoround=autoround, selection="none", **FAST))
    assert result.grid_agreement == 1.0
    before, after = _tensors(src), _tensors(out)
    assert {t.dtype for t in before.values()} == {source_dtype} and set(after) == set(before)
    for key, tensor in after.items():
        assert tensor.dtype == torch.bfloat16, key  # what NxDI reads
        nxdi_input = before[key].to(torch.bfloat16)
        if key.endswith("proj.weight"):
            # On NxD's grid, with the row scales NxD derives from the bf16 weights NxDI would have read.
            codes, scale = quantize_weight(tensor, "int8")
            assert torch.equal(quantize_weight(grid_export.exact_bf16(codes, scale, "int8"), "int8")[0], codes)
            assert torch.equal(scale, quantize_weight(nxdi_input, "int8")[1]), key
            if not autoround:
                assert torch.equal(codes, quantize_weight(nxdi_input, "int8")[0]), key
        else:
            assert torch.equal(tensor, nxdi_input), key


@pytest.mark.parametrize("source_dtype", [torch.bfloat16, torch.float32])
def test_per_block_error_is_measured_against_the_source(
    make_tiny_llama, tmp_path: Path, source_dtype: torch.dtype
) -> None:
    """RTN on a bf16 source takes the source's values from the model (its Linears are not read again); an fp32
    source's are not in the bf16 model, so they are read: either way the reported error is against the source."""
    from neuronforge.neuron.numerics.module_names import block_of

    src = make_tiny_llama(f"err-{source_dtype}", dtype=source_dtype)
    out = tmp_path / "q"
    quantize(options_from(model=str(src), out=out, autoround=False, selection="none", **FAST))
    reported = json.loads((out / "quantization_report.json").read_text())["per_block_relative_error"]
    before, after = _tensors(src), _tensors(out)
    sums = {block: [0.0, 0.0] for block in reported}
    for key in [k for k in after if k.endswith(("proj.weight", "lm_head.weight"))]:
        source = before[key].double()
        sums[block_of(key.removesuffix(".weight"))][0] += float(((after[key].double() - source) ** 2).sum())
        sums[block_of(key.removesuffix(".weight"))][1] += float((source**2).sum())
    assert len(reported) == 4  # two layers, attention and MLP (the tied lm_head stays bf16)
    for block, (sq_err, sq_norm) in sums.items():
        assert reported[block] == pytest.approx((sq_err / sq_norm) ** 0.5, rel=1e-5), block


def test_failed_grid_check_leaves_no_output(tiny_llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """An exporter that misplaces a single weight by one code must be refused, leaving nothing behind: no folder,
    and in memory (quantize_model) no weight changed."""
    from neuronforge.hf.folders import load_model, load_tokenizer
    from neuronforge.pipeline.quantize.api import QuantizeSettings, quantize_model

    real = grid_export.exact_bf16

    def off_by_one(
        codes: torch.Tensor, scale: torch.Tensor, dtype: str, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        shifted = codes.float().clone()
        shifted[0, int(shifted[0].abs().argmin())] += 1  # smallest code of the row: never its maximum
        return real(shifted, scale, dtype, out=out)

    monkeypatch.setattr(grid_export, "exact_bf16", off_by_one)
    out = tmp_path / "bad"
    with pytest.raises(NeuronforgeError, match="grid check failed"):
        quantize(options_from(model=str(tiny_llama_dir), out=out, autoround=False, selection="none", **FAST))
    assert list(tmp_path.iterdir()) == []
    model = load_model(tiny_llama_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NeuronforgeError, match="grid check failed"):
        quantize_model(
            model, load_tokenizer(tiny_llama_dir), QuantizeSettings(autoround=False, selection="none", **FAST)
        )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "int4"], "dtype"),
        (["--max-extra-memory", "-0.5"], "max_extra_memory: Input should be greater than or equal to 0"),
        (["--max-extra-memory", "5"], "max_extra_memory: Input should be less than or equal to 1"),
        (["--sensitivity", "hessian"], "sensitivity"),
    ],
)
def test_cli_bad_options_fail_clearly(tiny_llama_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        app,
        [
            "quantize",
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(tmp_path / "o"),
            "--no-autoround",
            "--nsamples",
            "2",
            "--calib-seq-len",
            "16",
            *args,
        ],
    )
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_bad_paths_fail_clearly(tiny_llama_dir: Path, make_tiny_llama, tmp_path: Path) -> None:
    with pytest.raises(NeuronforgeError, match="does not exist"):
        quantize(options_from(model=str(tmp_path / "missing"), out=tmp_path / "o"))
    unreadable = tmp_path / "not-a-model"
    unreadable.mkdir()
    (unreadable / "config.json").write_text("{broken")
    (unreadable / "model.safetensors").write_bytes(b"")
    with pytest.raises(NeuronforgeError, match="not valid JSON"):
        quantize(options_from(model=str(unreadable), out=tmp_path / "o"))
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("the user's")  # (an empty folder is filled: core/outputs.py)
    with pytest.raises(NeuronforgeError, match=r"already holds files neuronforge did not write \(keep.txt\)"):
        quantize(options_from(model=str(tiny_llama_dir), out=tmp_path / "exists"))
    no_layers = make_tiny_llama("no-layers", num_hidden_layers=0)
    with pytest.raises(
        NeuronforgeError, match="num_hidden_layers must be a positive integer, got 0"
    ):  # before the load
        quantize(options_from(model=str(no_layers), out=tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    with pytest.raises(NeuronforgeError, match="not blocks of this model"):
        quantize(
            options_from(model=str(tiny_llama_dir), out=tmp_path / "o", modules_to_not_convert=["layers.1"], **FAST)
        )


def test_cli_end_to_end_no_autoround(tiny_llama_dir: Path, tmp_path: Path) -> None:
    not_convert = tmp_path / "keep.json"
    not_convert.write_text(json.dumps({"modules_to_not_convert": ["layers.0.mlp"]}))
    result = CliRunner().invoke(
        app,
        [
            "quantize",
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(tmp_path / "o"),
            "--dtype",
            "f8e4m3",
            "--no-autoround",
            "--not-convert",
            str(not_convert),
            "--nsamples",
            "2",
            "--calib-seq-len",
            "16",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "grid agreement (NxD re-quantization): 100.000%  (naive export: n/a)" in result.output
    saved = json.loads((tmp_path / "o" / "modules_to_not_convert.json").read_text())
    assert saved == {"modules_to_not_convert": ["layers.0.mlp", "lm_head"]}


def test_layers_autoround_leaves_alone_are_rounded_on_nxd_grid(
    make_tiny_llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto-round never tunes an untied lm_head; we detect that and round it with RTN on NxD's grid. (The tuning is
    made to win the whole-model check, which at iters 1 is a coin toss: the report then describes RTN's checkpoint.)"""
    from neuronforge.pipeline.quantize.autoround_check import ModelChoice

    monkeypatch.setattr(ModelChoice, "winner", property(lambda self: "autoround"))
    src = make_tiny_llama("untied-e2e", tie_word_embeddings=False)
    out = tmp_path / "q"
    result = quantize(options_from(model=str(src), out=out, selection="none", iters=1, nsamples=2, calib_seq_len=32))
    report = json.loads((out / "quantization_report.json").read_text())
    assert report["rtn_layers"] == ["lm_head"] and report["autoround_tuned_layers"] == 14
    assert result.modules_to_not_convert == [] and result.grid_agreement == 1.0
    before, after = _tensors(src), _tensors(out)
    assert torch.equal(quantize_weight(after["lm_head.weight"])[0], quantize_weight(before["lm_head.weight"])[0])


def test_minmax_tuning_is_opt_in_and_shrinks_row_ranges(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """With --minmax-tuning AutoRound may clip rows (smaller NxD scale) in the blocks where it beat RTN (issue 32 keeps
    RTN elsewhere); the grid stays exact either way."""
    result = quantize(
        options_from(
            model=str(tiny_llama_dir), out=tmp_path / "q", selection="none", minmax_tuning=True, **{**FAST, "iters": 24}
        )
    )
    assert result.grid_agreement == 1.0
    before, after = _tensors(tiny_llama_dir), _tensors(tmp_path / "q")
    report = json.loads((tmp_path / "q" / "quantization_report.json").read_text())
    tuned = [b["block"] for b in report["autoround_vs_rtn"]["blocks"] if b["kept"] == "autoround"]
    ratios = [
        quantize_weight(after[k], "int8")[1] / quantize_weight(before[k], "int8")[1]
        for k in after
        if k.endswith("_proj.weight") and any(k.startswith(block + ".") for block in tuned)
    ]
    assert tuned, "AutoRound lost to RTN on every block, so this test shows nothing about its range shrink"
    assert all(bool((r <= 1.0).all()) for r in ratios)
    assert any(bool((r < 0.99).any()) for r in ratios)


def test_budget_instance_keeps_blocks_while_the_model_fits(tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = quantize(
        options_from(
            model=str(tiny_llama_dir), out=tmp_path / "q", autoround=False, budget_instance="ml.inf2.xlarge", **FAST
        )
    )
    # The tiny model fits inf2.xlarge even in bf16: every block that quantization damages stays bf16.
    scores = json.loads((tmp_path / "q" / "sensitivity.json").read_text())["blocks"]
    damaged = {b["block"] for b in scores if b["score"] and b["score"] > 0}
    assert set(result.modules_to_not_convert) == damaged | {"lm_head"}


def test_budget_instance_refuses_before_loading_when_nothing_fits(tiny_llama_dir: Path, tmp_path: Path) -> None:
    options = options_from(
        model=str(tiny_llama_dir),
        out=tmp_path / "q",
        budget_instance="ml.inf2.xlarge",
        kv="bf16",
        seq_len=2**22,
        batch_size=64,
        **FAST,
    )
    with pytest.raises(NeuronforgeError, match="fits on no inf2 instance"):
        quantize(options)
    assert not (tmp_path / "q").exists()
    with pytest.raises(NeuronforgeError, match="budget_instance"):
        options_from(model="smollm2", out=tmp_path / "o", budget_instance="ml.inf2.xlarge", selection="topk", topk=1)


@pytest.mark.parametrize("autoround", [True, False])
def test_quantize_model_in_memory_gives_the_folder_path_s_bytes(
    tiny_llama_dir: Path, tmp_path: Path, autoround: bool
) -> None:
    """quantize_model changes a loaded model in place; saving it gives exactly the bytes `quantize` writes."""
    from safetensors.torch import save_file

    from neuronforge.hf.folders import load_model, load_tokenizer
    from neuronforge.pipeline.quantize.api import QuantizeSettings, quantize_model

    knobs = dict(selection="topk", topk=1, autoround=autoround, **FAST)
    folder = quantize(options_from(model=str(tiny_llama_dir), out=tmp_path / "q", **knobs))

    model = load_model(tiny_llama_dir, torch.float32)
    done = quantize_model(model, load_tokenizer(tiny_llama_dir), QuantizeSettings(**knobs))
    assert done.modules_to_not_convert == folder.modules_to_not_convert
    assert (done.rtn_layers == []) == autoround and set(done.timings) >= {"sensitivity", "export"}
    written = load_file(tmp_path / "q" / "model.safetensors")
    state = model.state_dict()
    in_memory = {key: state[key].to(torch.bfloat16) for key in written}
    save_file(in_memory, tmp_path / "in_memory.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "in_memory.safetensors").read_bytes() == (tmp_path / "q" / "model.safetensors").read_bytes()
    for name, codes in done.codes.items():  # the returned codes/scales are what NxD finds in the weights
        again, scale = quantize_weight(state[f"{name}.weight"], "int8")
        assert torch.equal(again, codes) and torch.equal(scale, done.scales[name]), name
    assert len(done.codes) == 14 - (4 if done.modules_to_not_convert[0].endswith("self_attn") else 3)


def test_quantize_model_refuses_a_model_without_decoder_linears(tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    from neuronforge.pipeline.quantize.api import quantize_model

    with pytest.raises(NeuronforgeError, match="Linear has no decoder Linear layers"):
        quantize_model(torch.nn.Linear(4, 4), AutoTokenizer.from_pretrained(tiny_tokenizer_dir))


def test_autoround_tunes_on_the_gpu_with_activations_beside_the_block(tiny_llama_dir: Path, monkeypatch) -> None:
    """With a usable GPU auto-round gets it, fp32 tuning and its GPU-resident activation cache."""
    import auto_round
    from testkit.device_sim import simulated_gpu

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_autoround(model: torch.nn.Module, **kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    from neuronforge.pipeline.quantize import autoround_nxd

    monkeypatch.setattr(auto_round, "AutoRound", fake_autoround)
    monkeypatch.setattr(autoround_nxd, "AutoRound", fake_autoround)  # (imported by name there)
    with simulated_gpu(monkeypatch), pytest.raises(Stop):
        quantize(
            options_from(model=str(tiny_llama_dir), out=tiny_llama_dir.parent / "never", sensitivity="variance", **FAST)
        )
    assert seen["device_map"] == "gpusim:0" and seen["amp"] is False
    assert seen["low_gpu_mem_usage"] is False and seen["low_cpu_mem_usage"] is True


def test_autoround_holds_a_bf16_model_in_fp32_one_block_at_a_time(tiny_llama_dir: Path, monkeypatch) -> None:
    """auto-round tunes in fp32. A bf16 model is not cast whole (4 bytes per parameter on the host): while
    auto-round works on a decoder block, that block and the embedding (the source of the cached inputs) are
    the only fp32 parameters, and the model comes back in bf16 with its tuned Linears on NxD's grid."""
    from auto_round.algorithms.composer import AlgorithmComposer

    from neuronforge.hf.folders import load_model, load_tokenizer
    from neuronforge.pipeline.quantize.api import QuantizeSettings, quantize_model

    model = load_model(tiny_llama_dir)
    fp32_while_tuning: list[set[str]] = []
    compress_block = AlgorithmComposer.compress_block

    def watched(composer: object, block: torch.nn.Module, *args: object, **kwargs: object) -> object:
        fp32_while_tuning.append({n for n, p in model.named_parameters() if p.dtype == torch.float32})
        return compress_block(composer, block, *args, **kwargs)

    monkeypatch.setattr(AlgorithmComposer, "compress_block", watched)
    done = quantize_model(model, load_tokenizer(tiny_llama_dir), QuantizeSettings(selection="none", **FAST))
    names = [name for name, _ in model.named_parameters()]
    assert [sorted(fp32) for fp32 in fp32_while_tuning] == [
        sorted(["model.embed_tokens.weight", *(n for n in names if n.startswith(f"model.layers.{i}."))]) for i in (0, 1)
    ]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not done.rtn_layers
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers keep their dtype
    for name, codes in done.codes.items():
        assert torch.equal(quantize_weight(model.get_parameter(f"{name}.weight"), "int8")[0], codes), name


def test_row_blocks_change_nothing(make_tiny_llama, tmp_path: Path, monkeypatch) -> None:
    """Large weights go through the export and the sensitivity in row blocks: same files, same report."""
    from neuronforge.neuron.numerics import grid

    src = make_tiny_llama("row-blocks", tie_word_embeddings=False)
    runs = {}
    for chunk in (grid.CHUNK_ELEMENTS, 64 * 5):  # 5 rows per block for the 64-wide tiny weights
        monkeypatch.setattr(grid, "CHUNK_ELEMENTS", chunk)
        out = tmp_path / f"q{chunk}"
        quantize(options_from(model=str(src), out=out, dtype="f8e4m3", autoround=False, **FAST))
        report = json.loads((out / "quantization_report.json").read_text())
        sens = json.loads((out / "sensitivity.json").read_text())
        runs[chunk] = (_tensors(out), {k: v for k, v in report.items() if k not in ("timings_s", "options")}, sens)
    (files, report, sens), (files_rows, report_rows, sens_rows) = runs.values()
    assert all(torch.equal(files[k], files_rows[k]) for k in files)
    error, error_rows = report.pop("per_block_relative_error"), report_rows.pop("per_block_relative_error")
    # fp32 partial sums in another order (the block size reaches the export since grid.chunk_elements reads it per
    # call; `row_chunks`' old default was bound at import, so this test used to compare one block size with itself)
    assert report == report_rows and error == pytest.approx(error_rows, rel=1e-5)
    scores = {b["block"]: b["score"] for b in sens["blocks"]}
    assert scores == pytest.approx({b["block"]: b["score"] for b in sens_rows["blocks"]}, rel=1e-6)


@pytest.mark.parametrize("dtype", ["int8", "f8e4m3"])
def test_stage1_on_a_gpu_writes_the_cpu_s_bytes(make_tiny_llama, tmp_path: Path, dtype: str, monkeypatch) -> None:
    """`quantize --device cuda` runs sensitivity and the grid export on the (simulated) GPU, where a tensor left
    on the wrong device fails and scalar divisions round as CUDA rounds them: the checkpoint is byte-identical to
    the CPU's, and the report records the device."""
    from testkit.device_sim import simulated_gpu

    src = make_tiny_llama("gpu-stage1", tie_word_embeddings=False)
    settings = dict(model=str(src), dtype=dtype, autoround=False, **FAST)
    quantize(options_from(out=tmp_path / "cpu", device="cpu", **settings))
    with simulated_gpu(monkeypatch) as gpu:
        quantize(options_from(out=tmp_path / "gpu", device="cuda", **settings))
    assert gpu.ops_on_device > 1000
    cpu, on_gpu = _tensors(tmp_path / "cpu"), _tensors(tmp_path / "gpu")
    assert all(torch.equal(cpu[k].view(torch.uint8), on_gpu[k].view(torch.uint8)) for k in cpu)
    cpu_report, gpu_report = (
        json.loads((tmp_path / r / "quantization_report.json").read_text()) for r in ("cpu", "gpu")
    )
    assert cpu_report["device"]["device"] == "cpu" and cpu_report["device"]["memory_bytes"] > 0
    assert gpu_report["device"]["device"] == "gpusim:0"
    assert cpu_report["modules_to_not_convert"] == gpu_report["modules_to_not_convert"]


def test_quantize_model_on_a_model_that_lives_on_the_gpu(tiny_llama_dir: Path, monkeypatch) -> None:
    """Python API: a model already on the GPU is quantized where it is (calibration ids follow it) and stays there,
    with the CPU's codes. (RTN: auto-round's own block moves assign `param.data` across devices, which the
    simulated device cannot take; its device arguments are checked below.)"""
    from testkit.device_sim import on_device, simulated_gpu

    from neuronforge.hf.folders import load_model, load_tokenizer
    from neuronforge.pipeline.quantize.api import QuantizeSettings, quantize_model

    tokenizer = load_tokenizer(tiny_llama_dir)
    settings = QuantizeSettings(autoround=False, **FAST)
    on_cpu = quantize_model(load_model(tiny_llama_dir), tokenizer, settings.model_copy(update={"device": "cpu"}))
    with simulated_gpu(monkeypatch) as gpu:
        model = load_model(tiny_llama_dir).to(gpu.device)
        done = quantize_model(model, tokenizer, settings.model_copy(update={"device": "cuda"}))
        assert all(on_device(p) for p in model.parameters())
        codes = {name: c.cpu() for name, c in done.codes.items()}
    assert done.modules_to_not_convert == on_cpu.modules_to_not_convert
    assert all(torch.equal(codes[n].view(torch.uint8), on_cpu.codes[n].view(torch.uint8)) for n in on_cpu.codes)


def test_a_shard_the_disk_garbles_is_refused_and_nothing_is_left(make_tiny_llama, tmp_path: Path, monkeypatch) -> None:
    """Every shard is read back and compared bit for bit with what was checked."""
    import safetensors.torch

    src = make_tiny_llama("garbled-src", tie_word_embeddings=False)
    sharded = resharded(src, tmp_path / "sharded")
    real_save = safetensors.torch.save_file
    saved: list[str] = []

    def garbling_save(tensors: dict, filename: Path, metadata: dict | None = None) -> None:
        real_save(tensors, filename, metadata=metadata)
        saved.append(Path(filename).name)
        if len(saved) == 2:  # the second shard: one bit of its last tensor flips on the way to disk
            data = bytearray(Path(filename).read_bytes())
            data[-1] ^= 0x01
            Path(filename).write_bytes(bytes(data))

    monkeypatch.setattr(safetensors.torch, "save_file", garbling_save)
    out = tmp_path / "q"
    with pytest.raises(NeuronforgeError, match=r"model-00002-of-\d+\.safetensors does not hold what was checked"):
        quantize(options_from(model=str(sharded), out=out, autoround=False, selection="none", **FAST))
    assert len(saved) >= 2 and not out.exists() and not list(tmp_path.glob("q*"))


@pytest.mark.parametrize("autoround", [False, True])
def test_each_shard_s_weights_are_released_once_written(
    make_tiny_llama, tmp_path: Path, monkeypatch, autoround
) -> None:
    """The export consumes the model: when a shard is saved, no weight of an earlier shard is still in memory."""
    import gc
    import weakref

    import safetensors.torch

    from neuronforge.hf import folders

    src = make_tiny_llama("release-src", tie_word_embeddings=False)
    sharded = resharded(src, tmp_path / "sharded")
    weight_map = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    refs: dict[str, weakref.ref] = {}
    real_load, real_save = folders.load_model, safetensors.torch.save_file

    def watched_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        refs.update({name: weakref.ref(param) for name, param in model.named_parameters()})
        return model

    alive_at_save: dict[str, set[str]] = {}

    def watched_save(tensors: dict, filename: Path, metadata: dict | None = None) -> None:
        gc.collect()
        alive_at_save[Path(filename).name] = {weight_map[name] for name, ref in refs.items() if ref() is not None}
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(folders, "load_model", watched_load)
    monkeypatch.setattr(safetensors.torch, "save_file", watched_save)
    kept = ["layers.0.mlp"]  # kept weights are released too
    quantize(
        options_from(model=str(sharded), out=tmp_path / "q", autoround=autoround, modules_to_not_convert=kept, **FAST)
    )
    shards = sorted(set(weight_map.values()))
    assert len(shards) > 2 and list(alive_at_save) == shards
    for index, shard in enumerate(shards):
        assert alive_at_save[shard] <= set(shards[index:]), shard  # only this shard's and later ones'


@pytest.mark.parametrize("autoround", [False, True])
def test_no_source_page_is_held_while_a_shard_is_written(
    make_tiny_llama, tmp_path: Path, monkeypatch, autoround
) -> None:
    """The export writes the other parameters from the model, not from the mapped source shard, so no page of
    the source is resident while a shard is written (the embedding alone is a 0.8 GB page set for Llama-3-8B)."""
    import gc

    import safetensors.torch
    from testkit.memory import mapped_rss

    src = make_tiny_llama("unmapped-src", tie_word_embeddings=False)
    sharded = resharded(src, tmp_path / "sharded")
    shards = sorted(sharded.glob("model-*.safetensors"))
    real_save = safetensors.torch.save_file
    resident: dict[str, int] = {}

    def watched_save(tensors: dict, filename: Path, metadata: dict | None = None) -> None:
        gc.collect()
        resident[Path(filename).name] = sum(mapped_rss(shard) for shard in shards)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", watched_save)
    quantize(options_from(model=str(sharded), out=tmp_path / "q", autoround=autoround, **FAST))
    assert len(shards) > 2 and resident == dict.fromkeys((s.name for s in shards), 0)


@pytest.mark.parametrize(
    "family, dtype, autoround",
    [
        ("llama3", "int8", True),
        ("qwen2", "int8", False),
        ("qwen2", "f8e4m3", True),
        ("qwen3", "f8e4m3", True),
        ("mistral", "int8", False),
    ],
)
def test_each_family_exports_a_fixed_point_of_nxd_s_quantizer(
    make_tiny_family, tmp_path: Path, family: str, dtype: str, autoround: bool
) -> None:
    """Sensitivity, AutoRound and the grid-exact export on each family: every quantized weight is already on NxD's
    grid (re-quantizing it gives back its own values), biases and norms (Qwen3's q/k norms) stay bit-identical,
    and with fp8 Qwen2's biased attention blocks are kept bf16 whatever the selection (hf/families.py)."""
    out, tiny_family_dir = tmp_path / "q", make_tiny_family(family)
    result = quantize(
        options_from(
            model=str(tiny_family_dir), out=out, dtype=dtype, selection="topk", topk=1, autoround=autoround, **FAST
        )
    )
    assert result.grid_agreement == 1.0
    config = json.loads((tiny_family_dir / "config.json").read_text())
    report = json.loads((out / "quantization_report.json").read_text())
    forced = report["forced_bf16"]
    if config["model_type"] == "qwen2" and dtype == "f8e4m3":
        assert set(forced) == {"layers.0.self_attn", "layers.1.self_attn"}
        assert all("drops Linear biases" in why for why in forced.values())
    else:
        assert forced == {}
    kept = result.modules_to_not_convert
    assert set(forced) <= set(kept) and set(kept) - set(forced) - {"lm_head"}  # topk 1 chose one more block
    before, after = _tensors(tiny_family_dir), _tensors(out)
    assert set(before) == set(after)
    quantized = 0
    for key, tensor in after.items():
        block = "lm_head" if key == "lm_head.weight" else ".".join(key.removeprefix("model.").split(".")[:3])
        if (key.endswith("_proj.weight") or block == "lm_head") and block not in kept:
            codes, scale = quantize_weight(tensor, dtype)  # NxD's quantizer on what NxDI reads
            assert torch.equal(grid_export.exact_bf16(codes, scale, dtype), tensor), key  # a fixed point
            quantized += 1
        else:
            assert torch.equal(tensor, before[key]), key  # biases, norms, embeddings, kept blocks
    untied_head = int(not config["tie_word_embeddings"] and "lm_head" not in kept)
    assert quantized == 14 + untied_head - sum(4 if b.endswith("self_attn") else 3 for b in kept if b != "lm_head")


def test_the_cpu_export_runs_its_small_ops_on_one_thread(tiny_llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The export's 1 MB-block loop pays an OpenMP barrier per op with two threads (7-17 s against 1.0-1.3 s for a
    14336 x 4096 weight on a loaded host): on the CPU it runs on one, and the caller's setting comes back."""
    from neuronforge.neuron.numerics import grid

    real, seen = grid.quantize_weight, []

    def watched(weight: torch.Tensor, dtype: str = "int8", *args: object) -> object:
        seen.append(torch.get_num_threads())
        return real(weight, dtype, *args)

    monkeypatch.setattr(grid, "quantize_weight", watched)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        quantize(options_from(model=str(tiny_llama_dir), out=tmp_path / "q", autoround=False, device="cpu", **FAST))
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_tuned_block_worse_than_rtn_on_unseen_calibration_windows_is_replaced_by_rtn(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """AutoRound is never kept where it loses to RTN: a block whose tuning hurts its output (here, tuning is made
    to scale every weight by 1.5) is compared with RTN on calibration windows it did not tune on, and RTN's
    weights (what NxD's own quantizer stores) are written instead; the report says which won, per block."""
    from auto_round.algorithms.composer import AlgorithmComposer

    compress_block = AlgorithmComposer.compress_block
    calls: list[int] = []

    def harmful(composer: object, block: torch.nn.Module, *args: object, **kwargs: object) -> object:
        result = compress_block(composer, block, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the first decoder block only
            for name, module in block.named_modules():
                if name.endswith("_proj"):
                    module.weight.data *= 1.5
        return result

    monkeypatch.setattr(AlgorithmComposer, "compress_block", harmful)
    out = tmp_path / "q"
    quantize(options_from(model=str(tiny_llama_dir), out=out, selection="none", **FAST))
    report = json.loads((out / "quantization_report.json").read_text())
    blocks = {b["block"]: b for b in report["autoround_vs_rtn"]["blocks"]}
    assert list(blocks) == ["model.layers.0", "model.layers.1"]
    harmed = blocks["model.layers.0"]
    assert harmed["kept"] == "rtn" and harmed["autoround"] > harmed["rtn"] > 0
    before, after = _tensors(tiny_llama_dir), _tensors(out)
    for key, tensor in after.items():
        if key.startswith("model.layers.0.") and key.endswith("_proj.weight"):
            # RTN's grid values of the source weight, exactly (not the harmed tuning: its rows are 1.5x larger)
            codes, scale = quantize_weight(tensor)
            rtn_codes, rtn_scale = quantize_weight(before[key])
            assert torch.equal(codes, rtn_codes) and torch.equal(scale, rtn_scale), key


def test_the_sensitivity_and_autoround_run_on_the_threads_left_idle(tiny_llama_dir: Path, monkeypatch) -> None:
    """`threads_for_load` wraps stage 1's tuning: with other work keeping the CPUs busy, the sensitivity and
    AutoRound see one thread (a loaded 2-core host: 23.8 s instead of 60.8 s on the 1.17e9 benchmark)."""
    from auto_round.algorithms.composer import AlgorithmComposer

    import neuronforge.pipeline.quantize.api as quantize_module
    from neuronforge.core import devices
    from neuronforge.hf.folders import load_model, load_tokenizer
    from neuronforge.pipeline.quantize.api import QuantizeSettings, quantize_model

    seen: dict[str, int] = {}
    analyze, compress_block = quantize_module.analyze, AlgorithmComposer.compress_block

    def watched_analyze(*args: object, **kwargs: object) -> object:
        seen["sensitivity"] = torch.get_num_threads()
        return analyze(*args, **kwargs)

    def watched_block(*args: object, **kwargs: object) -> object:
        seen["autoround"] = torch.get_num_threads()
        return compress_block(*args, **kwargs)

    monkeypatch.setattr(quantize_module, "analyze", watched_analyze)
    monkeypatch.setattr(AlgorithmComposer, "compress_block", watched_block)
    monkeypatch.setattr(devices, "idle_cpus", lambda seconds=0.1: 0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        quantize_model(load_model(tiny_llama_dir), load_tokenizer(tiny_llama_dir), QuantizeSettings(**FAST))
        assert seen == {"sensitivity": 1, "autoround": 1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
