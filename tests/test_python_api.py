"""The Python API (neuronforge/__init__.py): every public name resolves, and the README's example runs."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pydantic
import pytest

import neuronforge as nf

README = Path(__file__).resolve().parents[1] / "README.md"
FETCH = 'nf.fetch_model("smollm2")'


def test_every_public_name_resolves() -> None:
    missing = [name for name in nf.__all__ if getattr(nf, name, None) is None]
    assert missing == []
    assert sorted(nf.__all__) == dir(nf)
    with pytest.raises(AttributeError, match="no attribute 'quantise'"):
        _ = nf.quantise


def readme_python_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the Python API section has no python code block"
    return blocks[0]


def test_readme_python_example_runs(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the model changes (the tiny Llama instead of the embedded SmolLM2); the rest runs as written."""
    code = readme_python_example()
    assert code.count(FETCH) == 1
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.replace(FETCH, f"__import__('pathlib').Path({str(tiny_llama_dir)!r})"), "README.md", "exec"))
    lines = printed.getvalue().splitlines()
    assert lines[0].endswith(" 1.0") and "lm_head" in lines[0]  # the folder's list, grid agreement 100%
    assert "Linears on the int8 grid; kept in bf16:" in lines[1]
    assert (tmp_path / "smollm2-int8" / "modules_to_not_convert.json").is_file()
    assert len(lines) >= 3  # the emulated completion


def test_one_name_per_concept_and_one_options_model_per_step(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """tp_degree, kv, eval_tokens, modules_to_not_convert everywhere; old spellings still validate where saved."""
    assert nf.EvaluateOptions().kv == "fp8" == nf.RunConfig().kv == nf.CompileOptions(model="m", out=tmp_path).kv
    assert nf.CompileOptions(model="m", out=tmp_path, tp=2).tp_degree == 2  # a config written before the rename
    assert nf.EvaluateOptions(max_tokens=512).eval_tokens == 512
    assert nf.EmulationSpec(kv="fp8").kv_fp8 and not nf.EmulationSpec().kv_fp8
    with pytest.raises(nf.NeuronforgeError, match="unknown KV cache dtype 'e4m3'"):
        nf.EmulationSpec(kv="e4m3")  # type: ignore[arg-type]
    assert nf.compile_model is nf.compile
    spec = nf.neuron_config(
        tiny_llama_dir, nf.NeuronConfigOptions(tp_degree=1, seq_len=128, modules_to_not_convert=["lm_head"])
    )
    assert spec.tp_degree == 1 and spec.modules_to_not_convert == ["lm_head"]
    with pytest.raises(pydantic.ValidationError, match="tp_degree"):
        nf.PackageOptions(out=tmp_path / "p", compiled=tmp_path, checkpoint=tmp_path, tp_degree=0)


def test_path_options_take_the_path_fetch_model_returns(tmp_path: Path) -> None:
    """J04: `nf.QuantizeOptions(model=nf.fetch_model(...))` was "Input should be a valid string"."""
    model = tmp_path / "m"
    assert nf.QuantizeOptions(model=model, out=tmp_path / "q").model == str(model)  # type: ignore[arg-type]
    assert nf.EvaluateOptions(model=model).model == str(model)  # type: ignore[arg-type]
    assert nf.CompileOptions(model=model, out=tmp_path / "c").model == str(model)  # type: ignore[arg-type]
    config = nf.RunConfig(model=model, out=tmp_path / "r", text=tmp_path / "t.txt")  # type: ignore[arg-type]
    assert (config.model, config.out, config.text) == (str(model), str(tmp_path / "r"), str(tmp_path / "t.txt"))
