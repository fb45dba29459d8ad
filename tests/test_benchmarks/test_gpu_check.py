"""benchmarks/gpu_check.sh: the dry mode runs the whole script on the CPU; without a GPU the real mode refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(SCRIPT.parents[1])}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=1200)


def test_dry_run_quantizes_evaluates_and_prints_one_table(tiny_llama_dir: Path, tmp_path: Path) -> None:
    result = _run("--dry-run", "--model", str(tiny_llama_dir), "--dtype", "int8", "--out", str(tmp_path / "check"))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("| int8 |")]
    assert len(rows) == 4  # RTN (NxD), AutoRound, RTN + selective, AutoRound + selective
    assert any(line.startswith("int8: AutoRound ") and "RTN on held-out KL" in line for line in lines)
    assert "dry run" in lines[-1] and (tmp_path / "check" / "eval-int8" / "report.json").exists()


def test_real_mode_without_a_gpu_refuses_clearly(tmp_path: Path) -> None:
    result = _run("--out", str(tmp_path / "check"))
    assert result.returncode == 2
    assert "error: no CUDA device" in result.stderr and "fix:" in result.stderr
    assert not (tmp_path / "check").exists()


def test_unknown_argument_is_refused() -> None:
    result = _run("--fast")
    assert result.returncode == 2 and "error: unknown argument --fast" in result.stderr
