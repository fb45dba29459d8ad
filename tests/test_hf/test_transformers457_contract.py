"""Contract with NxD Inference's transformers: our exported config.json and tokenizer, read by transformers 4.57.6.

NxDI 0.8 pins transformers==4.57.* (setup.py:43) and reads the model's config with AutoConfig (utils/hf_adapter.py:49);
a config.json written by transformers 5 alone reads there as RoPE theta 10000 with no scaling. The tokenizer is loaded
there by NxDI's smoke test and by vLLM on the endpoint; transformers 5 saves a class name 4.57 does not know. The venv
is built once (torch-free: transformers, jinja2 for chat templates, and their small dependencies from PyPI) under
$NEURONFORGE_CACHE/venvs and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.core.cache import cache_dir

TRANSFORMERS = "transformers==4.57.6"
REQUIREMENTS = (TRANSFORMERS, "jinja2")
TEXTS = ["The capital of France is", "  two  spaces\tand a tab\n", "</s><s>special tokens inline<unk>", "café ü 日本"]
CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
TOKENIZE = """
import json, sys
import transformers
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
texts, chat = json.loads(sys.argv[2])
print(json.dumps(dict(version=transformers.__version__, ids=[tokenizer(t).input_ids for t in texts],
                      chat=tokenizer.apply_chat_template(chat, tokenize=False) if tokenizer.chat_template else None,
                      specials=[tokenizer.bos_token, tokenizer.eos_token])))
"""
READ = """
import json, sys
import transformers
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1])
print(json.dumps({"version": transformers.__version__, "rope_theta": config.rope_theta,
                  "rope_scaling": config.rope_scaling}))
"""


@pytest.fixture(scope="session")
def transformers457() -> Path:
    """Python of a venv holding only transformers 4.57.6 (no torch), built once per cache."""
    venv = cache_dir() / "venvs" / "-".join(REQUIREMENTS).replace("==", "-")
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True, timeout=300)
    pip = [str(partial / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*pip, *REQUIREMENTS], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"pip install {REQUIREMENTS} failed (needs PyPI):\n{result.stderr[-2000:]}"
    (partial / ".complete").touch()
    shutil.rmtree(venv, ignore_errors=True)
    partial.rename(venv)  # venv scripts keep the .partial path in shebangs; we only ever run `bin/python -c`
    return python


def run_457(python: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([str(python), "-c", script, *args], env=env, capture_output=True, text=True, timeout=120)


def read_with_457(python: Path, folder: Path) -> dict[str, Any]:
    out = run_457(python, READ, str(folder))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def tokenize_with_457(python: Path, folder: Path) -> dict[str, Any]:
    """Token ids, rendered chat template and special tokens as transformers 4.57.6 loads the folder's tokenizer."""
    out = run_457(python, TOKENIZE, str(folder), json.dumps([TEXTS, CHAT]))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def tokenize_with_5(folder: Path) -> dict[str, Any]:
    """The same, as transformers 5 (our side: calibration, emulation) loads it."""
    import transformers
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    chat = tokenizer.apply_chat_template(CHAT, tokenize=False) if tokenizer.chat_template else None
    ids = [tokenizer(t).input_ids for t in TEXTS]
    return {"version": transformers.__version__, "ids": ids, "chat": chat,
            "specials": [tokenizer.bos_token, tokenizer.eos_token]}  # fmt: skip


def assert_same_tokenizer(python: Path, folder: Path, reference: dict[str, Any]) -> None:
    got = tokenize_with_457(python, folder)
    assert got["version"] == "4.57.6"
    assert {k: got[k] for k in ("ids", "chat", "specials")} == {k: reference[k] for k in ("ids", "chat", "specials")}


def read_with_5(folder: Path) -> dict[str, Any]:
    """The source's RoPE settings as transformers 5 (our side) reads them, in 4.x's spelling."""
    from transformers import AutoConfig

    rope = dict(AutoConfig.from_pretrained(folder).rope_parameters)
    theta = rope.pop("rope_theta")
    return {"rope_theta": theta, "rope_scaling": None if rope.get("rope_type") == "default" else rope}


def test_stage1_export_reads_the_same_in_transformers_457(
    transformers457: Path, make_tiny_llama: Callable[..., Path], tmp_path: Path
) -> None:
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}  # fmt: skip
    source = make_tiny_llama("rope-contract", rope_theta=500000.0, rope_scaling=dict(llama3))  # v5 mutates it
    assert read_with_457(transformers457, source)["rope_theta"] == 10000.0  # the bug: v5's own file, read by 4.57
    out = tmp_path / "stage1"
    args = ["quantize", "--model", str(source), "--out", str(out), "--no-autoround", "--nsamples", "2"]
    result = CliRunner().invoke(app, [*args, "--calib-seq-len", "32", "--selection", "none"])
    assert result.exit_code == 0, result.output
    got = read_with_457(transformers457, out)
    assert got["version"] == "4.57.6"
    assert {"rope_theta": got["rope_theta"], "rope_scaling": got["rope_scaling"]} == read_with_5(source)
    assert got["rope_theta"] == 500000.0 and got["rope_scaling"] == llama3


@pytest.mark.slow
def test_embedded_smollm2_reads_the_same_in_transformers_457(transformers457: Path, smollm2_dir: Path) -> None:
    got = read_with_457(transformers457, smollm2_dir)
    assert {"rope_theta": got["rope_theta"], "rope_scaling": got["rope_scaling"]} == read_with_5(smollm2_dir)
    assert got["rope_theta"] == 100000.0


READ_FAMILY = """
import json, sys
from transformers import AutoConfig
config = AutoConfig.from_pretrained(sys.argv[1])
keys = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
        "rope_scaling", "tie_word_embeddings", "attention_bias", "sliding_window", "use_sliding_window", "rms_norm_eps")
print(json.dumps({key: getattr(config, key, None) for key in keys}))
"""


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3", "mistral"])
def test_each_family_s_stage1_config_reads_the_same_in_transformers_457(
    transformers457: Path, make_tiny_family: Callable[..., Path], tmp_path: Path, family: str
) -> None:
    """What NxDI's class for each family reads (hf/families.py: head_dim, biases, RoPE, sliding window, tying), as
    transformers 4.57.6 reads it from the config.json stage 1 writes, equals what transformers 5 computes with."""
    from transformers import AutoConfig

    from neuronforge.hf.config_compat import make_config_portable

    out = Path(shutil.copytree(make_tiny_family(family), tmp_path / "stage1"))
    make_config_portable(out)  # what stage 1 writes (tests/test_pipeline/quantize/test_api.py checks it is)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run([str(transformers457), "-c", READ_FAMILY, str(out)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    old = json.loads(run.stdout.strip().splitlines()[-1])
    new = AutoConfig.from_pretrained(out)
    head_dim = getattr(new, "head_dim", None) or new.hidden_size // new.num_attention_heads
    assert (old["head_dim"] or old["hidden_size"] // old["num_attention_heads"]) == head_dim
    assert {"rope_theta": old["rope_theta"], "rope_scaling": old["rope_scaling"]} == read_with_5(out)
    for key in ("model_type", "num_key_value_heads", "tie_word_embeddings", "rms_norm_eps", "sliding_window"):
        assert old[key] == getattr(new, key, None), key
    assert bool(old["use_sliding_window"]) == bool(getattr(new, "use_sliding_window", False))
    assert bool(old["attention_bias"]) == bool(getattr(new, "attention_bias", False))


CHATML = (
    "{% for m in messages %}{{ bos_token }}{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant\n{% endif %}"
)


def test_stage1_export_of_a_v5_saved_tokenizer_loads_the_same_in_transformers_457(
    transformers457: Path, make_tiny_llama: Callable[..., Path], tmp_path: Path
) -> None:
    """A folder saved by transformers 5 (tokenizer_class TokenizersBackend, chat template) exported by stage 1."""
    from transformers import AutoTokenizer

    source = make_tiny_llama("tokenizer-contract")
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(source)
    reference = tokenize_with_5(source)
    assert reference["chat"] and reference["ids"][2][:2] == [2, 1]  # the special tokens are single ids
    assert "TokenizersBackend" in run_457(transformers457, TOKENIZE, str(source), "[[], []]").stderr  # the bug
    out = tmp_path / "stage1"
    args = ["quantize", "--model", str(source), "--out", str(out), "--no-autoround", "--nsamples", "2"]
    result = CliRunner().invoke(app, [*args, "--calib-seq-len", "32", "--selection", "none"])
    assert result.exit_code == 0, result.output
    assert_same_tokenizer(transformers457, out, reference)
    assert tokenize_with_5(out) == reference  # and our side still reads it as before


@pytest.mark.slow
def test_embedded_smollm2_tokenizer_loads_the_same_in_transformers_457(
    transformers457: Path, smollm2_dir: Path, tmp_path: Path
) -> None:
    """The embedded model (converted from GGUF by transformers 5) and its stage-1 export."""
    reference = tokenize_with_5(smollm2_dir)
    assert reference["chat"] is not None
    assert_same_tokenizer(transformers457, smollm2_dir, reference)
    out = tmp_path / "stage1"
    args = ["quantize", "--model", str(smollm2_dir), "--out", str(out), "--no-autoround", "--nsamples", "2"]
    result = CliRunner().invoke(app, [*args, "--calib-seq-len", "32", "--selection", "none"])
    assert result.exit_code == 0, result.output
    assert_same_tokenizer(transformers457, out, reference)
