"""Every case of the reliability report (and a few of our own), as a new user would hit them.

One table: the command, the exit code and what the `error:` line must name. For each row the test checks
exactly one `error:` and one `fix:` line, no traceback, and that nothing on disk changed: the user's inputs
are byte-identical and no output (not even an empty run directory) was left behind. Tiny models are built
here; validation happens before any model is loaded, so most rows take milliseconds.
Row ids are the report's case numbers (shared/research/audit/reliability.md); "own-*" rows are ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testkit.fakes import make_compiled
from typer.testing import CliRunner

from neuronforge.cli import app

S = ["--iters", "1", "--nsamples", "2", "--calib-seq-len", "32", "--eval-tokens", "64"]
SM = "--role arn:aws:iam::123456789012:role/r --region us-east-1 --install neuronforge==0.1.0 --dry-run"
Q_BAD = " --iters -5 --nsamples 0 --calib-seq-len -1"
PROSE = (
    "The play was first printed in a quarto edition, and the folio text that followed it differs in many "
    "places, so editors have long compared the two in order to recover what the author wrote. "
)


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.fixture(scope="module")
def fx(make_tiny_llama: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models, texts and config files a user might pass, good and broken, under one folder."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("fx")
    ok = make_tiny_llama("bad-inputs-ok")
    shutil.copytree(ok, root / "ok")

    def variant(name: str) -> Path:
        return Path(shutil.copytree(ok, root / name))

    (variant("noconfig") / "config.json").unlink()
    _write(variant("badjson") / "config.json", "{not json")
    _write(variant("listjson") / "config.json", "[1, 2]")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=512)).save_pretrained(root / "gpt2")
    _write(root / "afile", "not a model")
    _write(root / "noweights" / "config.json", (ok / "config.json").read_text())
    truncated = variant("truncated") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    shape = variant("shape") / "model.safetensors"
    tensors = load_file(shape)
    key = "model.layers.0.mlp.down_proj.weight"
    tensors[key] = tensors[key][:, :120].contiguous()
    save_file(tensors, shape, metadata={"format": "pt"})
    shutil.copytree(make_tiny_llama("bad-inputs-v100", vocab_size=100), root / "vocab100")  # tokenizer has 512
    mistral = variant("mistral")
    config = json.loads((mistral / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
    _write(mistral / "config.json", json.dumps(config))
    notok = variant("notok")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (notok / name).unlink(missing_ok=True)

    _broken_shards(ok, root, load_file, save_file)
    for name, changes in CONFIG_DAMAGE.items():
        folder = variant(name)
        config = {**json.loads((folder / "config.json").read_text()), **changes}
        _write(folder / "config.json", json.dumps({k: v for k, v in config.items() if v is not DROP}))
    for name, key, value in (
        ("nan", "model.layers.0.self_attn.q_proj.weight", float("nan")),
        ("inf", "model.layers.1.mlp.up_proj.weight", float("inf")),
    ):
        weights = variant(name) / "model.safetensors"
        tensors = load_file(weights)
        tensors[key][3, 0] = value
        save_file(tensors, weights, metadata={"format": "pt"})
    _checkpoint_content(ok, root, variant, load_file, save_file)
    shutil.copytree(make_compiled(root / "compiled"), root / "comp")
    _write(variant("m_nc") / "modules_to_not_convert.json", '{"modules_to_not_convert": ["lm_head"]}')

    _write(root / "tx" / "empty.txt", "")
    _write(root / "tx" / "short.txt", "one two three four five six seven eight nine ten")
    _write(root / "tx" / "nonutf8.txt", PROSE.encode() * 20 + b"caf\xe9 \xff\n")
    _write(root / "tx" / "malformed.jsonl", "".join(json.dumps({"text": PROSE}) + "\n" for _ in range(4)) + "{oops\n")
    _write(root / "tx" / "notext.jsonl", '{"body": "x"}\n')
    _write(root / "tx" / "nonutf8.jsonl", json.dumps({"text": PROSE}).encode() + b"\n\xff\xfe\n")
    _write(root / "tx" / "medium.txt", PROSE * 6 + "\n\nThe end.\n")  # calibrates (32 tokens), cannot evaluate
    _write(root / "tx" / "nul.txt", "\0" * 20000)  # B05: valid UTF-8
    _write(root / "tx" / "control-only.txt", "\x01\x02\x1b \t\n" * 100)
    _write(root / "cfg" / "bad.yaml", "iters: 1\nstages: [model, quantize\n")
    _write(root / "cfg" / "tab.yaml", "iters: 1\n\tnsamples: 2\n")
    _write(root / "cfg" / "unknown.yaml", "iterations: 5\nfoo: bar\n")
    _write(root / "cfg" / "ten.yaml", 'iters: "ten"\n')
    _write(root / "cfg" / "negative.yaml", "iters: -1\nnsamples: 0\ncalib_seq_len: 0\neval_tokens: 0\n")
    _write(root / "cfg" / "list.yaml", "- iters\n- 1\n")
    _write(root / "cfg" / "bad.toml", "iters = \n")
    _write(root / "cfg" / "cfg.json", '{"iters": 1}')
    _write(root / "cfg" / "yes.yaml", "iters: yes\n")
    _write(root / "cfg" / "float.yaml", "nsamples: 2.0\n")
    _write(root / "cfg" / "half.yaml", "calib_seq_len: 32.5\n")
    _write(root / "cfg" / "nc99.json", '{"modules_to_not_convert": ["layers.99.mlp"]}')
    _write(root / "cfg" / "nchf.json", '{"modules_to_not_convert": ["model.layers.0.mlp.gate_proj"]}')
    _write(root / "cfg" / "ncbare.json", '{"modules_to_not_convert": ["layers.0"]}')
    _write(root / "cfg" / "ncbad.json", '{"modules_to_not_convert": [')
    _write(root / "afile.out", "a file where a folder should be")
    (root / "tx" / "adir.txt").mkdir()
    (root / "cfg" / "adir.yaml").mkdir()
    return root


DROP = object()  # a config.json key removed
CONFIG_DAMAGE: dict[str, dict[str, object]] = {
    "heads_zero": {"num_attention_heads": 0},  # A22
    "cfg_strings": {"hidden_size": "64"},  # A23
    "cfg_negative_layers": {"num_hidden_layers": -1},  # A24
    "rope_bad": {"rope_scaling": {"rope_type": "nonsense", "factor": -1.0}},  # A17
    "no_model_type": {"model_type": DROP},  # A21
}


def _checkpoint_content(
    ok: Path, root: Path, variant: Callable[[str], Path], load_file: Callable[..., dict], save_file: Callable[..., None]
) -> None:
    """Checkpoints whose tensors say something else than config.json (report A04, A12, A19, A36) and one with a
    harmless leftover buffer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    down = "model.layers.0.mlp.down_proj.weight"
    changes: dict[str, Callable[[dict[str, torch.Tensor]], object]] = {
        "int8weights": lambda t: t.update({down: t[down].float().mul(100).round().clamp(-128, 127).to(torch.int8)}),
        "extra_unknown_tensor": lambda t: t.update({"model.layers.0.mlp.extra.weight": torch.ones(4, 4)}),
        "inv_freq": lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}),
        "tie_true_but_untied": lambda t: t.update({"lm_head.weight": -t["model.embed_tokens.weight"]}),
    }
    for name, change in changes.items():
        weights = variant(name) / "model.safetensors"
        tensors = load_file(weights)
        change(tensors)
        save_file(tensors, weights, metadata={"format": "pt"})
    config = json.loads((ok / "config.json").read_text())
    sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    qwen = Qwen2Config(**{key: config[key] for key in sizes}, num_key_value_heads=2, max_position_embeddings=256)
    Qwen2ForCausalLM(qwen).to(torch.bfloat16).save_pretrained(root / "qwen2")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ok / name, root / "qwen2" / name)
    relabelled = Path(shutil.copytree(root / "qwen2", root / "qwen2_as_llama"))
    config = json.loads((relabelled / "config.json").read_text())
    config.update(model_type="llama", architectures=["LlamaForCausalLM"])
    _write(relabelled / "config.json", json.dumps(config))


def _broken_shards(ok: Path, root: Path, load_file: Callable[..., dict], save_file: Callable[..., None]) -> None:
    """A two-shard copy of `ok` with its index, and the damaged indexes of report A06-A10."""
    tensors = load_file(ok / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    sharded = root / "sharded"
    shutil.copytree(ok, sharded, ignore=shutil.ignore_patterns("model.safetensors"))
    for name, names in shards.items():
        save_file({key: tensors[key] for key in names}, sharded / name, metadata={"format": "pt"})
    mapping = {key: name for name, names in shards.items() for key in names}
    wrong = {**mapping, keys[0]: "model-00002-of-00002.safetensors"}
    for name, index in (
        ("shard_badindex", "{not json"),
        ("shard_noweightmap", json.dumps({"metadata": {}})),
        ("shard_indexwrong", json.dumps({"weight_map": wrong})),
        ("shard_missingfile", json.dumps({"weight_map": mapping})),
    ):
        shutil.copytree(sharded, root / name)
        _write(root / name / "model.safetensors.index.json", index)
    (root / "shard_missingfile" / "model-00002-of-00002.safetensors").unlink()
    _write(sharded / "model.safetensors.index.json", json.dumps({"metadata": {}, "weight_map": mapping}))


def _notes(tmp: Path, fx: Path) -> None:
    """Folders of the user's (E53, E25, E26) and one neuronforge wrote that the user then added a file to."""
    _write(tmp / "nc" / "neuron_config.json", "{}")
    _write(tmp / "mine" / "NOTES.md", "my notes")
    shutil.copytree(fx / "comp", tmp / "comp")
    shutil.copytree(fx / "ok", tmp / "ck")
    shutil.copytree(fx / "comp", tmp / "proj" / "compiled")
    shutil.copytree(fx / "ok", tmp / "proj" / "ckpt")
    _write(tmp / "proj" / "NOTES.md", "my notes")
    _write(tmp / "ours" / "neuron_config.json", "{}")
    _write(tmp / "ours" / ".neuronforge-output.json", '{"files": ["neuron_config.json"]}')
    shutil.copytree(tmp / "ours", tmp / "ours-notes")
    _write(tmp / "ours-notes" / "NOTES.md", "my notes")


def _user_folders(tmp: Path, fx: Path) -> None:
    _write(tmp / "o-unrel" / "notes.txt", "mine")
    _write(tmp / "o-dl2" / "package" / "notes.txt", "notes")
    _write(tmp / "o-dl2" / "quantize" / "results.csv", "data")


def _configs(tmp: Path, fx: Path) -> None:
    """Config files with an empty path (report C09, C20) and a key given twice (C08)."""
    _write(tmp / "c-out.yaml", 'out: ""\n')
    _write(tmp / "c-text.yaml", 'text: ""\n')
    _write(tmp / "c-dup.yaml", "iters: 1\nnsamples: 2\niters: 7\n")


def _links(tmp: Path, fx: Path) -> None:
    (tmp / "dang").symlink_to("nowhere")  # a dangling link (report O07)


def _project(tmp: Path, fx: Path) -> None:
    """A project folder holding the user's model (report 4.10: `cd o-dl; run --model ./model --out .`)."""
    shutil.copytree(fx / "ok", tmp / "o-dl" / "model")
    _write(tmp / "o-dl" / "model" / "README-mine.txt", "important")


def _knobs(tmp: Path, fx: Path) -> None:
    """Run configs with a NaN and an infinite knob (C14, C16), a config.json with 10**6 layers (E06)."""
    _write(tmp / "c-nan.yaml", "max_extra_memory: .nan\n")
    _write(tmp / "c-inf.yaml", "selection: threshold\nthreshold: .inf\n")
    config = {**json.loads((fx / "ok" / "config.json").read_text()), "num_hidden_layers": 10**6}
    _write(tmp / "huge" / "config.json", json.dumps(config))


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # {fx}: the fixtures, {tmp}: the current directory of this case; split on spaces
    error: str  # what the error: line must say (whitespace-normalized)
    cwd: str = ""  # relative to {tmp}
    setup: Callable[[Path, Path], None] | None = None


CASES = [
    # models
    Case("1.1", "run --model {fx}/nope --out r " + " ".join(S), "does not exist"),
    Case("1.2", "quantize --model {fx}/nope --out q", "does not exist"),
    Case("1.3", "emulate --model {fx}/nope", "does not exist"),
    Case("1.4", "run --model {fx}/noconfig --out r", "no config.json"),
    Case("1.5", "run --model {fx}/badjson --out r", "is not valid JSON"),
    Case("1.6", "run --model {fx}/listjson --out r", "not an object"),
    Case("1.7", "run --model {fx}/gpt2 --out r", "a 'gpt2' model is not supported"),
    Case("1.8", "run --model {fx}/afile --out r", "not a Hugging Face model folder"),
    Case("1.9", "run --model {fx}/noweights --out r", "no *.safetensors"),
    Case("1.10", "run --model {fx}/truncated --out r", "truncated"),
    Case("1.11", "quantize --model {fx}/truncated --out q", "truncated"),
    Case("1.12", "emulate --model {fx}/truncated", "truncated"),
    Case("1.13", "run --model {fx}/shape --out r", "model.layers.0.mlp.down_proj.weight has shape (64, 120)"),
    Case("1.20", "run --model {fx}/vocab100 --out r", "has 512 tokens but the model's vocab_size is 100"),
    Case("1.22", "emulate --model {fx}/vocab100", "has 512 tokens but the model's vocab_size is 100"),
    Case("1.23", "run --model {fx}/notok --out r", "no usable tokenizer"),
    Case(
        "own-sdk-mistral", "run --model {fx}/mistral --out r --sdk 2.28", "SDK 2.28 cannot serve model_type 'mistral'"
    ),
    # texts
    Case("2.1", "run --model {fx}/ok --out r --text {fx}/tx/empty.txt", "contains no text"),
    Case("2.2", "run --model {fx}/ok --out r --text {fx}/tx/short.txt " + " ".join(S), "fewer than one window"),
    Case("2.3", "run --model {fx}/ok --out r --text {fx}/tx/nonutf8.txt", "is not UTF-8"),
    Case("2.4", "run --model {fx}/ok --out r --text {fx}/tx/malformed.jsonl", "malformed.jsonl:5 is not valid JSON"),
    Case("2.5", "run --model {fx}/ok --out r --text {fx}/tx/notext.jsonl", "notext.jsonl:1 has no text"),
    Case("2.6", "run --model {fx}/ok --out r --text {fx}/tx/nonutf8.jsonl", "is not UTF-8"),
    Case("2.7", "run --model {fx}/ok --out r --text {fx}/tx/medium.txt " + " ".join(S), "evaluation text has"),
    Case("own-text-quantize", "quantize --model {fx}/ok --out q --text {fx}/tx/nonutf8.txt", "is not UTF-8"),
    Case("own-text-emulate", "emulate --model {fx}/ok --text {fx}/tx/nonutf8.jsonl", "is not UTF-8"),
    # configuration
    Case("3.2", "run --config {fx}/cfg/bad.yaml", "expected ',' or ']'"),
    Case("3.3", "run --config {fx}/cfg/tab.yaml", "is not valid YAML"),
    Case("3.4", "run --config {fx}/cfg/unknown.yaml", "unknown key 'iterations' (did you mean 'iters'?)"),
    Case("3.5", "run --config {fx}/cfg/ten.yaml", "iters: Input should be a valid integer"),
    Case("3.6", "run --config {fx}/cfg/negative.yaml", "eval_tokens"),
    Case("3.7", "run --config {fx}/cfg/list.yaml", "key: value pairs"),
    Case("3.8", "run --config {fx}/cfg/bad.toml", "is not valid TOML"),
    Case("3.9", "run --config {fx}/cfg/cfg.json", "unsupported config file type '.json'"),
    Case("3.10", "run --config {fx}/cfg/nope.yaml", "does not exist"),
    Case("3.11a", "run --config {fx}/cfg/yes.yaml", "iters: Input should be a valid integer"),
    Case("3.11b", "run --config {fx}/cfg/float.yaml", "nsamples: Input should be a valid integer"),
    Case("3.11c", "run --config {fx}/cfg/half.yaml", "calib_seq_len: Input should be a valid integer"),
    Case("3.13", "run --iters -1", "iters: Input should be greater than or equal to 0"),
    Case("3.14", "run --nsamples 0", "nsamples"),
    Case("3.15", "run --calib-seq-len 0", "calib_seq_len"),
    Case("3.16", "run --model {fx}/ok --out r --iters 0", "iters must be >= 1"),
    Case("3.17a", "run --dtype int4", "dtype"),
    Case("3.17b", "quantize --model {fx}/ok --out q --dtype int4", "dtype"),
    Case("3.18a", "run --max-extra-memory -1", "max_extra_memory"),
    Case("3.18b", "quantize --model {fx}/ok --out q --max-extra-memory -1", "max_extra_memory"),
    Case("3.19", "run --model {fx}/ok --out r --max-extra-memory 5", "max_extra_memory"),
    Case("3.20", "quantize --model {fx}/ok --out q --not-convert {fx}/cfg/nc99.json", "['layers.99.mlp']"),
    Case("3.21", "quantize --model {fx}/ok --out q --not-convert {fx}/cfg/nchf.json", "model.layers.0.mlp.gate_proj"),
    Case("3.22", "quantize --model {fx}/ok --out q --not-convert {fx}/cfg/ncbare.json", "['layers.0']"),
    Case("3.23a", "quantize --model {fx}/ok --out q --not-convert {fx}/cfg/ncbad.json", "Expecting value"),
    Case("3.23b", "quantize --model {fx}/ok --out q --not-convert {fx}/cfg/missing.json", "does not exist"),
    Case("3.25", "run --model {fx}/ok --out r --modules-to-not-convert layers.99.mlp", "['layers.99.mlp']"),
    Case("3.26a", "emulate --model {fx}/ok --not-convert {fx}/cfg/nchf.json", "match no Linear layer"),
    Case("3.26b", "emulate --model {fx}/ok --not-convert {fx}/cfg/nc99.json", "match no Linear layer"),
    # output locations
    Case("4.1", "run --model {fx}/ok --out {fx}/afile.out", "is a file"),
    Case("4.2", "quantize --model {fx}/ok --out {fx}/afile.out", "is a file"),
    Case("4.8", "run --model {fx}/ok --out o-unrel", "is not a neuronforge run directory", setup=_user_folders),
    Case("4.9", "run --model {fx}/ok --out o-dl2", "is not a neuronforge run directory", setup=_user_folders),
    Case("4.10", "run --model ./model --out .", "contains --model", cwd="o-dl", setup=_project),
    Case("4.11", "run --model {fx}/ok --out {fx}/ok", "is the same location as --model"),
    Case("own-out-in-model", "run --model {fx}/ok --out {fx}/ok/runs", "is inside --model"),
    Case("own-quantize-out-model", "quantize --model {fx}/ok --out {fx}/ok/q", "is inside --model"),
    Case("own-nxd-overwrite-model", "quantize-nxd --model {fx}/ok --out {fx}/ok --overwrite", "same location"),
    Case(
        "own-evaluate-user-folder",
        "evaluate --model {fx}/ok --out o-unrel",
        "neuronforge did not write (notes.txt)",
        setup=_user_folders,
    ),
    Case("own-evaluate-out-model", "evaluate --model {fx}/ok --out {fx}/ok", "is the same location as --model"),
    Case("own-evaluate-budget", "evaluate --model {fx}/ok --out e --max-extra-memory 5", "max_extra_memory"),
    Case("E14", "neuron-config --model {fx}/m_nc --out {fx}/m_nc --not-convert {fx}/cfg/nc99.json", "same location"),
    Case(
        "E53", "neuron-config --model {fx}/ok --out nc", "neuronforge did not write (neuron_config.json)", setup=_notes
    ),
    Case(
        "E25", "package comp --compiled comp --checkpoint ck --overwrite", "same location as --compiled", setup=_notes
    ),
    Case("E26", "package proj --compiled proj/compiled --checkpoint proj/ckpt --overwrite", "contains", setup=_notes),
    Case(
        "own-package-notes",
        "package mine --compiled {fx}/comp --checkpoint {fx}/ok --overwrite",
        "NOTES.md",
        setup=_notes,
    ),
    Case(
        "own-nxd-notes", "quantize-nxd --model {fx}/ok --out mine --overwrite", "did not write (NOTES.md)", setup=_notes
    ),
    Case("own-nxd-in-compiled", "quantize-nxd --model {fx}/ok --out comp --overwrite", "did not write", setup=_notes),
    Case("own-config-ours-no-overwrite", "neuron-config --model {fx}/ok --out ours", "pass --overwrite", setup=_notes),
    Case(
        "own-config-ours-user-file",
        "neuron-config --model {fx}/ok --out ours-notes --overwrite",
        "did not write (NOTES.md): replacing the folder would delete them",
        setup=_notes,
    ),
    Case("own-quantize-user-file", "quantize --model {fx}/ok --out mine", "did not write (NOTES.md)", setup=_notes),
    Case("own-compile-notes", "compile --model {fx}/ok --out mine --overwrite", "did not write", setup=_notes),
    # damaged shards and config values, NaN weights (refused before the model loads, or while it loads)
    Case("A06", "run --model {fx}/shard_badindex --out r", "model.safetensors.index.json is not valid JSON"),
    Case("A07", "run --model {fx}/shard_noweightmap --out r", "has no weight_map"),
    Case("A08", "run --model {fx}/shard_missingfile --out r", "which is not in the folder"),
    Case("A10", "run --model {fx}/shard_indexwrong --out r", "but that shard does not hold it"),
    Case("own-shard-quantize", "quantize --model {fx}/shard_indexwrong --out q", "does not hold it"),
    Case("own-shard-emulate", "emulate --model {fx}/shard_badindex", "is not valid JSON"),
    Case("A17", "run --model {fx}/rope_bad --out r", "config.json is invalid"),
    Case("A21", "run --model {fx}/no_model_type --out r", "has no model_type"),
    Case("A22", "run --model {fx}/heads_zero --out r", "num_attention_heads must be a positive integer, got 0"),
    Case("A23", "run --model {fx}/cfg_strings --out r", "hidden_size must be a positive integer, got '64'"),
    Case("A24", "run --model {fx}/cfg_negative_layers --out r", "num_hidden_layers must be a positive integer"),
    Case("E01", "plan --model {fx}/heads_zero", "num_attention_heads must be a positive integer"),
    Case(
        "X15",
        "quantize --model {fx}/nan --out q --no-autoround " + " ".join(S[:6]),
        "model.layers.0.self_attn.q_proj.weight holds NaN or infinite values",
    ),
    Case("A30", "quantize --model {fx}/inf --out q " + " ".join(S[:6]), "up_proj.weight holds NaN or infinite"),
    Case(
        "X14",
        "emulate --model {fx}/nan --eval-tokens 64 --eval-seq-len 32 --max-new-tokens 0",
        "holds NaN or infinite values",
    ),
    # deployment settings, refused before any stage runs (were refused at package, after quantize and emulate)
    Case("D01", "run --model {fx}/ok --out r --seq-len 256 --tp-degree 3", "tp_degree 3"),
    Case("D03", "run --model {fx}/ok --out r --seq-len 1000000", "exceeds the model's max_position_embeddings"),
    Case("D04", "run --model {fx}/ok --out r --instance ml.bogus.xlarge", "ml.bogus.xlarge is not a known"),
    Case("D05", "run --model {fx}/ok --out r --seq-len 256 --sdk 9.99", "'9.99'"),
    Case("D06", "run --model {fx}/ok --out r --budget-instance ml.bogus.xlarge", "ml.bogus.xlarge is not a known"),
    Case("X04", "run --model {fx}/mistral --out r --seq-len 256 --sdk 2.28", "cannot serve model_type 'mistral'"),
    Case("X13", "run --model {fx}/ok --out r", "seq_len 1024 exceeds the model's max_position_embeddings 256"),
    Case("D15", "emulate --model {fx}/ok --tp-degree 3", "tp_degree 3 does not divide num_attention_heads=4"),
    Case("B03", "run --model {fx}/ok --out r --text {fx}/tx/adir.txt", "adir.txt is a folder, not a file"),
    Case("B14", "run --model {fx}/ok --out r --text /dev/null", "/dev/null is not a regular file"),
    Case("C11", "run --config {fx}/cfg/adir.yaml", "adir.yaml is a folder, not a file"),
    Case("C19", "config init {fx}/cfg/adir.yaml --overwrite", "adir.yaml is a folder"),
    Case("E28", "package pkg --compiled {fx}/comp --checkpoint {fx}/ok --upload /some/dir", "is not an s3:// URI"),
    # run directory
    Case("6.6", "run --stages emulate,foo", "unknown stage(s) foo"),
    Case("6.5", "run --model {fx}/ok --out r --stages emulate", "stage 'model' has no finished output"),
    # round 2: validate33
    Case("C14", "run --config c-nan.yaml --model {fx}/ok --out r", "max_extra_memory: not a number", setup=_knobs),
    Case(
        "C16",
        "run --config c-inf.yaml --model {fx}/ok --out r " + " ".join(S),
        "threshold: not a finite number",
        setup=_knobs,
    ),
    Case("D07", "run --model {fx}/ok --out r --max-extra-memory nan " + " ".join(S), "max_extra_memory: not a number"),
    Case("D08", "quantize --model {fx}/ok --out q --no-autoround --selection topk --topk -1", "topk: Input should be"),
    Case("D10", "quantize --model {fx}/ok --out q --selection threshold --threshold nan", "threshold: not a number"),
    Case("D11", "quantize --model {fx}/ok --out q --selection threshold --threshold -5", "threshold: Input should be"),
    Case("D12", "quantize --model {fx}/ok --out q --selection topk", "selection topk needs topk"),
    Case("D13", "quantize --model {fx}/ok --out q --iters 100000000000000000000000", "iters: Input should be less"),
    Case("E03", "plan --model {fx}/ok --headroom nan", "headroom: not a number"),
    Case("E06", "plan --model huge/config.json", "num_hidden_layers must be at most", setup=_knobs),
    Case("E20", "compile --model {fx}/ok --out comp --tp-degree 0", "invalid compile options: tp_degree"),
    Case("E27", "package pkg --compiled {fx}/comp --checkpoint {fx}/ok --tp-degree 0", "tp_degree: Input should be"),
    Case("E30b", "sagemaker quantize --model-s3 s3://b/m/ --output-s3 s3://b/o/ " + SM + Q_BAD, "calib_seq_len"),
    Case("E33", "sagemaker compile --checkpoint-s3 s3://b/c/ --output-s3 s3://b/o/ --tp-degree 0 " + SM, "tp_degree: "),
    # round 2: paths33
    Case("B15", "run --model {fx}/ok --out r --text {empty} " + " ".join(S), "text: an empty path ('')"),
    Case(
        "C09",
        "run --config c-out.yaml --model {fx}/ok",
        "from c-out.yaml and the command line: out: an empty path",
        setup=_configs,
    ),
    Case(
        "C20",
        "run --config c-text.yaml --model {fx}/ok --out r",
        "c-text.yaml and the command line: text: an empty",
        setup=_configs,
    ),
    Case(
        "C08",
        "run --config c-dup.yaml --model {fx}/ok --out r --stages model",
        "c-dup.yaml gives the key 'iters' twice",
        setup=_configs,
    ),
    Case("O06", "run --model {fx}/ok --out " + "x" * 300 + " " + " ".join(S), "x is too long: a name in it is longer"),
    Case("own-quantize-long-out", "quantize --model {fx}/ok --out " + "q" * 300, "is too long"),
    Case(
        "O07",
        "run --model {fx}/ok --out dang --stages model",
        "dang is a dangling symbolic link (to nowhere",
        setup=_links,
    ),
    Case("own-quantize-dangling", "quantize --model {fx}/ok --out dang/q", "dangling symbolic link", setup=_links),
    # round 2: inputs33 (checkpoint content and text content; every command checks a model folder alike)
    Case("A04", "run --model {fx}/int8weights --out r " + " ".join(S), "looks already quantized"),
    Case("own-A04-plan", "plan --model {fx}/int8weights", "down_proj.weight (I8): the checkpoint looks already"),
    Case("A12", "quantize --model {fx}/extra_unknown_tensor --out q --no-autoround", "model.layers.0.mlp.extra.weight"),
    Case("own-A12-emulate", "emulate --model {fx}/extra_unknown_tensor", "a 'llama' model does not have"),
    Case("own-A12-quantize-nxd", "quantize-nxd --model {fx}/extra_unknown_tensor --out n", "model does not have"),
    Case("A36", "run --model {fx}/qwen2_as_llama --out r " + " ".join(S), 'set model_type to "qwen2"'),
    Case("own-A36-emulate", "emulate --model {fx}/qwen2_as_llama", "6 bias tensors that its 'llama' config.json"),
    Case("own-A36-plan", "plan --model {fx}/qwen2_as_llama", "6 bias tensors that its 'llama' config.json"),
    Case(
        "own-A36-neuron-config",
        "neuron-config --model {fx}/qwen2_as_llama --out c --sdk 2.31",
        "6 bias tensors that its 'llama' config.json",
    ),
    Case("B05", "run --model {fx}/ok --out r --text {fx}/tx/nul.txt " + " ".join(S), "NUL character at line 1 (byte"),
    Case("own-B05-control", "quantize --model {fx}/ok --out q --text {fx}/tx/control-only.txt", "no printable text"),
]


def _tree(root: Path) -> dict[str, str]:
    """Every entry under `root`: files by sha256, folders and links by kind."""
    entries = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            entries[rel] = "link"
        elif path.is_dir():
            entries[rel] = "dir"
        else:
            entries[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def _flat(text: str) -> str:
    return " ".join(text.split())


def check_clean_error(result: object, expected_exit: int = 2) -> str:
    """Exit code, exactly one error: and one fix: line, no traceback; returns the flattened output."""
    output = result.output  # type: ignore[attr-defined]
    assert result.exit_code == expected_exit, output  # type: ignore[attr-defined]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info  # type: ignore[attr-defined]
    assert "Traceback" not in output
    lines = output.splitlines()
    assert len([line for line in lines if line.startswith("error: ")]) == 1, output
    assert len([line for line in lines if line.startswith("fix: ")]) == 1, output
    return _flat(output)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_a_clean_error_and_changes_nothing(
    case: Case, fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.setup is not None:
        case.setup(tmp_path, fx)
    cwd = tmp_path / case.cwd
    monkeypatch.chdir(cwd)
    before = (_tree(fx), _tree(tmp_path))
    argv = [part.format(fx=fx, tmp=tmp_path, empty="") for part in case.argv.split()]
    output = check_clean_error(CliRunner().invoke(app, argv))
    assert case.error in output
    assert (_tree(fx), _tree(tmp_path)) == before, "a failed command changed or left files"


LATE = ("C16", "D08", "D10", "D11", "D12", "D13")  # were refused only after the model load and sensitivity


@pytest.mark.parametrize("case", [case for case in CASES if case.id in LATE], ids=LATE)
def test_selection_knobs_are_refused_before_the_model_loads(
    case: Case, fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options model refuses them, so the CLI, a config file and `nf.*` all stop before any work."""
    from transformers import AutoModelForCausalLM

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", loaded)
    test_bad_input_is_a_clean_error_and_changes_nothing(case, fx, tmp_path, monkeypatch)


def test_lm_eval_tasks_are_checked_before_any_variant_is_quantized(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D27: hellaswag without its data here (offline, empty datasets cache) failed only after three quantize
    runs and left ev/stages/; a misspelt task name likewise. Both are refused before the model loads."""
    import datasets
    from transformers import AutoModelForCausalLM

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the lm-eval tasks were checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", loaded)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")  # nothing cached here
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    before = _tree(fx)
    argv = ["evaluate", "--model", str(fx / "ok"), "--out", "ev", "--lm-eval-tasks"]
    output = check_clean_error(_invoke([*argv, "hellaswag"]))
    assert "the data of lm-eval task(s) hellaswag is not available on this host" in output
    output = check_clean_error(_invoke([*argv, "hellaswagg"]))
    assert "unknown lm-eval task(s) hellaswagg (hellaswagg: did you mean hellaswag" in output
    assert _tree(fx) == before and not (tmp_path / "ev").exists()


def _invoke(argv: list[str]) -> object:
    return CliRunner().invoke(app, argv)


def test_a_deleted_current_directory_is_named(fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """O12: run from a folder deleted underneath the shell said "No such file or directory" without a path (and
    with absolute paths torch failed to load); every command now says what is wrong before it starts."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    for argv in (["run", "--model", str(fx / "ok"), "--out", "r", *S], ["model", "list"]):
        output = check_clean_error(_invoke(argv))
        assert "the current directory no longer exists" in output
    assert _tree(tmp_path) == {}


def test_an_unwritable_cache_names_neuronforge_cache(
    locked_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K01: an empty cache nobody may write, and the embedded model must be fetched: the raw "Operation not
    permitted: <cache>/downloads" with the generic fix became an error naming the variable and what to do."""
    monkeypatch.setenv("NEURONFORGE_CACHE", str(locked_dir))
    before = _tree(tmp_path)
    output = check_clean_error(
        _invoke(["emulate", "--model", "smollm2", "--eval-tokens", "64", "--eval-seq-len", "32"])
    )
    assert "error: NEURONFORGE_CACHE=" in output and "o-immut cannot be written" in output  # (the path may wrap)
    assert "set NEURONFORGE_CACHE to a folder you can write" in output
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("case", "value", "error"),
    [
        ("K02", "{tmp}/cfile", "cfile is a file, not a folder"),
        ("K09", "cache", "NEURONFORGE_CACHE=cache is a relative path: it would be a different cache in every folder"),
    ],
)
def test_a_cache_that_is_a_file_or_relative_is_refused(
    case: str, value: str, error: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K02: "Not a directory: cfile/downloads". K09: a relative NEURONFORGE_CACHE was a new cache in each folder;
    it is refused (resolving it against one folder would still leave the next command's cache elsewhere)."""
    _write(tmp_path / "cfile", "a file")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEURONFORGE_CACHE", value.format(tmp=tmp_path))
    before = _tree(tmp_path)
    for argv in (["model", "list"], ["model", "fetch", "smollm2"]):
        output = check_clean_error(_invoke(argv))
        assert "error: NEURONFORGE_CACHE=" in output and error in output
    assert _tree(tmp_path) == before


# Path flags typed str (they may name an embedded model or an s3:// URI), beside every flag typed Path.
TEXT_PATHS = {("run", "config"), ("run", "model"), ("run", "out"), ("run", "text"), ("config init", "path")}


def _path_flags() -> list[tuple[str, str]]:
    """(command, flag or '' for an argument) for every path parameter of every command."""
    import typer.main

    found = []

    def walk(command: object, path: str) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())
        for param in getattr(command, "params", []):
            annotation = str(param.type_descriptor.annotation)
            if "Path" in annotation or (path, param.name) in TEXT_PATHS or param.name == "model":
                found.append((path, param.opts[0] if param.param_type_name == "option" else ""))

    walk(typer.main.get_command(app), "")
    return found


@pytest.mark.parametrize(("command", "flag"), _path_flags(), ids=[" ".join(p).strip() for p in _path_flags()])
def test_every_path_flag_refuses_an_empty_path(command: str, flag: str, tmp_path: Path) -> None:
    """B15 for every command: '' became the current directory (Path('') is '.') and the error, if any, talked
    about something else; each path flag now refuses it while parsing, before anything is read or written."""
    _write(tmp_path / "mine.txt", "the user's")  # were '' taken as '.', no command could write here
    before = _tree(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        output = check_clean_error(_invoke([*command.split(), *([flag] if flag else []), ""]))
    finally:
        os.chdir(cwd)
    assert "an empty path ('')" in output
    assert _tree(tmp_path) == before


@pytest.fixture
def locked_dir(tmp_path: Path) -> Iterator[Path]:
    """An existing folder nobody may write in, even root (`chattr +i`), or by mode bits for other users."""
    folder = tmp_path / "o-immut"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("this file system cannot make a folder immutable for root")
    else:
        folder.chmod(0o555)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    ("case", "argv"),
    [
        ("4.4", "run --model {fx}/ok --out {locked}/run"),
        ("4.5", "run --model {fx}/ok --out {locked}"),
        ("4.6", "quantize --model {fx}/ok --out {locked}/q"),
    ],
)
def test_unwritable_out_is_refused_before_the_model_loads(
    case: str, argv: str, fx: Path, locked_dir: Path, tmp_path: Path
) -> None:
    before = (_tree(fx), _tree(tmp_path))
    output = check_clean_error(_invoke([p.format(fx=fx, locked=locked_dir) for p in argv.split()]))
    assert "cannot be written" in output
    assert (_tree(fx), _tree(tmp_path)) == before


def test_run_directory_is_only_ever_changed_where_the_run_made_it(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5.4 (a standalone command writing into a run directory) and a user's folder put into one later."""
    monkeypatch.chdir(tmp_path)
    first = _invoke(["run", "--model", str(fx / "ok"), "--out", "r", "--stages", "model"])
    assert first.exit_code == 0, first.output
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["created"] == ["model"]
    _write(tmp_path / "r" / "quantize" / "mine.txt", "the user's")
    before = _tree(tmp_path)

    output = check_clean_error(_invoke(["quantize", "--model", str(fx / "ok"), "--out", "r/q2"]))
    assert "is inside the run directory" in output
    output = check_clean_error(_invoke(["run", "--model", str(fx / "ok"), "--out", "r/inner", "--stages", "model"]))
    assert "is inside the run directory" in output
    output = check_clean_error(
        _invoke(["run", "--model", str(fx / "ok"), "--out", "r", "--stages", "model,quantize", *S, "--no-autoround"])
    )
    assert "was not made by neuronforge" in output and "quantize" in output
    assert _tree(tmp_path) == before


def test_a_file_put_into_a_stage_folder_is_not_deleted_when_the_stage_runs_again(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I08: a user's file inside r/quantize/ was deleted when quantize re-ran; the stage is refused instead."""
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", str(fx / "ok"), "--out", "r", "--stages", "model,quantize", *S, "--no-autoround"]
    first = _invoke([*argv, "--selection", "none"])
    assert first.exit_code == 0, first.output
    _write(tmp_path / "r" / "quantize" / "NOTES.md", "the user's")
    output = check_clean_error(_invoke([*argv, "--selection", "none"]))
    assert "holds files neuronforge did not write (NOTES.md)" in output
    assert (tmp_path / "r" / "quantize" / "NOTES.md").read_text() == "the user's"
    (tmp_path / "r" / "quantize" / "NOTES.md").unlink()
    again = _invoke([*argv, "--selection", "none"])
    assert again.exit_code == 0 and "up to date" in again.output, again.output


def test_a_stage_folder_replaced_by_a_link_or_a_file_is_refused(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I02: r/quantize replaced by a symbolic link to a copy of it was followed and accepted as up to date.
    I12: a stage folder replaced by a regular file was silently replaced (a `.…partial-*` folder left behind).
    Both are refused before anything is written, and the run works again once the folder is back."""
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", str(fx / "ok"), "--out", "r", "--stages", "model,quantize", *S, "--no-autoround"]
    first = _invoke([*argv, "--selection", "none"])
    assert first.exit_code == 0, first.output
    shutil.copytree(tmp_path / "r" / "quantize", tmp_path / "qcopy")
    shutil.rmtree(tmp_path / "r" / "quantize")
    (tmp_path / "r" / "quantize").symlink_to(tmp_path / "qcopy")
    before = _tree(tmp_path)
    output = check_clean_error(_invoke([*argv, "--selection", "none"]))
    assert "r/quantize is a symbolic link" in output and "never follows or replaces a link" in output
    assert _tree(tmp_path) == before
    (tmp_path / "r" / "quantize").unlink()
    shutil.move(tmp_path / "qcopy", tmp_path / "r" / "quantize")

    shutil.rmtree(tmp_path / "r" / "model")
    _write(tmp_path / "r" / "model", "a file in place of the stage folder")
    before = _tree(tmp_path)
    output = check_clean_error(_invoke([*argv, "--selection", "none"]))
    assert "r/model is a file, not the stage folder this run made" in output
    assert _tree(tmp_path) == before
    (tmp_path / "r" / "model").unlink()
    again = _invoke([*argv, "--selection", "none"])
    assert again.exit_code == 0, again.output


def test_a_run_directory_of_another_model_is_replaced_with_a_warning(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O13: `run --out r` where r holds another model's run replaced its results without a word. `run` has no
    --overwrite (a run directory is meant to be re-used: what changed runs again), so it warns, naming both."""
    monkeypatch.chdir(tmp_path)
    first = _invoke(["run", "--model", str(fx / "ok"), "--out", "r", "--stages", "model"])
    assert first.exit_code == 0, first.output
    assert "warning:" not in first.output
    second = _invoke(["run", "--model", str(fx / "m_nc"), "--out", "r", "--stages", "model"])
    assert second.exit_code == 0, second.output
    output = _flat(second.output)
    assert "warning:" in output and "holds the results of another model" in output
    assert "ok)" in output and "m_nc" in output.split("replace them", 1)[1]
    same = _invoke(["run", "--model", str(fx / "m_nc"), "--out", "r", "--stages", "model"])
    assert same.exit_code == 0 and "warning:" not in same.output, same.output


def test_truncated_manifest_and_existing_config_file(fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """6.7 and 3.1."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "r" / ".lock", "")
    _write(tmp_path / "r" / "manifest.json", '{"schema_version": 1, "stag')
    _write(tmp_path / "cfg.yaml", "iters: 3\n")
    before = _tree(tmp_path)
    assert "is not a neuronforge manifest" in check_clean_error(
        _invoke(["run", "--model", str(fx / "ok"), "--out", "r"])
    )
    assert "already exists" in check_clean_error(_invoke(["config", "init", "cfg.yaml"]))
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "what", "help_of"),
    [
        (["run", "--iters", "ten"], "Invalid value for '--iters'", "neuronforge run"),
        (["quantize", "--bogus"], "No such option: --bogus", "neuronforge quantize"),
        (["emulate", "--dtype"], "Option '--dtype' requires an argument", "neuronforge emulate"),
        (["sagemaker", "deploy", "--nope"], "No such option: --nope", "neuronforge sagemaker deploy"),
        (["quantiz"], "No such command 'quantiz'. Did you mean 'quantize'", "neuronforge"),
    ],
)
def test_a_typo_in_a_flag_or_its_value_is_an_error_and_fix_without_traceback(
    args: list[str], what: str, help_of: str
) -> None:
    """3.12: click's usage errors (exit 2) come out as error:/fix: lines like every other bad input."""
    result = CliRunner().invoke(app, args, prog_name="neuronforge")
    output = _flat(result.output)
    assert result.exit_code == 2 and "Traceback" not in output and "╭" not in output, output
    assert f"error: {what}" in output and f"fix: see `{help_of} --help`" in output, output


def test_a_bare_group_still_prints_its_help() -> None:
    result = CliRunner().invoke(app, ["sagemaker"], prog_name="neuronforge")
    assert "Usage: neuronforge sagemaker" in _flat(result.output) and "error:" not in result.output


def test_readme_example_relative_model_and_out_with_spaces(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's `neuronforge run --model ./my-llama` (failed with runs/<name>/my-llama) and 4.7."""
    from neuronforge.pipeline.run.manifest import Manifest

    shutil.copytree(fx / "ok", tmp_path / "my-llama")
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", "./my-llama", "--out", "r/with spaces/run one", "--stages", "model,quantize"]
    result = _invoke([*argv, *S, "--no-autoround", "--selection", "none"])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(tmp_path / "r" / "with spaces" / "run one")
    assert manifest.stages["quantize"].status == "done"
    assert manifest.stages["model"].outputs["model"] == str(tmp_path / "my-llama")
    assert manifest.config["model"] == str(tmp_path / "my-llama")


def test_nothing_quantized_is_said_plainly(fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3.19 / 3.24: every block kept bf16 (a duplicate entry too): no grid agreement over 0 weights, no int8 heading."""
    blocks = ["lm_head"] + [f"layers.{i}.{kind}" for i in range(2) for kind in ("self_attn", "mlp")]
    listing = _write(tmp_path / "all.json", json.dumps({"modules_to_not_convert": [*blocks, "layers.0.mlp"]}))
    monkeypatch.chdir(tmp_path)
    result = _invoke(["quantize", "--model", str(fx / "ok"), "--out", "q", "--not-convert", str(listing), *S[:6]])
    assert result.exit_code == 0, result.output
    output = _flat(result.output)
    assert "nothing was quantized" in output and "grid agreement (NxD re-quantization): n/a" in output
    report = json.loads((tmp_path / "q" / "quantization_report.json").read_text())
    assert report["grid_agreement"] is None and report["quantized_weights"] == 0
    kept = json.loads((tmp_path / "q" / "modules_to_not_convert.json").read_text())["modules_to_not_convert"]
    assert sorted(kept) == sorted(blocks)  # the duplicate entry is listed once

    emulated = _invoke(
        [
            "emulate",
            "--model",
            str(fx / "ok"),
            "--not-convert",
            str(listing),
            "--eval-tokens",
            "64",
            "--eval-seq-len",
            "32",
            "--max-new-tokens",
            "0",
        ]
    )
    assert emulated.exit_code == 0, emulated.output
    assert "bf16 weights (nothing quantized" in _flat(emulated.output) and "int8" not in emulated.output


def test_sigterm_stops_a_run_with_an_error_and_no_partial_output(fx: Path, tmp_path: Path) -> None:
    """5.7: SIGTERM (docker stop, spot interruption) used to kill silently, leaving the manifest at 'running'."""
    from neuronforge.pipeline.run.manifest import Manifest

    run_dir = tmp_path / "run"
    argv = ["run", "--model", str(fx / "ok"), "--out", str(run_dir), "--stages", "model,quantize", "--iters", "50"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuronforge.cli", *argv, *S[2:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    tuning, lines = threading.Event(), []

    def watch() -> None:
        for line in iter(proc.stdout.readline, ""):  # type: ignore[union-attr]
            lines.append(line)
            if ">> quantize" in line:  # the stage has started (its temp folder exists)
                tuning.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    try:
        assert tuning.wait(300), "quantize never started:\n" + "".join(lines)
        time.sleep(1)  # into the stage's work (its temp folder exists)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    output = _flat("".join(lines))
    assert "error: stopped by SIGTERM" in output and "fix: run the same command again" in output
    record = Manifest.load(run_dir).stages["quantize"]
    assert (record.status, record.message) == ("failed", "stopped by SIGTERM")
    assert not [p for p in run_dir.iterdir() if ".partial-" in p.name or ".old-" in p.name]


class _Freed:
    pass


def _signal_in_del() -> None:
    class SignalledWhileFreed:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode, still inside __del__
            sum(range(1000))

    SignalledWhileFreed()  # freed at once


def _signal_in_weakref_callback() -> None:
    import weakref

    def callback(ref: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        sum(range(1000))

    obj = _Freed()
    ref = weakref.ref(obj, callback)
    del obj
    assert ref() is None


@pytest.mark.parametrize("trigger", [_signal_in_del, _signal_in_weakref_callback], ids=["__del__", "weakref-G10"])
def test_a_sigterm_that_lands_in_a_finalizer_is_not_lost(trigger: Callable[[], None]) -> None:
    """Python drops exceptions raised in `__del__` and in weakref callbacks: a SIGTERM handled there was lost and
    the command went on to exit 0 (CI: a garbage-collected regex pattern; report G10: `evaluate`, a
    WeakKeyDictionary callback). It is delivered again instead."""
    from neuronforge.cli.app import stop_on_sigterm
    from neuronforge.errors import Interrupted

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP), sys.unraisablehook
    stop_on_sigterm()
    try:
        with pytest.raises(Interrupted):
            trigger()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no later delivery may reach pytest's default handler
        time.sleep(0.2)
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGHUP, previous[1])
        sys.unraisablehook = previous[2]


def test_sighup_stops_with_an_error_line() -> None:
    """G11r: a closed terminal (SIGHUP) exited 129 with no message and the manifest left at 'running'."""
    from neuronforge.cli.app import stop_on_sigterm
    from neuronforge.errors import Interrupted, interrupt_message

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP), sys.unraisablehook
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # (a background shell may ignore it: then `nohup` rules apply)
    stop_on_sigterm()
    try:
        with pytest.raises(Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
        assert raised.value.signal_number == signal.SIGHUP and interrupt_message(raised.value) == "stopped by SIGHUP"
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGHUP, previous[1])
        sys.unraisablehook = previous[2]


def test_an_empty_prompt_is_refused_before_the_model_loads(fx: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D17: `emulate --prompt ''` was refused only after the whole perplexity run."""
    import neuronforge.neuron.numerics.emulate

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(neuronforge.neuron.numerics.emulate, "load_emulated", never)
    output = check_clean_error(_invoke(["emulate", "--model", str(fx / "ok"), "--prompt", "", "--eval-tokens", "64"]))
    assert "--prompt is empty after tokenization" in output


def test_a_lock_that_is_a_folder_is_named(fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """I11: `.lock` replaced by a folder gave the raw 'Is a directory' with the generic fix."""
    monkeypatch.chdir(tmp_path)
    assert _invoke(["run", "--model", str(fx / "ok"), "--out", "r", "--stages", "model"]).exit_code == 0
    (tmp_path / "r" / ".lock").unlink()
    (tmp_path / "r" / ".lock").mkdir()
    output = check_clean_error(_invoke(["run", "--model", str(fx / "ok"), "--out", "r", "--stages", "model"]))
    assert "r/.lock is not the run's lock file" in output and "fix: remove" in output


def test_a_full_disk_during_quantize_is_one_error_and_the_next_run_works(
    fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F02: ENOSPC inside safetensors is a SafetensorError (no OSError): it was a traceback."""
    import safetensors.torch
    from safetensors import SafetensorError

    def disk_full(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.chdir(tmp_path)
    argv = ["quantize", "--model", str(fx / "ok"), "--out", "q", "--no-autoround", "--selection", "none", *S[2:6]]
    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", disk_full)
        output = check_clean_error(_invoke(argv))
    assert f"the disk holding {tmp_path / 'q'} is full: writing it needs more than" in output
    assert "free space on that disk" in output and list(tmp_path.iterdir()) == []
    result = _invoke(argv)
    assert result.exit_code == 0, result.output


def test_thread_count_is_capped_to_the_machine(fx: Path) -> None:
    """D19: `emulate --threads 100000` made the tokenizer's thread pool fail, then segfaulted (exit 139)."""
    import torch

    from neuronforge.core.devices import usable_cpus

    before = torch.get_num_threads()
    try:
        argv = ["emulate", "--model", str(fx / "ok"), "--threads", "100000", "--eval-tokens", "64"]
        result = _invoke([*argv, "--eval-seq-len", "32", "--max-new-tokens", "2"])
        assert result.exit_code == 0, result.output
        assert f"--threads 100000 capped at {usable_cpus()}" in _flat(result.output)
        assert torch.get_num_threads() <= usable_cpus()
    finally:
        torch.set_num_threads(before)


def _api_cases(fx: Path, tmp: Path) -> dict[str, Callable[[], object]]:
    """The Python API misused as report J01-J21 did (and J05: out inside the model folder)."""
    import neuronforge as nf

    def meta_model() -> object:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(fx / "ok"))
        return nf.quantize_model(model, AutoTokenizer.from_pretrained(fx / "ok"))

    def loaded() -> object:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(fx / "ok")

    return {
        "J01": lambda: nf.quantize(str(fx / "ok")),
        "J02": lambda: nf.quantize(None),
        "J05": lambda: nf.quantize(nf.QuantizeOptions(model=str(fx / "ok"), out=fx / "ok" / "q")),
        "J07": lambda: nf.run({"model": str(fx / "ok"), "out": str(tmp / "r")}),
        "J09": lambda: nf.quantize_model(None, None),
        "J11": lambda: nf.quantize_model(loaded(), "a string as tokenizer"),
        "J18": lambda: nf.load_emulated(str(fx / "ok"), "int8"),
        "J20": lambda: nf.plan(nf.load_model_shape(fx / "ok"), "int8"),
        "J21": meta_model,
        "own-emulate": lambda: nf.emulate("model", nf.EmulationSpec()),
        "own-evaluate": lambda: nf.evaluate("eval"),
        "own-compile": lambda: nf.compile({"model": "m"}),
        "own-A04-api": lambda: nf.quantize(nf.QuantizeOptions(model=str(fx / "int8weights"), out=tmp / "q")),
        "own-A36-api": lambda: nf.load_model_shape(fx / "qwen2_as_llama"),
    }


API_CASES = {
    "J01": "nf.quantize takes a QuantizeOptions, got str",
    "J02": "nf.quantize takes a QuantizeOptions, got NoneType",
    "J05": "is inside --model",
    "J07": "nf.run takes a RunConfig, got dict",
    "J09": "nf.quantize_model takes a loaded model",
    "J11": "nf.quantize_model takes a tokenizer",
    "J18": "nf.load_emulated takes a EmulationSpec, got str",
    "J20": "nf.plan takes a Deployment, got str",
    "J21": "the model's weights are on the meta device",
    "own-emulate": "nf.emulate takes a loaded model",
    "own-evaluate": "nf.evaluate takes a EvaluateOptions, got str",
    "own-compile": "nf.compile takes a CompileOptions, got dict",
    "own-A04-api": "looks already quantized",
    "own-A36-api": 'set model_type to "qwen2"',
}


@pytest.mark.parametrize(("case", "error"), API_CASES.items(), ids=list(API_CASES))
def test_python_api_misuse_is_a_neuronforge_error(
    case: str, error: str, fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`nf.*` with an argument of the wrong type raises NeuronforgeError naming it, never an AttributeError or a
    torch error many frames deep, and changes nothing."""
    from neuronforge.errors import NeuronforgeError

    monkeypatch.chdir(tmp_path)
    before = (_tree(fx), _tree(tmp_path))
    with pytest.raises(NeuronforgeError) as raised:
        _api_cases(fx, tmp_path)[case]()
    assert error in _flat(str(raised.value)) and raised.value.fix
    assert (_tree(fx), _tree(tmp_path)) == before


S3_CASES = [
    ("7.1", "run --model {fx}/ok --out s3://missing-bucket/x", "S3 bucket 'missing-bucket' does not exist"),
    ("7.2", "run --model s3://nf-test/empty-prefix/ --out r", "nothing found at s3://nf-test/empty-prefix/"),
    ("7.3", "run --model s3://missing-bucket/m/ --out r", "S3 bucket 'missing-bucket' does not exist"),
    ("7.4", "run --model s3://nf-test/models/ok/config.json --out r", "not a Hugging Face model folder"),
    ("7.5", "run --model {fx}/ok --out r --text s3://nf-test/texts/none.txt", "nothing found at"),
    ("7.6", "run --model s3:// --out r", "s3://"),
    ("7.9", "run --config s3://nf-test/cfg/bad.yaml", "expected ',' or ']'"),
    (
        "own-s3-out-in-model",
        "run --model s3://nf-test/models/ok/ --out s3://nf-test/models/ok/run",
        "is inside --model",
    ),
    ("own-s3-out-not-a-run", "run --model {fx}/ok --out s3://nf-test/models/ok/", "is not a neuronforge run directory"),
]


@pytest.mark.parametrize(("case", "argv", "error"), S3_CASES, ids=[case[0] for case in S3_CASES])
def test_s3_inputs_and_outputs(
    case: str, argv: str, error: str, fx: Path, tmp_path: Path, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("NEURONFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="nf-test")
    for file in (fx / "ok").iterdir():
        s3.upload_file(str(file), "nf-test", f"models/ok/{file.name}")
    s3.put_object(Bucket="nf-test", Key="cfg/bad.yaml", Body=(fx / "cfg" / "bad.yaml").read_bytes())
    objects = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="nf-test")["Contents"])
    before = _tree(fx)
    output = check_clean_error(_invoke([part.format(fx=fx) for part in argv.split()]))
    assert error in output
    assert _tree(fx) == before and not (tmp_path / "r").exists()
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket="nf-test")["Contents"]) == objects


def test_doctor_names_what_is_wrong_with_the_model(fx: Path) -> None:
    """8.4-8.6: doctor flags an unsupported architecture and a file, and still exits 0 (it is a report)."""
    for model, expected in (("gpt2", "a 'gpt2' model is not supported"), ("afile", "not a Hugging Face model folder")):
        result = _invoke(["doctor", "--json", "--model", str(fx / model)])
        assert result.exit_code == 0, result.output
        checks = {check["name"]: check for check in json.loads(result.output)["checks"]}
        assert checks["Model"]["status"] == "warn" and expected in checks["Model"]["detail"]
    for model, expected in (("shard_badindex", "is not valid JSON"), ("heads_zero", "num_attention_heads")):
        checks = {
            c["name"]: c for c in json.loads(_invoke(["doctor", "--json", "--model", str(fx / model)]).output)["checks"]
        }
        assert checks["Model"]["status"] == "warn" and expected in checks["Model"]["detail"]  # E46/E47: were "ok"
    ok = json.loads(_invoke(["doctor", "--json", "--model", str(fx / "ok")]).output)
    checks = {check["name"]: check for check in ok["checks"]}
    assert checks["Model"]["status"] == "ok" and "llama, 2 layers" in checks["Model"]["detail"]
    assert "GiB at its peak, in the sensitivity analysis" in checks["Memory"]["detail"]
    missing = json.loads(_invoke(["doctor", "--json", "--model", str(fx / "nope")]).output)
    assert "no such folder" in missing["model"]


def test_model_list_shows_the_fetched_state() -> None:
    """8.7: `[fetched]` was read as rich markup and vanished."""
    result = _invoke(["model", "list"])
    assert result.exit_code == 0 and ("[fetched]" in result.output or "[not fetched]" in result.output)


@pytest.mark.parametrize(
    ("case", "env", "error"),
    [
        ("7.7", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "no usable AWS credentials"),
        ("7.8", {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}, "cannot reach S3"),
    ],
)
def test_aws_unavailable(
    case: str, env: dict[str, str | None], error: str, fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a fresh session here, and the old one back afterwards
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name, value in {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        **env,
    }.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    monkeypatch.setenv("NEURONFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    output = check_clean_error(_invoke(["run", "--model", "s3://nf-test/models/ok/", "--out", "r"]))
    assert error in output and not (tmp_path / "r").exists()


def test_odd_dimensions_untied_mistral_fp8_all_blocks(
    make_tiny_llama: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1.14-1.19: dims that are not multiples of 32 (AutoRound leaves such layers alone: they are rounded on NxD's
    grid), untied head, Mistral, fp8, every block quantized; the checkpoint then emulates on its own."""
    from transformers import MistralConfig, MistralForCausalLM

    source = make_tiny_llama("odd-base")
    model = tmp_path / "mistral_odd"
    config = MistralConfig(
        vocab_size=512,
        hidden_size=96,
        intermediate_size=200,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    MistralForCausalLM(config).save_pretrained(model)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, model / name)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--model", str(model), "--out", "r", "--stages", "model,quantize", "--dtype", "f8e4m3"]
    result = _invoke([*argv, "--selection", "none", *S])
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "r" / "quantize" / "checkpoint"
    report = json.loads((checkpoint / "quantization_report.json").read_text())
    assert report["grid_agreement"] == 1.0 and report["modules_to_not_convert"] == []
    assert ".partial" not in json.dumps(report)  # no path of the stage's temporary folder, gone once it finished
    emulated = _invoke(
        [
            "emulate",
            "--model",
            str(checkpoint),
            "--dtype",
            "f8e4m3",
            "--eval-tokens",
            "64",
            "--eval-seq-len",
            "32",
            "--max-new-tokens",
            "0",
        ]
    )
    assert emulated.exit_code == 0, emulated.output
    assert "15 of 15 Linears quantized" in _flat(emulated.output)


@pytest.fixture(scope="module")
def unserved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny real checkpoints of families NxDI does not serve as neuronforge needs (MoE, Gemma), and a Mistral shaped
    like Mistral-NeMo (head_dim 32 while hidden 64 / 4 heads = 16), each saved by transformers."""
    from transformers import AutoModelForCausalLM, GemmaConfig, MistralConfig, MixtralConfig, Qwen3MoeConfig

    root = tmp_path_factory.mktemp("unserved")
    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    for name, config in {
        "mixtral": MixtralConfig(**small, num_key_value_heads=1, num_local_experts=2, num_experts_per_tok=1),
        "qwen3_moe": Qwen3MoeConfig(**small, num_key_value_heads=1, num_experts=2, moe_intermediate_size=32),
        "gemma": GemmaConfig(**small, num_key_value_heads=1, head_dim=16),
        "nemo": MistralConfig(**{**small, "hidden_size": 64}, num_key_value_heads=1, head_dim=64),
    }.items():
        AutoModelForCausalLM.from_config(config).save_pretrained(root / name)
    return root


@pytest.mark.parametrize("model", ["mixtral", "qwen3_moe", "gemma", "nemo"])
@pytest.mark.parametrize(
    "argv",
    [
        "run --model {m} --out r",
        "quantize --model {m} --out q",
        "emulate --model {m}",
        "neuron-config --model {m} --out c --sdk 2.31",
        "plan --model {m}",
    ],
)
def test_an_unserved_family_is_refused_before_any_work(
    unserved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, argv: str
) -> None:
    """Everything but llama/mistral/qwen2/qwen3 dense is refused from config.json alone, with the supported list; a
    Mistral whose head_dim NxDI's Mistral class ignores (NEW-2) with the reason. Nothing is written."""
    monkeypatch.chdir(tmp_path)
    output = check_clean_error(_invoke(argv.format(m=unserved / model).split()))
    if model == "nemo":
        assert "head_dim 64" in output and "hidden_size // num_attention_heads = 32" in output
    else:
        assert f"a '{model}' model is not supported" in output
        assert "llama (Llama 2/3.x), mistral (Mistral 7B), qwen2 (Qwen2, Qwen2.5), qwen3 (Qwen3 dense)" in output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("model", "warning"),
    [
        ("tie_true_but_untied", "holds a lm_head.weight that differs from model.embed_tokens.weight; it is ignored"),
        ("inv_freq", "1 leftover buffer(s) are ignored (model.layers.0.self_attn.rotary_emb.inv_freq)"),
    ],
    ids=["A19", "own-leftover-buffer"],
)
def test_a_tensor_loading_ignores_is_named_once_and_left_out_of_the_export(
    model: str, warning: str, fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tied model's own lm_head copy (transformers and NxDI tie it to the embedding) and a leftover RoPE buffer
    are what every loader ignores: one `warning:` line says so (exit 0), and the export leaves them out, so the
    next stage neither warns again nor ships them. On main both were silently copied into the checkpoint."""
    from safetensors import safe_open

    monkeypatch.chdir(tmp_path)
    result = _invoke(["quantize", "--model", str(fx / model), "--out", "q", *S[:6], "--no-autoround"])
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: ")]  # type: ignore[attr-defined]
    assert len(warnings) == 1 and warning in warnings[0], warnings
    with (
        safe_open(tmp_path / "q" / "model.safetensors", framework="pt") as written,
        safe_open(fx / "ok" / "model.safetensors", framework="pt") as source,
    ):
        assert sorted(written.keys()) == sorted(source.keys())


def test_plan_checks_a_model_folder_as_run_does(fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """E05: plan shares run's folder check (family, config values, shards, tensors); a supported Qwen2 still plans."""
    monkeypatch.chdir(tmp_path)
    result = _invoke(["plan", "--model", str(fx / "qwen2")])
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "Smallest inf2 instance that fits" in _flat(result.output)  # type: ignore[attr-defined]
    assert "a 'gpt2' model is not supported" in check_clean_error(_invoke(["plan", "--model", str(fx / "gpt2")]))
