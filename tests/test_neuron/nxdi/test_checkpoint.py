"""The NxD-format quantized checkpoint: keys, dtypes and shapes of NxDI's layout, exclusions, streaming, atomicity."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch
from safetensors.torch import load_file

import neuronforge.neuron.nxdi.checkpoint as checkpoint_module
from neuronforge.core.outputs import OUTPUT_MARKER
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.not_convert import NOT_CONVERT_FILE
from neuronforge.neuron.nxdi.checkpoint import INDEX_NAME, write_quantized_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def out_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return hf_tensors(folder)


def torch_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's own per-channel qint8 quantization (what NxD calls), independent of neuronforge's grid code."""
    w = weight.float()
    scale = torch.clamp(w.abs().amax(dim=1) / 127.0, min=torch.finfo(torch.float32).eps).double()
    q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
    return q.int_repr(), scale.float().reshape(-1, 1)


def test_int8_layout_matches_nxdi(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "nxd"
    result = write_quantized_checkpoint(tiny_llama_dir, out, "int8")
    src, got = hf_tensors(tiny_llama_dir), out_tensors(out)
    assert "lm_head.weight" not in src  # tied: HF does not save it
    expected = {"embed_tokens.weight", "norm.weight", "lm_head.weight", "lm_head.scale"}
    for i in range(2):
        expected |= {f"layers.{i}.input_layernorm.weight", f"layers.{i}.post_attention_layernorm.weight"}
        expected |= {f"layers.{i}.{name}.{leaf}" for name in LINEARS for leaf in ("weight", "scale")}
    assert set(got) == expected
    # (and the hidden list of what neuronforge wrote: core/outputs.py's output contract; NxDI reads neither)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "model.safetensors", NOT_CONVERT_FILE]
    for i in range(2):
        for name in LINEARS:
            w = src[f"model.layers.{i}.{name}.weight"]
            codes, scale = got[f"layers.{i}.{name}.weight"], got[f"layers.{i}.{name}.scale"]
            ref_codes, ref_scale = torch_int8(w)
            assert codes.dtype == torch.int8 and codes.shape == w.shape
            assert scale.dtype == torch.float32 and scale.shape == (w.shape[0], 1)
            assert torch.equal(codes, ref_codes) and torch.equal(scale, ref_scale)
    embed = src["model.embed_tokens.weight"]
    assert got["embed_tokens.weight"].dtype == torch.bfloat16 and torch.equal(got["embed_tokens.weight"], embed)
    assert torch.equal(got["norm.weight"], src["model.norm.weight"])
    # lm_head is generated from the tied embedding, as NxDI's HF model does.
    assert torch.equal(got["lm_head.weight"], torch_int8(embed)[0])
    assert len(result.quantized) == 15 and result.kept == []


def test_a_tied_model_s_own_head_copy_is_ignored_as_nxdi_ignores_it(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Report A19: with tie_word_embeddings NxDI's loader replaces lm_head.weight by the embedding
    (application_base.py:729-730), so a distinct head the file holds anyway must not be quantized in its place."""
    import shutil

    from safetensors.torch import save_file

    folder = Path(shutil.copytree(tiny_llama_dir, tmp_path / "tied-with-head"))
    src = hf_tensors(folder)
    save_file({**src, "lm_head.weight": -src["model.embed_tokens.weight"]}, folder / "model.safetensors")
    got = out_tensors(write_quantized_checkpoint(folder, tmp_path / "nxd", "int8").out_dir)
    assert torch.equal(got["lm_head.weight"], torch_int8(src["model.embed_tokens.weight"])[0])


def test_excluded_modules_stay_bf16(make_tiny_llama: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_tiny_llama("tiny12", num_hidden_layers=12, hidden_size=32, intermediate_size=32)
    src = hf_tensors(folder)
    out = tmp_path / "nxd"
    result = write_quantized_checkpoint(folder, out, "int8", modules_to_not_convert=["layers.1.self_attn", "lm_head"])
    got = out_tensors(out)
    assert "lm_head.scale" not in got and got["lm_head.weight"].dtype == torch.bfloat16
    assert torch.equal(got["lm_head.weight"], src["model.embed_tokens.weight"])
    for name in LINEARS:
        key = f"layers.1.{name}"
        excluded = name.startswith("self_attn")
        assert (f"{key}.scale" in got) is not excluded
        if excluded:
            assert torch.equal(got[f"{key}.weight"], src[f"model.{key}.weight"])
        # layers.10 / layers.11 do not collide with the canonical ".self_attn"-suffixed entry
        assert got[f"layers.10.{name}.weight"].dtype == torch.int8
    assert set(result.kept) == {"lm_head", *(f"model.layers.1.{n}" for n in LINEARS[:4])}
    assert json.loads((out / NOT_CONVERT_FILE).read_text()) == {
        "modules_to_not_convert": ["layers.1.self_attn", "lm_head"]
    }

    # A bare "layers.1" is a plain substring on the HF side: it also catches layers.10 and layers.11.
    loose = write_quantized_checkpoint(folder, tmp_path / "loose", "int8", modules_to_not_convert=["layers.1"])
    assert {name.split(".")[2] for name in loose.kept} == {"1", "10", "11"}


def test_fp8_drops_biases_and_uses_240_grid(make_tiny_llama: Callable[..., Path], tmp_path: Path) -> None:
    folder = make_tiny_llama("tinybias", attention_bias=True, mlp_bias=True)
    src = hf_tensors(folder)
    fp8 = out_tensors(
        Path(
            write_quantized_checkpoint(
                folder, tmp_path / "fp8", "f8e4m3", modules_to_not_convert=["layers.0.mlp"]
            ).out_dir
        )
    )
    int8 = out_tensors(Path(write_quantized_checkpoint(folder, tmp_path / "int8", "int8").out_dir))
    assert "layers.0.self_attn.q_proj.bias" in int8 and int8["layers.0.self_attn.q_proj.bias"].dtype == torch.bfloat16
    assert "layers.0.self_attn.q_proj.bias" not in fp8 and "layers.1.mlp.up_proj.bias" not in fp8
    # an excluded Linear stays a float Linear, bias included
    assert torch.equal(fp8["layers.0.mlp.up_proj.bias"], src["model.layers.0.mlp.up_proj.bias"])
    codes, scale = fp8["layers.1.mlp.up_proj.weight"], fp8["layers.1.mlp.up_proj.scale"]
    assert codes.dtype == torch.float8_e4m3fn and codes.float().abs().max() == 240.0
    w = src["model.layers.1.mlp.up_proj.weight"].float()
    assert torch.equal(scale, torch.clamp(w.abs().amax(dim=1, keepdim=True) / 240.0, min=1e-5))


def test_per_tensor_ignores_list_like_nxdi(tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = write_quantized_checkpoint(tiny_llama_dir, tmp_path / "pt", "int8", "per_tensor_symmetric", ["lm_head"])
    got = out_tensors(tmp_path / "pt")
    assert result.kept == [] and got["lm_head.scale"].shape == (1,)
    assert got["layers.0.mlp.up_proj.scale"].shape == (1,)


def test_streams_one_shard_at_a_time(
    make_tiny_llama: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_tiny_llama("tinyshards")
    model_dir = tmp_path / "sharded"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).save_pretrained(model_dir, max_shard_size="40KB")
    (model_dir / "config.json").write_text((folder / "config.json").read_text())
    src_index = json.loads((model_dir / INDEX_NAME).read_text())["weight_map"]
    src_files = sorted(set(src_index.values()))
    assert len(src_files) >= 3

    events: list[tuple[str, str]] = []
    real_open, real_save = safetensors.safe_open, safetensors.torch.save_file

    class SpyOpen:
        def __init__(self, path: Path, framework: str) -> None:
            self.name = Path(path).name
            self.inner = real_open(path, framework=framework)

        def __enter__(self):  # noqa: ANN204
            events.append(("open", self.name))
            return self.inner.__enter__()

        def __exit__(self, *exc: object) -> None:
            events.append(("close", self.name))
            self.inner.__exit__(*exc)

    def spy_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
        events.append(("save", Path(path).name))
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors, "safe_open", SpyOpen)
    monkeypatch.setattr(safetensors.torch, "save_file", spy_save)
    monkeypatch.setattr(checkpoint_module, "safe_open", SpyOpen)  # (imported by name there)
    monkeypatch.setattr(checkpoint_module, "save_file", spy_save)
    out = tmp_path / "nxd"
    write_quantized_checkpoint(model_dir, out, "int8")

    # First the folder checks read each header (open -> close, no tensor loaded: validate_hf_folder, then
    # check_weights); then open(i) -> close(i) -> save(i), strictly in sequence: never two input shards in memory.
    headers = [ev for f in src_files for ev in (("open", f), ("close", f))] * 2
    assert events == headers + [ev for f in src_files for ev in (("open", f), ("close", f), ("save", f))]
    index = json.loads((out / INDEX_NAME).read_text())
    assert sorted(set(index["weight_map"].values())) == src_files
    for file in src_files:
        written = set(load_file(out / file))
        assert written == {k for k, v in index["weight_map"].items() if v == file}
        inputs = {k.removeprefix("model.") for k, v in src_index.items() if v == file}
        expected = inputs | {k.replace(".weight", ".scale") for k in inputs if ".self_attn." in k or ".mlp." in k}
        if "embed_tokens.weight" in inputs:
            expected |= {"lm_head.weight", "lm_head.scale"}
        assert written == expected
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out_tensors(out).values())


def test_atomic_and_bad_input(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "nxd"
    with pytest.raises(NeuronforgeError, match="dtype"):
        write_quantized_checkpoint(tiny_llama_dir, out, "int4")
    with pytest.raises(NeuronforgeError, match="type"):
        write_quantized_checkpoint(tiny_llama_dir, out, "int8", "blockwise_symmetric")
    with pytest.raises(NeuronforgeError, match="does not exist"):
        write_quantized_checkpoint(tmp_path / "missing", out, "int8")

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    monkeypatch.setattr(checkpoint_module, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        write_quantized_checkpoint(tiny_llama_dir, out, "int8")
    assert list(tmp_path.iterdir()) == []  # no half-written output, no temp dir left behind
    monkeypatch.undo()
    write_quantized_checkpoint(tiny_llama_dir, out, "int8")
    with pytest.raises(NeuronforgeError, match="already exists"):
        write_quantized_checkpoint(tiny_llama_dir, out, "int8")


def test_quantize_nxd_cli(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from neuronforge.cli import app

    skip = tmp_path / "skip.json"
    skip.write_text('["lm_head", "layers.1.self_attn"]')
    out = tmp_path / "nxd"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "quantize-nxd",
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(out),
            "--dtype",
            "f8e4m3",
            "--not-convert",
            str(skip),
        ],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    assert "10 Linears f8e4m3 per_channel_symmetric, 5 kept bf16, 1 shard(s)" in output
    got = out_tensors(out)
    assert got["layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert got["layers.1.self_attn.q_proj.weight"].dtype == torch.bfloat16
    again = runner.invoke(app, ["quantize-nxd", "--model", str(tiny_llama_dir), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in " ".join(again.output.split())
    tied = runner.invoke(app, ["quantize-nxd", "--model", str(tiny_llama_dir), "--out", str(tmp_path / "o2")])
    assert tied.exit_code == 0 and "tied embeddings" in " ".join(tied.output.split())
