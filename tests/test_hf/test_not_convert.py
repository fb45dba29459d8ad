"""modules_to_not_convert.json: one reader for every accepted form, one writer, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.not_convert import NOT_CONVERT_FILE, read_not_convert, write_not_convert

FORMS = {
    "plain": {"modules_to_not_convert": ["lm_head", "layers.0.mlp"]},
    "inference_demo": {"model": {"modules_to_not_convert": ["lm_head", "layers.0.mlp"]}, "draft_model": {}},
    "bare": ["lm_head", "layers.0.mlp"],
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_accepted_form_reads_the_same(tmp_path: Path, form: str) -> None:
    (tmp_path / "skip.json").write_text(json.dumps(FORMS[form]))
    assert read_not_convert(tmp_path / "skip.json") == ["lm_head", "layers.0.mlp"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps({"modules_to_not_convert": ["lm_head", ""]}), "non-empty strings"),  # "" matches every module
        (json.dumps({"model": {"modules_to_not_convert": [" "]}}), "non-empty strings"),
        (json.dumps({"modules": ["lm_head"]}), "list of module names"),
        (json.dumps({"modules_to_not_convert": "lm_head"}), "list of module names"),
        (json.dumps([1, 2]), "list of module names"),
        ("{", "not valid JSON"),
        (b"\xff\xfe".decode("latin-1"), "not valid JSON"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "skip.json").write_text(content, encoding="latin-1")
    with pytest.raises(NeuronforgeError, match=message):
        read_not_convert(tmp_path / "skip.json")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(NeuronforgeError, match="does not exist"):
        read_not_convert(tmp_path / "none.json")
    with pytest.raises(NeuronforgeError, match="is a folder"):
        read_not_convert(tmp_path)


def test_written_file_reads_back(tmp_path: Path) -> None:
    path = write_not_convert(tmp_path, ("layers.1.self_attn", "lm_head"))
    assert path == tmp_path / NOT_CONVERT_FILE
    assert json.loads(path.read_text()) == {"modules_to_not_convert": ["layers.1.self_attn", "lm_head"]}
    assert read_not_convert(path) == ["layers.1.self_attn", "lm_head"]


def test_quantize_and_emulate_share_the_reader(tmp_path: Path) -> None:
    """Before, quantize and neuron-config took "" (which NxDI matches against every module name)."""
    (tmp_path / "empty.json").write_text(json.dumps({"modules_to_not_convert": [""]}))
    runner = CliRunner()
    for args in (["quantize", "--out", str(tmp_path / "q")], ["emulate"]):
        result = runner.invoke(app, [*args, "--not-convert", str(tmp_path / "empty.json")])
        assert result.exit_code == 2 and "non-empty strings" in " ".join(result.output.split()), args
    assert not (tmp_path / "q").exists()
