"""RunConfig: the commented default loads back, every `run` flag is a config key, YAML/TOML, precedence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.core.presets import KNOBS, PRESETS
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.run.config import (
    DEFAULT_STAGES,
    RunConfig,
    build_config,
    default_config_yaml,
    read_config_file,
)

runner = CliRunner()


def _flat(text: str) -> str:
    """rich wraps long lines at the terminal width; compare with whitespace collapsed."""
    return " ".join(text.split())


def test_commented_default_loads_back_to_the_defaults(tmp_path: Path) -> None:
    text = default_config_yaml()
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith("#")]
    expected = [key for key in RunConfig.model_fields if key not in KNOBS]
    expected.insert(expected.index("sensitivity"), "preset")  # the knobs it fills are written commented out
    assert keys == expected
    assert all(f"\n# {knob}: " in text for knob in KNOBS)
    comments = [line for line in text.splitlines() if line.startswith("# ") and "---" not in line]
    assert len(comments) >= len(RunConfig.model_fields)
    path = tmp_path / "nf.yaml"
    path.write_text(text)
    assert build_config(read_config_file(path), {}) == RunConfig()


def test_every_run_flag_has_a_config_key_and_back() -> None:
    command = typer.main.get_command(app).commands["run"]
    flags = {param.name for param in command.params} - {"config", "verbose"}  # how to run it, not what
    assert flags == set(RunConfig.model_fields) | {"preset"}


def test_yaml_and_toml_files_and_cli_precedence(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "iters: 3\nstages: [emulate, model, quantize]\nmodules_to_not_convert: [lm_head]\n"
    )
    (tmp_path / "a.toml").write_text(
        'iters = 3\nstages = "model,quantize,emulate"\nmodules_to_not_convert = ["lm_head"]\n'
    )
    from_yaml = build_config(read_config_file(tmp_path / "a.yaml"), {})
    from_toml = build_config(read_config_file(tmp_path / "a.toml"), {})
    assert from_yaml == from_toml
    assert from_yaml.stages == ["model", "quantize", "emulate"]  # always run order
    overridden = build_config(read_config_file(tmp_path / "a.yaml"), {"iters": 7, "dtype": None, "stages": "model"})
    assert (overridden.iters, overridden.dtype, overridden.stages) == (7, "int8", ["model"])
    assert RunConfig().stages == list(DEFAULT_STAGES)
    assert RunConfig().run_dir() == str(Path.cwd() / "runs/smollm2-int8")  # relative to where the user stands
    assert RunConfig(model="s3://b/models/llama-7b/", dtype="f8e4m3").run_dir() == str(
        Path.cwd() / "runs/llama-7b-f8e4m3"
    )


@pytest.mark.parametrize(
    ("content", "suffix", "match"),
    [
        ("iter: 3\n", ".yaml", "unknown key 'iter' \\(did you mean 'iters'\\?\\)"),
        ("dtype: int4\n", ".yaml", "dtype: Input should be 'int8' or 'f8e4m3'"),
        ("stages: [model, deploy]\n", ".yaml", "unknown stage\\(s\\) deploy"),
        ("iters: [\n", ".yaml", "is not valid YAML"),
        ("iters = \n", ".toml", "is not valid TOML"),
        ("- a\n- b\n", ".yaml", "key: value pairs"),
        ("iters: 3\n", ".ini", "unsupported config file type"),
    ],
)
def test_bad_config_files_get_clear_errors(tmp_path: Path, content: str, suffix: str, match: str) -> None:
    path = tmp_path / f"c{suffix}"
    path.write_text(content)
    with pytest.raises(NeuronforgeError, match=match):
        build_config(read_config_file(path), {})


def test_config_init_cli(tmp_path: Path) -> None:
    target = tmp_path / "nf.yaml"
    result = runner.invoke(app, ["config", "init", str(target)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(target.read_text()) == {
        "preset": "cpu-demo",
        **RunConfig().model_dump(mode="json", exclude=set(KNOBS)),
    }
    again = runner.invoke(app, ["config", "init", str(target)])
    assert again.exit_code == 2 and "already exists" in _flat(again.output)
    printed = runner.invoke(app, ["config", "init", "-"])
    assert printed.output == default_config_yaml()


def test_run_cli_reports_bad_config_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("iters: -1\n")
    result = runner.invoke(app, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert "iters: Input should be greater than or equal to 0" in _flat(result.output)
    assert "Traceback" not in result.output
    missing = runner.invoke(app, ["run", "--config", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "does not exist" in _flat(missing.output)


def test_preset_fills_only_the_knobs_not_given_in_the_file_or_flags(tmp_path: Path) -> None:
    assert (RunConfig().iters, RunConfig().nsamples, RunConfig().calib_seq_len) == tuple(PRESETS["cpu-demo"][:3])
    path = tmp_path / "gpu.yaml"
    path.write_text("preset: gpu\nnsamples: 4\n")
    config = build_config(read_config_file(path), {"calib_seq_len": 64, "preset": None})
    assert (config.iters, config.nsamples, config.calib_seq_len) == (50, 4, 64)
    flagged = build_config(read_config_file(path), {"preset": "cpu-fast"})
    assert (flagged.iters, flagged.nsamples, flagged.calib_seq_len) == (5, 4, 64)
    with pytest.raises(NeuronforgeError, match="unknown preset 'tpu'; choose one of gpu, cpu-demo, cpu-fast"):
        build_config({"preset": "tpu"}, {})
