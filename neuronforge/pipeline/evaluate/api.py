"""`neuronforge evaluate`: the accuracy/memory table for bf16, RTN, AutoRound and their selective variants.

Every variant runs through the emulator of Neuron numerics (on the GPU when there is one, loaded shard by
shard, one variant in memory at a time) with the same KV setting, on held-out text the calibration never
saw. RTN all-quantized is the original checkpoint quantized by NxD's own offline quantizer (no GPU stage). The other three come from the GPU stage (`quantize`), cached under
`<out>/stages/` keyed by a content hash of the model, the text and the stage options, so a re-run
only re-measures. The selective variants share one sensitivity-based list (RTN + selective computes
it; AutoRound + selective is tuned with the same blocks kept in bf16), so they differ only in tuning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from neuronforge.core.devices import DeviceField
from neuronforge.core.presets import PRESETS, apply_preset
from neuronforge.errors import NeuronforgeError, validated
from neuronforge.neuron.dtypes import ExportDtype, KvDtype
from neuronforge.pipeline.evaluate.report import EvaluationReport, VariantResult, write_report
from neuronforge.pipeline.quantize.selection import SelectionRule
from neuronforge.pipeline.quantize.sensitivity import Sensitivity

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from neuronforge.neuron.emulate import EmulatedModel
    from neuronforge.pipeline.evaluate.gsm8k import Problem
    from neuronforge.pipeline.quantize.api import QuantizeResult

STAGES_DIR = "stages"
# A cached variant checkpoint is reused only while these are unchanged.
VARIANT_PACKAGES = ("neuronforge", "torch", "transformers", "auto-round", "safetensors")


class EvaluateOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    model: str = "smollm2"
    out: Path
    dtype: ExportDtype = "int8"
    kv: KvDtype = "bf16"
    text: Path | None = None  # .txt/.jsonl split into calibration and held-out evaluation text
    max_tokens: int = pydantic.Field(1024, ge=2)  # held-out tokens scored per text
    eval_seq_len: int = pydantic.Field(256, ge=2)  # evaluation window
    prefill_len: int | None = pydantic.Field(
        None, ge=1
    )  # fp8 KV: positions from here decode (default eval_seq_len // 2)
    batch_size: int = pydantic.Field(4, ge=1)
    # GPU stage (forwarded to quantize). Default preset cpu-fast, far below quantize's "gpu" so the default model's
    # report fits in 20 min on 2 shared CPU cores (AutoRound took ~2 min per block there at iters 20 x 16 x 128);
    # on a GPU host pass preset="gpu". `preset` fills whichever of these three is left unset.
    iters: int = pydantic.Field(PRESETS["cpu-fast"].iters, ge=1)
    nsamples: int = pydantic.Field(PRESETS["cpu-fast"].nsamples, ge=1)
    calib_seq_len: int = pydantic.Field(PRESETS["cpu-fast"].calib_seq_len, ge=2)
    minmax_tuning: bool = False
    sensitivity: Sensitivity = "first_order"
    selection: SelectionRule = "budget"
    max_extra_memory: float = 0.10
    budget_instance: str | None = None  # budget selection by instance (replaces max_extra_memory)
    topk: int | None = None
    threshold: float | None = None
    # the deployment the instance column and budget_instance assume (batch 1, like compile's default)
    seq_len: int = pydantic.Field(1024, ge=1)
    # optional task accuracy
    gsm8k: Path | None = None
    task_limit: int | None = pydantic.Field(None, ge=1)
    max_new_tokens: int = pydantic.Field(256, ge=1)
    lm_eval_tasks: list[str] = pydantic.Field(default_factory=list)
    lm_eval_limit: int | None = pydantic.Field(None, ge=1)
    device: DeviceField = "auto"  # GPU stage and emulation (not in the stage cache keys: same bits on any device)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        return apply_preset(values, "cpu-fast")

    @pydantic.model_validator(mode="after")
    def _prefill_within_window(self) -> EvaluateOptions:
        if self.prefill_len is not None and self.prefill_len > self.eval_seq_len:
            raise ValueError(f"prefill_len {self.prefill_len} must be <= eval_seq_len {self.eval_seq_len}")
        if self.max_tokens < self.eval_seq_len:
            raise ValueError(
                f"max_tokens {self.max_tokens} must be >= eval_seq_len {self.eval_seq_len} (one window at least)"
            )
        return self


def options_from(**values: object) -> EvaluateOptions:
    """Options from keyword values; a bad value is a NeuronforgeError, not a pydantic traceback."""
    return validated(EvaluateOptions, "evaluate", **values)


@dataclass(frozen=True)
class VariantPlan:
    key: str
    label: str
    weights: bool  # quantized weights
    kv_fp8: bool
    autoround: bool = False
    selective: bool = False

    @property
    def stage(self) -> str | None:
        """The GPU-stage checkpoint this variant loads (None: the original model)."""
        if self.autoround:
            return "autoround_selective" if self.selective else "autoround"
        return "rtn_selective" if self.selective else None


def plan_variants(dtype: str, kv_fp8: bool) -> list[VariantPlan]:
    """Reference first; with fp8 KV also bf16 weights + fp8 KV, to separate KV error from weight error."""
    plans = [VariantPlan("bf16", "bf16 (reference)", weights=False, kv_fp8=False)]
    if kv_fp8:
        plans.append(VariantPlan("bf16_kv", "bf16 + fp8 KV", weights=False, kv_fp8=True))
    plans += [
        VariantPlan("rtn", f"RTN {dtype} (NxD, no GPU stage)", True, kv_fp8),
        VariantPlan("autoround", f"AutoRound {dtype}", True, kv_fp8, autoround=True),
        VariantPlan("rtn_selective", f"RTN {dtype} + selective", True, kv_fp8, selective=True),
        VariantPlan(
            "autoround_selective", f"AutoRound {dtype} + selective", True, kv_fp8, autoround=True, selective=True
        ),
    ]
    return plans


# ---------------------------------------------------------------- GPU-stage checkpoints, cached


def _stage_options(options: EvaluateOptions, stage: str, kept: list[str] | None) -> dict[str, object]:
    """QuantizeSettings fields for one stage; these and the inputs make its cache key."""
    common: dict[str, object] = {
        "dtype": options.dtype,
        "iters": options.iters,
        "nsamples": options.nsamples,
        "calib_seq_len": options.calib_seq_len,
        "sensitivity": options.sensitivity,
        "minmax_tuning": options.minmax_tuning,
    }
    if stage == "rtn_selective":
        return {
            **common,
            "autoround": False,
            "selection": options.selection,
            "max_extra_memory": options.max_extra_memory,
            "topk": options.topk,
            "threshold": options.threshold,
            **_budget_instance_options(options),
        }
    if stage == "autoround":
        return {**common, "autoround": True, "selection": "none"}
    return {**common, "autoround": True, "modules_to_not_convert": kept}


def _budget_instance_options(options: EvaluateOptions) -> dict[str, object]:
    """The QuantizeOptions of an instance budget (none without one, so other stages' cache keys stay put)."""
    if options.budget_instance is None:
        return {}
    return {"budget_instance": options.budget_instance, "kv": options.kv, "seq_len": options.seq_len}


def stage_checkpoint(
    stage: str, source: Path, options: EvaluateOptions, kept: list[str] | None = None
) -> tuple[QuantizeResult, bool]:
    """The stage's checkpoint and result, from `<out>/stages/<stage>-<key>` when cached; (result, reused)."""
    from neuronforge.core.atomic import atomic_dir, atomic_write_json
    from neuronforge.core.hashing import fingerprint
    from neuronforge.core.package_versions import package_versions
    from neuronforge.pipeline.quantize.api import QuantizeResult, quantize
    from neuronforge.pipeline.quantize.api import options_from as quantize_options

    stage_opts = _stage_options(options, stage, kept)
    key, _ = fingerprint(
        {"model": source, "text": options.text, "options": stage_opts}, package_versions(VARIANT_PACKAGES)
    )
    folder = Path(options.out) / STAGES_DIR / f"{stage}-{key[:16]}"
    result_file = folder / "result.json"
    if result_file.exists() and (folder / "checkpoint" / "config.json").exists():
        result = QuantizeResult.model_validate_json(result_file.read_text())
        return result.model_copy(update={"out_dir": folder / "checkpoint"}), True
    with atomic_dir(folder, overwrite=True) as tmp:
        result = quantize(
            quantize_options(
                model=str(source), out=tmp / "checkpoint", text=options.text, device=options.device, **stage_opts
            )
        )
        result = result.model_copy(update={"out_dir": folder / "checkpoint"})
        atomic_write_json(tmp / "result.json", result.model_dump(mode="json"))
    return result, False


# ---------------------------------------------------------------- measuring one variant


@dataclass
class Reference:
    """What every variant is compared with: bf16 logits per text, and the bf16 task score."""

    windows: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    perplexity: dict[str, float]
    task_accuracy: float | None = None


def text_logits(
    emulated: EmulatedModel,
    windows: torch.Tensor,
    prefill_len: int | None,
    batch_size: int,
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The model's (bf16) logits for all windows of one text, on the CPU, computed `batch_size` windows at a time."""
    import torch

    parts = []
    for batch in windows.split(batch_size):
        parts.append(emulated.device_logits(batch, prefill_len).cpu())
        if advance is not None:
            advance(batch.shape[0])
    return torch.cat(parts)


def compare(reference: Reference, logits: dict[str, torch.Tensor], *, quantized: bool) -> dict[str, object]:
    """Perplexity, recovery, KL and agreement of one variant's logits against the reference."""
    from neuronforge.neuron.emulate import perplexity_from_logits
    from neuronforge.pipeline.evaluate.metrics import divergence, recovery, sanity_flags

    ppl = {t: perplexity_from_logits(logits[t], reference.windows[t]) for t in logits}
    measured = divergence(pair for t in logits for pair in zip(reference.logits[t], logits[t], strict=True))
    return {
        "perplexity": ppl,
        "ppl_recovery": {t: recovery(reference.perplexity[t], ppl[t], higher_is_better=False) for t in ppl},
        "kl": measured.kl,
        "agreement": measured.agreement,
        "flags": sanity_flags(measured, quantized=quantized),
    }


def _task_score(
    emulated: EmulatedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    options: EvaluateOptions,
    label: str,
) -> float:
    from neuronforge.core.progress import progress
    from neuronforge.pipeline.evaluate.gsm8k import score_problems

    with progress() as bar:
        task = bar.add_task(f"gsm8k {label}", total=len(problems))
        score = score_problems(
            emulated.generate, tokenizer, problems, options.max_new_tokens, lambda: bar.advance(task)
        )
    return score.accuracy


# ---------------------------------------------------------------- the command


def evaluate(options: EvaluateOptions, command: str = "") -> EvaluationReport:
    """Measure every variant and write report.md/json/png into `options.out` (see the module docstring)."""
    from neuronforge.assets.models import resolve_model
    from neuronforge.assets.texts import evaluation_windows, resolve_splits
    from neuronforge.core.devices import device_info, release, resolve_device
    from neuronforge.core.progress import err_console, progress
    from neuronforge.hf.folders import force_offline, load_tokenizer, read_config
    from neuronforge.neuron.emulate import EmulationSpec, load_emulated, perplexity_from_logits
    from neuronforge.neuron.plan import load_model_shape, smallest_for
    from neuronforge.neuron.weight_memory import weight_memory
    from neuronforge.pipeline.evaluate.gsm8k import load_problems
    from neuronforge.pipeline.evaluate.report import REPORT_JSON

    out = Path(options.out)
    if out.is_dir() and any(out.iterdir()) and not ((out / REPORT_JSON).is_file() or (out / STAGES_DIR).is_dir()):
        raise NeuronforgeError(  # its report.md/json/png would replace files of the same name
            f"--out {out} already holds files and is not an evaluate output folder (no {REPORT_JSON} or {STAGES_DIR}/)",
            "choose a new or empty folder for --out",
        )
    force_offline()
    device = resolve_device(options.device)  # `cuda` without a usable GPU refuses before any work
    start = time.perf_counter()
    timings: dict[str, float] = {}
    source = resolve_model(options.model)
    tokenizer = load_tokenizer(source)
    problems = load_problems(options.gsm8k, options.task_limit) if options.gsm8k else None
    if options.lm_eval_tasks:
        from neuronforge.pipeline.evaluate.lm_eval_adapter import require_lm_eval

        require_lm_eval()
    held_out = resolve_splits(options.text).evaluation
    windows = {
        name: evaluation_windows(tokenizer, text, options.eval_seq_len, options.max_tokens)
        for name, text in held_out.items()
    }
    model_shape = load_model_shape(source, name=str(options.model))
    shapes = model_shape.shapes
    # A tied lm_head is the embedding: NxDI cannot quantize it (read from config.json, no need to load the model).
    forced = ["lm_head"] if read_config(source).get("tie_word_embeddings", False) else []
    timings["load"] = time.perf_counter() - start

    # GPU stage: RTN + selective first, since its selection is reused by AutoRound + selective.
    checkpoints: dict[str, Path] = {}
    kept: dict[str, list[str]] = {"rtn": forced}
    for stage in ("rtn_selective", "autoround", "autoround_selective"):
        t0 = time.perf_counter()
        err_console.print(f"[bold cyan]>> stage {stage}[/]")
        result, reused = stage_checkpoint(stage, source, options, kept.get("rtn_selective"))
        checkpoints[stage], kept[stage] = result.out_dir, result.modules_to_not_convert
        timings[f"stage {stage}" + (" (cached)" if reused else "")] = time.perf_counter() - t0

    plans = plan_variants(options.dtype, options.kv == "fp8")
    reference: Reference | None = None
    results: list[VariantResult] = []
    total_windows = sum(w.shape[0] for w in windows.values())
    with progress() as bar:
        overall = bar.add_task("variants", total=len(plans))
        for plan in plans:
            t0 = time.perf_counter()
            mtnc = kept.get(plan.stage or "rtn", []) if plan.weights else []
            spec = EmulationSpec(
                dtype=options.dtype if plan.weights else None, kv_fp8=plan.kv_fp8, modules_to_not_convert=tuple(mtnc)
            )
            release(device)  # the previous variant's cached GPU blocks count as free for this one
            emulated = load_emulated(  # (on a GPU the request: each variant is placed by what fits now)
                checkpoints.get(plan.stage, source) if plan.stage else source,
                spec,
                device if device.type == "cpu" else options.device,
            )
            windows_task = bar.add_task(f"  {plan.label}", total=total_windows)
            logits = {
                t: text_logits(
                    emulated,
                    w,
                    options.prefill_len,
                    options.batch_size,
                    lambda n, task=windows_task: bar.advance(task, n),
                )
                for t, w in windows.items()
            }
            bar.remove_task(windows_task)
            accuracy = _task_score(emulated, tokenizer, problems, options, plan.label) if problems else None
            lm_eval_scores = _lm_eval_scores(emulated, tokenizer, options)
            if reference is None:
                reference = Reference(
                    windows, logits, {t: perplexity_from_logits(logits[t], windows[t]) for t in logits}, accuracy
                )
            figures = compare(reference, logits, quantized=plan.key != "bf16")
            if plan.kv_fp8 and emulated.kv_risk.over:
                figures["flags"].append(emulated.kv_risk.describe())
            memory = weight_memory(shapes, spec.dtype, mtnc)
            instance = smallest_for(model_shape, spec.dtype, plan.kv_fp8, mtnc, seq_len=options.seq_len)
            results.append(
                VariantResult(
                    key=plan.key,
                    label=plan.label,
                    weights=spec.dtype,
                    kv_fp8=plan.kv_fp8,
                    autoround=plan.autoround,
                    selective=plan.selective,
                    modules_to_not_convert=mtnc,
                    weight_bytes=memory.total_bytes,
                    weight_percent=memory.percent_of_bf16,
                    instance=instance.instance if instance else None,
                    instance_tp=instance.tp if instance else None,
                    instance_usd_per_hour=instance.price.ec2 if instance else None,
                    task_accuracy=accuracy,
                    task_recovery=_task_recovery(reference.task_accuracy, accuracy),
                    kv_out_of_range=emulated.kv_risk.fraction if plan.kv_fp8 else None,
                    lm_eval=lm_eval_scores,
                    seconds=time.perf_counter() - t0,
                    device=str(emulated.device),
                    **figures,
                )
            )
            del emulated, logits
            bar.advance(overall)
    timings["total"] = time.perf_counter() - start
    report = EvaluationReport(
        model=str(options.model),
        dtype=options.dtype,
        kv=options.kv,
        eval_tokens={t: int(w.numel()) for t, w in windows.items()},
        settings=options.model_dump(mode="json", exclude={"out"}),
        task=f"{Path(options.gsm8k).name} ({len(problems)} problems, greedy, {options.max_new_tokens} new tokens)"
        if problems
        else None,
        variants=results,
        timings={k: round(v, 1) for k, v in timings.items()},
        command=command,
        device=device_info(device),
    )
    write_report(report, Path(options.out))
    return report


def _task_recovery(reference: float | None, variant: float | None) -> float | None:
    """variant / bf16 accuracy in percent; None when unscored or when bf16 scored 0 (no ratio exists)."""
    from neuronforge.pipeline.evaluate.metrics import recovery

    if reference is None or variant is None or reference <= 0:
        return None
    return recovery(reference, variant, higher_is_better=True) if variant > 0 else 0.0


def _lm_eval_scores(
    emulated: EmulatedModel, tokenizer: PreTrainedTokenizerBase, options: EvaluateOptions
) -> dict[str, dict[str, float]]:
    if not options.lm_eval_tasks:
        return {}
    from neuronforge.pipeline.evaluate.lm_eval_adapter import run_lm_eval

    return run_lm_eval(emulated, tokenizer, options.lm_eval_tasks, options.lm_eval_limit)
