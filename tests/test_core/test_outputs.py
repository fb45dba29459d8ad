"""Where a command may write: overlap with inputs, files, run directories (local paths and s3:// URIs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuronforge.core.outputs import check_apart, check_output, check_run_dir, enclosing_run_dir, is_run_dir
from neuronforge.errors import NeuronforgeError


@pytest.mark.parametrize(
    ("out", "model", "problem"),
    [
        ("m", "m", "is the same location as"),
        (".", "m", "contains"),
        ("m/runs", "m", "is inside"),
        ("m/../m", "m", "is the same location as"),
        ("s3://b/m/run", "s3://b/m/", "is inside"),
        ("s3://b/m", "s3://b/m/", "is the same location as"),
    ],
)
def test_outputs_never_overlap_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str, model: str, problem: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    with pytest.raises(NeuronforgeError, match=problem):
        check_apart(out, {"--model": model})


def test_apart_and_symlinks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "m")
    check_apart("runs/x", {"--model": "m", "--text": None})
    check_apart("s3://b/mm", {"--model": "s3://b/m"})  # a shared name prefix is not containment
    with pytest.raises(NeuronforgeError, match="is the same location"):
        check_apart("link", {"--model": "m"})


def test_run_directories(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"schema_version": 1, "stages": {}}))
    package = tmp_path / "package"
    package.mkdir()
    (package / "manifest.json").write_text(json.dumps({"files": {}}))  # a SageMaker package, not a run
    assert is_run_dir(run) and not is_run_dir(package)
    assert enclosing_run_dir(run / "quantize" / "checkpoint") == run
    assert check_run_dir(run, {}) == run  # a run directory is adopted
    assert check_run_dir(tmp_path / "new", {}) == tmp_path / "new"
    with pytest.raises(NeuronforgeError, match="is not a neuronforge run directory"):
        check_run_dir(package, {})
    with pytest.raises(NeuronforgeError, match="is inside the run directory"):
        check_output(run / "q", {})
    with pytest.raises(NeuronforgeError, match="is inside the run directory"):
        check_run_dir(run / "inner", {})
