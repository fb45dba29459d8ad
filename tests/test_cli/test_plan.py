"""`neuronforge plan`: the table, --json for scripts, and a clear error when nothing fits."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from neuronforge.cli import app

CONFIGS = Path(__file__).parents[1] / "fixtures" / "configs"


def test_json_plan_for_a_config_only_model() -> None:
    result = CliRunner().invoke(app, ["plan", "--model", str(CONFIGS / "llama-3-8b.json"), "--dtype", "bf16", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["smallest"]["instance"] == "ml.inf2.8xlarge" and payload["smallest"]["tp_degree"] == 2
    assert payload["prices"] == {"as_of": "2026-08-26", "region": "us-east-1"}
    xlarge = [row for row in payload["rows"] if row["instance"] == "ml.inf2.xlarge"]
    assert [(row["tp_degree"], row["fits_hbm"], row["fits_host_ram"]) for row in xlarge] == [
        (1, False, False),
        (2, True, False),
    ]


def test_table_uses_the_folder_not_convert_file(tiny_llama_dir: Path, tmp_path: Path) -> None:
    skip = tmp_path / "skip.json"
    skip.write_text(json.dumps({"modules_to_not_convert": ["layers.0.mlp"]}))
    result = CliRunner().invoke(app, ["plan", "--model", str(tiny_llama_dir), "--not-convert", str(skip)])
    assert result.exit_code == 0, result.output
    assert "bf16 blocks: layers.0.mlp, lm_head" in result.output  # tied: lm_head added
    assert "Smallest inf2 instance that fits: ml.inf2.xlarge (tp 2, $0.76/h)" in result.output


def test_too_large_for_any_instance_is_an_error_after_the_table() -> None:
    result = CliRunner().invoke(app, ["plan", "--model", str(CONFIGS / "llama-3.1-405b.json"), "--dtype", "bf16"])
    assert result.exit_code == 2
    assert "| ml.inf2.48xlarge | 16 |" in result.output
    assert "error: llama-3.1-405b (bf16 weights" in " ".join(result.output.split())
    assert "fits on no inf2 instance" in " ".join(result.output.split())


def test_bad_dtype_is_a_clean_error() -> None:
    result = CliRunner().invoke(app, ["plan", "--model", str(CONFIGS / "llama-3-8b.json"), "--dtype", "int4"])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
