"""A first run prints one progress display, ours: auto-round's and transformers' log lines go to <out>/logs/."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from neuronforge.core.logs import third_party_log, third_party_logs

AUTOROUND_LINES = ("peak_ram", "caching done", "Quantizing model.layers", "INFO")


def test_run_keeps_auto_round_off_the_terminal_and_in_the_log_file(
    make_tiny_llama: Callable[..., Path], tmp_path: Path
) -> None:
    """Before: auto-round's coloured INFO lines and its own tqdm bar came out between our progress lines."""
    model = make_tiny_llama("quiet")
    run_dir = tmp_path / "r"
    argv = [sys.executable, "-m", "neuronforge.cli", "run", "--model", str(model), "--out", str(run_dir)]
    argv += ["--stages", "model,quantize", "--iters", "1", "--nsamples", "2", "--calib-seq-len", "32"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    leaked = [line for line in done.stderr.splitlines() if any(mark in line for mark in AUTOROUND_LINES)]
    assert leaked == [], "\n".join(leaked)
    assert "AutoRound" in done.stderr  # our bar for auto-round's blocks
    log = third_party_log(run_dir).read_text()
    assert "autoround INFO" in log and "peak_ram" in log


def test_verbose_keeps_the_terminal_handler_and_everything_comes_back(tmp_path: Path) -> None:
    logger = logging.getLogger("autoround")
    seen: list[str] = []
    terminal = logging.Handler()
    terminal.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(terminal)
    logger.setLevel(logging.INFO)
    try:
        with third_party_logs(tmp_path / "quiet" / "third.log"):
            logger.info("quiet line")
        with third_party_logs(tmp_path / "loud" / "third.log", verbose=True):
            logger.info("loud line")
        logger.info("after")
        assert not (tmp_path / "never").exists()
        with third_party_logs(tmp_path / "never" / "third.log"):
            pass  # nothing logged: no folder is made
        assert not (tmp_path / "never").exists()
    finally:
        logger.removeHandler(terminal)
    assert seen == ["loud line", "after"]
    assert "quiet line" in (tmp_path / "quiet" / "third.log").read_text()
    assert "loud line" in (tmp_path / "loud" / "third.log").read_text()
