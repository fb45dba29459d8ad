"""One table of calibration budgets: each command starts from a named preset, explicit knobs win."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import typer
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.core.presets import KNOBS, PRESETS, PresetName
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.evaluate.api import EvaluateOptions
from neuronforge.pipeline.evaluate.api import options_from as evaluate_options
from neuronforge.pipeline.quantize.api import QuantizeSettings, options_from
from neuronforge.pipeline.run.config import RunConfig


def _knobs(options: object) -> tuple[int, ...]:
    return tuple(getattr(options, knob) for knob in KNOBS)


def test_the_presets_are_the_named_choices() -> None:
    assert set(get_args(PresetName)) == set(PRESETS)
    assert [_knobs(p) for p in PRESETS.values()] == [(50, 32, 256), (10, 8, 128), (5, 8, 64)]


def test_each_entry_point_defaults_to_its_named_preset(tmp_path: Path) -> None:
    assert _knobs(QuantizeSettings()) == _knobs(PRESETS["gpu"])
    assert _knobs(RunConfig()) == _knobs(PRESETS["cpu-demo"])
    assert _knobs(EvaluateOptions(out=tmp_path)) == _knobs(PRESETS["cpu-fast"])


def test_a_preset_fills_the_knobs_left_unset(tmp_path: Path) -> None:
    demo = options_from(model="m", out=tmp_path / "q", preset="cpu-demo")
    assert _knobs(demo) == (10, 8, 128) and "preset" not in demo.model_dump()
    assert _knobs(options_from(model="m", out=tmp_path, preset="cpu-demo", iters=3, nsamples=None)) == (3, 8, 128)
    assert _knobs(evaluate_options(out=tmp_path, preset="gpu", eval_tokens=512, eval_seq_len=256)) == (50, 32, 256)
    with pytest.raises(NeuronforgeError, match="unknown preset 'fast'; choose one of gpu, cpu-demo, cpu-fast"):
        options_from(model="m", out=tmp_path, preset="fast")


def test_cli_preset_flag_on_quantize_and_evaluate(tmp_path: Path) -> None:
    runner = CliRunner()
    commands = typer.main.get_command(app).commands
    defaults = {}
    for command in ("quantize", "evaluate", "run"):
        params = {p.name: p for p in commands[command].params}
        preset = params["preset"]
        assert "cpu-demo: iters 10, nsamples 8, calib_seq_len 128" in (preset.help or "")
        assert params["iters"].default is None  # unset: the preset decides
        defaults[command] = (preset.default, preset.show_default)
    # unset: the options model's own preset (run: the config file's, else cpu-demo)
    assert defaults == {"quantize": (None, "gpu"), "evaluate": (None, "cpu-fast"), "run": (None, True)}
    bad = runner.invoke(app, ["quantize", "--out", str(tmp_path / "q"), "--preset", "huge"])
    assert bad.exit_code == 2 and "unknown preset 'huge'" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "q").exists()
