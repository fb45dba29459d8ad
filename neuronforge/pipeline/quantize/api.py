"""Stage 1 entry point: sensitivity -> selection -> AutoRound on NxD's grid -> grid-exact bf16 checkpoint.

The output folder is an ordinary bf16 HF checkpoint (same shards as the input) whose quantized weights
NxD re-quantizes to exactly the codes AutoRound tuned; the grid check covers what is written (each shard
is read back) and the folder only appears (atomically) when it passes at 100%. Host memory: the model
once in bf16 (AutoRound itself casts it to fp32) plus one shard; see README "Large models".
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pydantic

from neuronforge.core.atomic import atomic_dir, atomic_write_json
from neuronforge.errors import NeuronforgeError, validated

if TYPE_CHECKING:
    import torch
    from torch import nn

    from neuronforge.pipeline.quantize.grid_export import Agreement
    from neuronforge.pipeline.quantize.sensitivity import Block, SensitivityResult


class QuantizeOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    model: str  # "smollm2" or HF folder (s3:// support is added by the run orchestrator)
    out: Path
    dtype: Literal["int8", "f8e4m3"] = "int8"
    iters: int = pydantic.Field(50, ge=0)
    nsamples: int = pydantic.Field(32, ge=1)
    calib_seq_len: int = pydantic.Field(256, ge=2)
    text: Path | None = None
    sensitivity: Literal["first_order", "measured", "variance"] = "first_order"
    selection: Literal["budget", "topk", "threshold", "none"] = "budget"
    max_extra_memory: float = 0.10
    topk: int | None = None
    threshold: float | None = None
    modules_to_not_convert: list[str] | None = None  # explicit list: skips selection
    autoround: bool = True  # False = RTN on NxD's grid (no tuning)
    # AutoRound's per-row range shrink (max_scale). Off by default: at 8 bits it clips far more than it saves
    # (measured on SmolLM2: row ranges cut to 0.44x and held-out KL 2x worse than RTN; see README).
    minmax_tuning: bool = False
    # Budget selection by instance: keep as many blocks bf16 as still fit this instance, for the deployment below
    # (compile's defaults); replaces max_extra_memory.
    budget_instance: str | None = None
    kv: Literal["fp8", "bf16"] = "fp8"
    seq_len: int = pydantic.Field(1024, ge=1)
    batch_size: int = pydantic.Field(1, ge=1)
    tp_degree: int | None = pydantic.Field(None, ge=1)

    @pydantic.model_validator(mode="after")
    def _budget_instance_needs_budget(self) -> QuantizeOptions:
        if self.budget_instance is not None and (self.selection != "budget" or self.modules_to_not_convert is not None):
            raise ValueError(
                "budget_instance chooses the bf16 blocks: use it with selection 'budget' and no explicit list"
            )
        return self


class QuantizeResult(pydantic.BaseModel):
    out_dir: Path
    modules_to_not_convert: list[str]
    grid_agreement: float
    naive_agreement: float | None
    value_agreement: float
    naive_value_agreement: float | None
    timings: dict[str, float]


WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")


def options_from(**values: Any) -> QuantizeOptions:
    """Options from keyword values; a bad value is a NeuronforgeError, not a pydantic traceback."""
    return validated(QuantizeOptions, "quantize", **values)


def _explicit_kept(entries: list[str], blocks: list[Block]) -> list[str]:
    """Validate a user's list against the model's canonical block names (NxDI matches substrings)."""
    names = [b.name for b in blocks]
    unknown = [e for e in entries if e not in names]
    if unknown:
        raise NeuronforgeError(
            f"modules_to_not_convert entries {unknown} are not blocks of this model",
            f"use canonical names such as {names[:3]} (lm_head, layers.N.self_attn, layers.N.mlp)",
        )
    wanted = set(entries) | {b.name for b in blocks if b.forced}
    return [n for n in names if n in wanted]


def read_not_convert_file(path: Path) -> list[str]:
    """Read NxDI's `{"modules_to_not_convert": [...]}` (or a bare JSON list)."""
    import json

    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NeuronforgeError(f"cannot read modules_to_not_convert file {path} ({exc})", "pass a JSON file") from None
    entries = payload.get("modules_to_not_convert") if isinstance(payload, dict) else payload
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise NeuronforgeError(
            f"{path} has no list of strings", 'write {"modules_to_not_convert": ["layers.0.mlp", ...]}'
        )
    return entries


@dataclass
class ExportCheck:
    """What the shard-by-shard export measured: grid agreement (ours and AutoRound's stock export) and error."""

    ours: Agreement
    naive: Agreement
    per_block: dict[str, dict[str, float]]
    export_s: float = 0.0
    verify_s: float = 0.0


def _export(src: Path, dst: Path, model: nn.Module, targets: list[str], dtype: str) -> ExportCheck:
    """Write `src`'s files to `dst` with every target Linear's weight on NxD's grid, one shard at a time.

    Per shard: each target weight is rounded to NxD's grid from the model (tuned fp32 or bf16), turned into grid-exact
    bf16 and checked against the intended codes; the Linear then holds that bf16 tensor (the model's own copy is
    released, so no second copy of the model builds up). Every other tensor comes from the memory-mapped source
    shard, cast to bf16 (NxDI's input dtype; bf16 sources are copied bit for bit). The written shard is read back
    and must equal what was checked, bit for bit. Extra memory: one shard's tensors. The grid math (elementwise
    IEEE fp32 and row maxima, so the same bits on any device) runs on the accelerator when there is one.
    """
    import json

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from neuronforge.core.devices import accelerator
    from neuronforge.core.progress import track
    from neuronforge.hf.folders import shard_keys
    from neuronforge.neuron.grid import quantize_weight, row_chunks
    from neuronforge.neuron.module_names import block_of
    from neuronforge.pipeline.quantize import grid_export

    for item in src.iterdir():
        if item.is_file() and not any(item.match(p) for p in WEIGHT_FILES):
            shutil.copy2(item, dst / item.name)
    linears = {f"{name}.weight": model.get_submodule(name) for name in targets}
    check = ExportCheck(grid_export.Agreement(0, 0), grid_export.Agreement(0, 0), {})
    device = accelerator()
    total = 0
    shards = shard_keys(src)
    for shard, keys in track(list(shards.items()), "grid-exact export, shard by shard"):
        t0 = time.perf_counter()
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(src / shard, framework="pt") as handle:
            for key in keys:
                source = handle.get_tensor(key)
                if key not in linears:
                    tensors[key] = source.to(torch.bfloat16) if source.is_floating_point() else source
                    continue
                linear = linears[key]
                stored = torch.empty(source.shape, dtype=torch.bfloat16)
                err = check.per_block.setdefault(block_of(key.removesuffix(".weight")), {"sq_err": 0.0, "sq_norm": 0.0})
                for rows in row_chunks(source.shape):  # every step is per row: chunks bound the fp32 temporaries
                    original = source[rows].to(device)
                    codes, scale = quantize_weight(linear.weight[rows].detach().to(device).float(), dtype)
                    exact = grid_export.exact_bf16(codes, scale, dtype)
                    intended = codes.float() * scale
                    check.ours += grid_export.agreement(exact, codes, dtype, intended_values=intended)
                    check.naive += grid_export.naive_agreement(original, dtype)
                    err["sq_err"] += float((exact.float() - original.float()).pow(2).sum())
                    err["sq_norm"] += float(original.float().pow(2).sum())
                    stored[rows] = exact.cpu()
                linear.weight = torch.nn.Parameter(stored, requires_grad=False)
                tensors[key] = stored
            t1 = time.perf_counter()
            save_file(tensors, dst / shard, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        with safe_open(dst / shard, framework="pt") as handle:
            differ = [key for key in keys if not torch.equal(handle.get_tensor(key), tensors[key])]
        if differ:
            raise NeuronforgeError(
                f"{dst / shard} does not hold what was checked ({differ[:3]})",
                "check the disk holding --out (full or failing) and run again",
            )
        del tensors
        check.export_s += t1 - t0
        check.verify_s += time.perf_counter() - t1
    missing = sorted(set(linears) - {key for keys in shards.values() for key in keys})
    if missing:
        raise NeuronforgeError(
            f"weights {missing[:3]} are not in {src}'s safetensors", "re-save the model with save_pretrained"
        )
    index = src / "model.safetensors.index.json"
    if index.exists():
        payload = json.loads(index.read_text())
        payload.setdefault("metadata", {})["total_size"] = total
        atomic_write_json(dst / index.name, payload)
    return check


def _versions() -> dict[str, str]:
    from neuronforge.core.package_versions import package_versions

    return package_versions(("neuronforge", "torch", "transformers", "auto-round"))


def _analyze(model: nn.Module, samples: list[torch.Tensor], options: QuantizeOptions) -> SensitivityResult:
    from neuronforge.core.progress import progress
    from neuronforge.pipeline.quantize.sensitivity import analyze, find_blocks

    blocks = [b for b in find_blocks(model) if not b.forced]
    with progress() as bar:
        total = len(blocks) if options.sensitivity == "measured" else 1
        task = bar.add_task(f"sensitivity ({options.sensitivity})", total=total)
        result = analyze(model, samples, options.dtype, options.sensitivity, step=lambda: bar.advance(task))
        bar.update(task, completed=total)
    return result


def _instance_budget(options: QuantizeOptions, src: Path) -> Callable[[Sequence[str]], bool]:
    """Does the model, with these blocks kept bf16, fit options.budget_instance (neuron/plan.py)?"""
    from neuronforge.neuron.config import normalize_instance
    from neuronforge.neuron.plan import deployment_from, instance_budget

    deployment = deployment_from(
        dtype=options.dtype, kv=options.kv, seq_len=options.seq_len, batch_size=options.batch_size
    )
    return instance_budget(src, normalize_instance(options.budget_instance), deployment, options.tp_degree)


def quantize(options: QuantizeOptions) -> QuantizeResult:
    """Run stage 1 and write `options.out` atomically. See the module docstring."""
    from neuronforge.assets.models import resolve_model
    from neuronforge.assets.texts import calibration_samples, resolve_splits
    from neuronforge.hf.folders import load_model, load_tokenizer
    from neuronforge.neuron.module_names import block_of
    from neuronforge.neuron.qlinear import quantizable_linears
    from neuronforge.pipeline.quantize import grid_export
    from neuronforge.pipeline.quantize.plots import sensitivity_chart
    from neuronforge.pipeline.quantize.selection import select
    from neuronforge.pipeline.quantize.sensitivity import find_blocks

    timings: dict[str, float] = {}
    start = time.perf_counter()
    out = Path(options.out).expanduser()
    if out.exists():
        raise NeuronforgeError(f"output folder {out} already exists", "pick a new --out or delete the old folder")
    src = resolve_model(options.model)
    fits = _instance_budget(options, src) if options.budget_instance else None  # refuses before any heavy work
    tokenizer = load_tokenizer(src)
    # Once, in bf16 (what NxDI reads): heavy steps upcast one block at a time on the accelerator.
    model = load_model(src)
    if not [name for name in quantizable_linears(model) if name != "lm_head"]:
        raise NeuronforgeError(
            f"{src} has no decoder Linear layers to quantize (attention/MLP projections)",
            "pass a Llama/Mistral checkpoint with num_hidden_layers >= 1",
        )
    blocks = find_blocks(model)
    samples = calibration_samples(
        tokenizer, resolve_splits(options.text).calibration, options.nsamples, options.calib_seq_len
    )
    timings["load"] = time.perf_counter() - start

    sensitivity = None
    if options.modules_to_not_convert is not None:
        kept = _explicit_kept(options.modules_to_not_convert, blocks)
    else:
        sensitivity = _analyze(model, samples, options)
        timings["sensitivity"] = sensitivity.seconds
        kept = select(
            blocks,
            sensitivity.scores,
            options.selection,
            options.max_extra_memory,
            options.topk,
            options.threshold,
            fits=fits,
        ).kept

    linears = quantizable_linears(model)
    targets = [n for n in linears if block_of(n) not in kept]
    untouched = list(targets)
    if options.autoround and targets:
        from neuronforge.pipeline.quantize.autoround_nxd import keep_bf16_layer_config, run_autoround

        tuned = run_autoround(
            model,
            tokenizer,
            samples,
            options.dtype,
            keep_bf16_layer_config(model, kept, block_of),
            options.iters,
            options.calib_seq_len,
            targets,
            minmax_tuning=options.minmax_tuning,
        )
        untouched, timings["autoround"] = tuned.untouched, tuned.seconds

    with atomic_dir(out) as tmp:
        check = _export(src, tmp, model, targets, options.dtype)
        ours, naive, per_block = check.ours, check.naive, check.per_block
        grid_export.require_exact(ours, str(out))
        timings["export"], timings["verify"] = check.export_s, check.verify_s
        timings["total"] = time.perf_counter() - start

        atomic_write_json(tmp / "modules_to_not_convert.json", {"modules_to_not_convert": kept})
        if sensitivity is not None:
            atomic_write_json(tmp / "sensitivity.json", {**sensitivity.to_json(), "kept_bf16": kept})
            sensitivity_chart(sensitivity.scores, kept, sensitivity.method, tmp / "sensitivity.png")
        report = {
            "model": str(src),
            "options": options.model_dump(mode="json"),
            "dtype": options.dtype,
            "modules_to_not_convert": kept,
            "grid_agreement": ours.fraction,
            "grid_matching_weights": ours.matching,
            "quantized_weights": ours.total,
            "grid_value_agreement": ours.value_fraction,
            "naive_agreement": naive.fraction if targets else None,
            "naive_value_agreement": naive.value_fraction if targets else None,
            "value_agreement_definition": "weights whose value on Neuron (NxD code x NxD scale) is within a relative "
            "2^-8 (bf16 precision) of the value the quantizer tuned",
            "naive_definition": "AutoRound's stock export (int: qmax 128, signed scale; fp8: +-448) in bf16, re-quantized by NxD",
            "autoround_tuned_layers": len(targets) - len(untouched) if options.autoround else 0,
            "rtn_layers": untouched,
            "per_block_relative_error": {
                b: (e["sq_err"] / e["sq_norm"]) ** 0.5 if e["sq_norm"] else 0.0 for b, e in per_block.items()
            },
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "versions": _versions(),
        }
        atomic_write_json(tmp / "quantization_report.json", report)
    return QuantizeResult(
        out_dir=out,
        modules_to_not_convert=kept,
        grid_agreement=ours.fraction,
        naive_agreement=report["naive_agreement"],
        value_agreement=ours.value_fraction,
        naive_value_agreement=report["naive_value_agreement"],
        timings=timings,
    )
