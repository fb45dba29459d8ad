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


def _write_output(out: Path, overwrite: bool = False, files: tuple[str, ...] = ("a.json", "sub/b.bin")) -> None:
    from neuronforge.core.outputs import output_dir

    with output_dir(out, overwrite=overwrite) as tmp:
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(name)


def test_output_contract_new_empty_or_ours(tmp_path: Path) -> None:
    """One contract for every command that writes a folder (issue 33): new or empty, or one neuronforge wrote;
    --overwrite replaces only that, never a folder holding a file neuronforge did not write."""
    from neuronforge.core.outputs import OUTPUT_MARKER, written_files

    out = tmp_path / "out"
    _write_output(out)
    assert written_files(out) == {"a.json", "sub/b.bin"}
    with pytest.raises(NeuronforgeError, match="pass --overwrite"):
        _write_output(out)
    _write_output(out, overwrite=True, files=("c.txt",))
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "c.txt"]

    (out / "NOTES.md").write_text("mine")
    with pytest.raises(NeuronforgeError, match=r"did not write \(NOTES.md\)"):
        _write_output(out, overwrite=True)
    assert (out / "NOTES.md").read_text() == "mine" and (out / "c.txt").exists()

    user = tmp_path / "user"
    (user / "deep").mkdir(parents=True)
    (user / "deep" / "x.txt").write_text("mine")
    with pytest.raises(NeuronforgeError, match=r"did not write \(deep/x.txt\)"):
        _write_output(user, overwrite=True)

    empty = tmp_path / "empty"  # filled in place (a SageMaker output LocalPath may be a mount point)
    empty.mkdir()
    inode = empty.stat().st_ino
    _write_output(empty)
    assert empty.stat().st_ino == inode and written_files(empty) == {"a.json", "sub/b.bin"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_write_into_an_empty_folder_leaves_it_empty(tmp_path: Path) -> None:
    from neuronforge.core.outputs import output_dir

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError), output_dir(empty) as tmp:
        (tmp / "a").write_text("x")
        raise RuntimeError("boom")
    assert list(empty.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_neuron_config_and_package_follow_the_contract(tmp_path: Path, tiny_llama_dir: Path) -> None:
    """E14/E53 (neuron-config rewrote files in --out, the model folder included) and E25/E26 (package
    --overwrite deleted the user's NOTES.md and the inputs): refused; their own outputs are replaced."""
    from testkit.fakes import make_compiled
    from typer.testing import CliRunner

    from neuronforge.cli import app
    from neuronforge.sagemaker.packaging import verify_package

    def invoke(*argv: str) -> str:
        result = CliRunner().invoke(app, [str(a) for a in argv])
        return f"{result.exit_code} {' '.join(result.output.split())}"

    nc = tmp_path / "nc"
    assert invoke("neuron-config", "--model", tiny_llama_dir, "--out", nc, "--seq-len", "256").startswith("0 ")
    first = (nc / "neuron_config.json").read_bytes()
    assert "pass --overwrite" in invoke("neuron-config", "--model", tiny_llama_dir, "--out", nc)
    out = invoke("neuron-config", "--model", tiny_llama_dir, "--out", nc, "--seq-len", "128", "--overwrite")
    assert out.startswith("0 ") and (nc / "neuron_config.json").read_bytes() != first

    compiled = make_compiled(tmp_path)
    pkg = tmp_path / "pkg"
    assert invoke("package", pkg, "--compiled", compiled, "--checkpoint", tiny_llama_dir).startswith("0 ")
    assert invoke("package", pkg, "--compiled", compiled, "--checkpoint", tiny_llama_dir, "--overwrite")[0] == "0"
    assert verify_package(pkg)["serving"]["tp_degree"] == 2
    (pkg / "NOTES.md").write_text("mine")
    out = invoke("package", pkg, "--compiled", compiled, "--checkpoint", tiny_llama_dir, "--overwrite")
    assert "error: --out" in out and "NOTES.md" in out and (pkg / "NOTES.md").read_text() == "mine"
