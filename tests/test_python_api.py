"""The Python API (neuronforge/__init__.py): every public name resolves, and the README's example runs."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

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
