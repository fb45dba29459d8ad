"""Conformance check: neuronforge's Neuron path against the REAL NxD/NxDI and vllm-neuron sources (docs/conformance.md).

For every family in FAMILIES and every SDK in SDK_SOURCES, on a tiny model with the embedded SmolLM2's real tokenizer
(saved by transformers 5) and batch sizes 1 and 4: stage-1 export (`neuronforge quantize`, RTN) here, then in a
transformers 4.57.6 venv (worker.py, one process per case): tokenizer and config as transformers 5 reads them ->
neuron-config -> NxDI config build -> NxD's quantized state dict from our export (bit-exact) -> config save and
neuronforge's rewrite -> the reload vllm-neuron performs, batching checked against vllm-neuron's own default config ->
model construction and compile() up to the first call into a device package (stubbed: device_stubs.py).

    python conformance/check.py --sources DIR --python /tmp/tf457/bin/python

DIR holds checkouts (or `git archive`s) named nxdi-0.8, nxd-0.8 (SDK 2.28), nxdi-0.9, nxd-0.9 (SDK 2.31's stand-in:
no NxDI 0.10 source is public) and vllm-neuron; $NEURONFORGE_CONFORMANCE_SOURCES and $NEURONFORGE_CONFORMANCE_PYTHON
are the defaults. Without them the check is skipped with a message (exit 0): CI has no NxDI sources.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# HF model_type -> config overrides of the tiny model (dims shared below). Adding a family is one line.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {"tie_word_embeddings": True},
    "mistral": {"tie_word_embeddings": False, "sliding_window": None},
    "qwen2": {"tie_word_embeddings": True, "use_sliding_window": False},  # q/k/v biases (int8 keeps them)
    "qwen3": {"tie_word_embeddings": True, "head_dim": 16},  # q_norm/k_norm, explicit head_dim
}
# neuronforge SDK -> (NxDI source, NxD source). 2.31 runs NxDI 0.10, whose source is not public: 0.9 stands in.
SDK_SOURCES = {"2.28": ("nxdi-0.8", "nxd-0.8"), "2.31": ("nxdi-0.9", "nxd-0.9")}
BATCH_SIZES = (1, 4)
DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, rope_theta=100000.0)  # fmt: skip
TEXTS = ["The capital of France is", "<|im_start|>user\nhi<|im_end|>", "  spaces\tand tabs\n", "café ü 日本"]
CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]
ROOT = Path(__file__).resolve().parents[1]


def make_source(family: str, out: Path) -> Path:
    """A tiny random model of `family` saved by transformers 5 with SmolLM2's tokenizer (as a user's folder is)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from neuronforge.assets.models import fetch

    tokenizer = AutoTokenizer.from_pretrained(fetch("smollm2"))
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), **DIMS, **FAMILIES[family])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export(source: Path, out: Path) -> Path:
    """neuronforge's stage 1 (RTN int8 on NxD's grid), through its CLI."""
    args = ["quantize", "--model", str(source), "--out", str(out), "--no-autoround", "--nsamples", "2"]
    args += ["--calib-seq-len", "32", "--selection", "none"]
    subprocess.run([sys.executable, "-m", "neuronforge.cli", *args], check=True, capture_output=True, cwd=ROOT)
    return out


def reference(source: Path) -> dict[str, Any]:
    """Token ids, chat template and RoPE theta as transformers 5 (our side) reads the source folder."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    return {
        "texts": TEXTS,
        "chat": CHAT,
        "ids": [tokenizer(text).input_ids for text in TEXTS],
        "rendered": tokenizer.apply_chat_template(CHAT, tokenize=False) if tokenizer.chat_template else None,
        "rope_theta": AutoConfig.from_pretrained(source).rope_parameters["rope_theta"],
    }


def run_case(python: str, case: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"PYTHONPATH": str(ROOT), "NEURON_PLATFORM_TARGET_OVERRIDE": "trn1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [python, str(Path(__file__).with_name("worker.py")), json.dumps(case)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"ok": False, "steps": {}, "error": result.stderr[-600:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sources", default=os.environ.get("NEURONFORGE_CONFORMANCE_SOURCES"))
    parser.add_argument("--python", default=os.environ.get("NEURONFORGE_CONFORMANCE_PYTHON"))
    args = parser.parse_args()
    if not args.sources or not args.python:
        print("conformance check skipped: no NxD/NxDI/vllm-neuron sources given (--sources DIR and --python for a "
              "transformers 4.57.6 venv, or $NEURONFORGE_CONFORMANCE_SOURCES / _PYTHON); see docs/conformance.md")  # fmt: skip
        return 0
    sources = Path(args.sources)
    from neuronforge.neuron.nxdi.runtime import model_class_problem

    rows, failed = [], 0
    with tempfile.TemporaryDirectory(prefix="nf-conformance-") as tmp:
        for family in FAMILIES:
            source = make_source(family, Path(tmp) / f"{family}-source")
            model = export(source, Path(tmp) / f"{family}-stage1")
            ref = reference(source)
            for sdk, (nxdi, nxd) in SDK_SOURCES.items():
                if problem := model_class_problem(family, sdk):
                    rows.append((family, sdk, "-", "refused up front (expected)", problem[0]))
                    continue
                for batch in BATCH_SIZES:
                    case = {"model": str(model), "family": family, "sdk": sdk, "batch_size": batch,
                            "nxdi": str(sources / nxdi), "nxd": str(sources / nxd),
                            "vllm_neuron": str(sources / "vllm-neuron"), "reference": ref, "work": tmp}  # fmt: skip
                    result = run_case(args.python, case)
                    failed += not result["ok"]
                    status = "pass" if result["ok"] else f"FAIL: {result['error']}"
                    detail = "; ".join(f"{k}: {v}" for k, v in result["steps"].items())
                    rows.append((family, sdk, str(batch), status, detail))
    print("| family | SDK (NxDI source) | batch | result | steps |")
    print("|---|---|---|---|---|")
    for family, sdk, batch, status, detail in rows:
        print(f"| {family} | {sdk} ({SDK_SOURCES[sdk][0]}) | {batch} | {status} | {detail} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
