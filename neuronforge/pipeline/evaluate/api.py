"""`neuronforge evaluate`: the accuracy/memory table for bf16, RTN, AutoRound and their selective variants.

Every variant runs through the emulator of Neuron numerics (on the GPU when there is one, loaded shard by
shard, one variant in memory at a time) with the same KV setting, on held-out text the calibration never
saw. RTN all-quantized is the original checkpoint quantized by NxD's own offline quantizer (no GPU stage). The other three come from the GPU stage (`quantize`): variant checkpoints,
cached under `<out>/variants/` keyed by a content hash of the model, the text and their quantize options, so a
re-run only re-measures. The selective variants share one sensitivity-based list (RTN + selective computes
it; AutoRound + selective is tuned with the same blocks kept in bf16), so they differ only in tuning.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import pydantic

from neuronforge.assets.models import input_path, resolve_model
from neuronforge.assets.texts import held_out_windows, resolve_splits
from neuronforge.core.atomic import atomic_dir, atomic_write_json
from neuronforge.core.devices import DeviceField, device_info, emulation_device, release, resolve_device
from neuronforge.core.hashing import fingerprint
from neuronforge.core.knobs import (
    BudgetInstance,
    CalibSeqLen,
    EvalSeqLen,
    EvalTokens,
    Iters,
    LocalPath,
    MaxExtraMemory,
    Nsamples,
    PathText,
    SeqLen,
    Threshold,
    Topk,
)
from neuronforge.core.outputs import check_apart, check_replaceable, mark_output
from neuronforge.core.package_versions import package_versions
from neuronforge.core.presets import PRESETS, PresetName, apply_preset
from neuronforge.core.progress import err_console, progress
from neuronforge.errors import expect, validated
from neuronforge.hf.folders import force_offline, load_tokenizer, read_config
from neuronforge.neuron.numerics.dtypes import ExportDtype, ExportDtypeOption, KvOption
from neuronforge.neuron.planner.plan import load_model_shape, smallest_for
from neuronforge.neuron.planner.weight_memory import weight_memory
from neuronforge.pipeline.evaluate.gsm8k import load_problems, score_problems
from neuronforge.pipeline.evaluate.lm_eval_adapter import check_lm_eval_tasks, run_lm_eval
from neuronforge.pipeline.evaluate.report import EvaluationReport, VariantResult, write_report
from neuronforge.pipeline.quantize.api import QuantizeResult, QuantizeSettings, quantize
from neuronforge.pipeline.quantize.api import options_from as quantize_options
from neuronforge.pipeline.quantize.selection import SelectionRule, missing_selection_value
from neuronforge.pipeline.quantize.sensitivity import Sensitivity

if TYPE_CHECKING:
    import torch
    from rich.progress import Progress
    from transformers import PreTrainedTokenizerBase

    from neuronforge.neuron.numerics.emulate import EmulatedModel
    from neuronforge.neuron.planner.plan import ModelShape
    from neuronforge.pipeline.evaluate.gsm8k import Problem
    from neuronforge.pipeline.quantize.api import QuantizeResult

VARIANTS_DIR = "variants"
# A cached variant checkpoint is reused only while these are unchanged, and stage 1's revision: bumped when the
# same options write other bytes within one neuronforge version (2: AutoRound checked against RTN on the whole model).
VARIANT_PACKAGES = ("neuronforge", "torch", "transformers", "auto-round", "safetensors")
STAGE1_REVISION = 2


def _quantize_help(field: str) -> str | None:
    return QuantizeSettings.model_fields[field].description


class EvaluateOptions(pydantic.BaseModel):
    """What `evaluate` measures; its quantize-side knobs are QuantizeSettings' types (bounds and help once)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    default_preset: ClassVar[PresetName] = "cpu-fast"  # fills iters/nsamples/calib_seq_len left unset

    model: PathText = pydantic.Field("smollm2", description="embedded model name ('smollm2') or a Hugging Face folder")
    out: LocalPath = pydantic.Field(
        Path("eval"), description="folder for report.md/json/png and the variant checkpoints"
    )
    dtype: ExportDtypeOption = "int8"
    kv: KvOption = "fp8"
    text: LocalPath | None = pydantic.Field(
        None, description=".txt/.jsonl split into calibration and held-out text; default: the embedded texts"
    )
    eval_tokens: EvalTokens = pydantic.Field(1024, validation_alias=pydantic.AliasChoices("eval_tokens", "max_tokens"))
    eval_seq_len: EvalSeqLen = 256
    prefill_len: int | None = pydantic.Field(
        None, ge=1, description="fp8 KV: positions from here run as decode (default: eval_seq_len // 2)"
    )
    batch_size: int = pydantic.Field(4, ge=1, description="evaluation windows run through the model at once")
    # GPU stage (forwarded to quantize). Default preset cpu-fast, far below quantize's "gpu" so the default model's
    # report fits in 20 min on 2 shared CPU cores (AutoRound took ~2 min per block there at iters 20 x 16 x 128);
    # on a GPU host pass preset="gpu". `preset` fills whichever of these three is left unset.
    iters: Iters = PRESETS["cpu-fast"].iters
    nsamples: Nsamples = PRESETS["cpu-fast"].nsamples
    calib_seq_len: CalibSeqLen = PRESETS["cpu-fast"].calib_seq_len
    minmax_tuning: bool = pydantic.Field(False, description=_quantize_help("minmax_tuning"))
    sensitivity: Sensitivity = pydantic.Field("first_order", description=_quantize_help("sensitivity"))
    selection: SelectionRule = pydantic.Field(
        "budget", description="which blocks the selective variants keep bf16: budget, topk or threshold"
    )
    max_extra_memory: MaxExtraMemory = 0.10
    budget_instance: BudgetInstance = None
    topk: Topk = None
    threshold: Threshold = None
    # the deployment the instance column and budget_instance assume (batch 1, like compile's default)
    seq_len: SeqLen = 1024
    # optional task accuracy
    gsm8k: LocalPath | None = pydantic.Field(
        None, description="local GSM8K-style jsonl (question, answer '#### N') for task accuracy"
    )
    task_limit: int | None = pydantic.Field(None, ge=1, description="score only the first N problems")
    max_new_tokens: int = pydantic.Field(256, ge=1, description="greedy tokens generated per problem")
    lm_eval_tasks: list[str] = pydantic.Field(
        default_factory=list, description="lm-eval tasks (needs neuronforge[eval] and the task data)"
    )
    lm_eval_limit: int | None = pydantic.Field(None, ge=1, description="examples per lm-eval task")
    device: DeviceField = "auto"  # GPU stage and emulation (not in the variant cache keys: same bits on any device)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        return apply_preset(values, cls.default_preset)

    @pydantic.model_validator(mode="after")
    def _prefill_within_window(self) -> EvaluateOptions:
        if self.prefill_len is not None and self.prefill_len > self.eval_seq_len:
            raise ValueError(f"prefill_len {self.prefill_len} must be <= eval_seq_len {self.eval_seq_len}")
        if self.eval_tokens < self.eval_seq_len:
            raise ValueError(
                f"eval_tokens {self.eval_tokens} must be >= eval_seq_len {self.eval_seq_len} (one window at least)"
            )
        if self.iters < 1:
            raise ValueError(f"iters must be >= 1 (got {self.iters}): evaluate tunes AutoRound variants")
        problem = missing_selection_value(self.selection, self.topk, self.threshold)
        if problem:
            raise ValueError(problem)
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
    def checkpoint(self) -> str | None:
        """The variant checkpoint (a quantize run) this variant loads (None: the original model)."""
        if self.autoround:
            return "autoround_selective" if self.selective else "autoround"
        return "rtn_selective" if self.selective else None


def plan_variants(dtype: ExportDtype, kv_fp8: bool) -> list[VariantPlan]:
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


# ---------------------------------------------------------------- variant checkpoints (quantize runs), cached

VARIANT_CHECKPOINTS = ("rtn_selective", "autoround", "autoround_selective")  # RTN + selective's list is reused


def _variant_options(options: EvaluateOptions, variant: str, kept: list[str] | None) -> dict[str, object]:
    """QuantizeSettings fields for one variant checkpoint; these and the inputs make its cache key."""
    common: dict[str, object] = {
        "dtype": options.dtype,
        "iters": options.iters,
        "nsamples": options.nsamples,
        "calib_seq_len": options.calib_seq_len,
        "sensitivity": options.sensitivity,
        "minmax_tuning": options.minmax_tuning,
    }
    if variant == "rtn_selective":
        return {
            **common,
            "autoround": False,
            "selection": options.selection,
            "max_extra_memory": options.max_extra_memory,
            "topk": options.topk,
            "threshold": options.threshold,
            **_budget_instance_options(options),
        }
    if variant == "autoround":
        return {**common, "autoround": True, "selection": "none"}
    return {**common, "autoround": True, "modules_to_not_convert": kept}


def _budget_instance_options(options: EvaluateOptions) -> dict[str, object]:
    """The QuantizeOptions of an instance budget (none without one, so other variants' cache keys stay put)."""
    if options.budget_instance is None:
        return {}
    return {"budget_instance": options.budget_instance, "kv": options.kv, "seq_len": options.seq_len}


def variant_checkpoint(
    variant: str, source: Path, options: EvaluateOptions, kept: list[str] | None = None
) -> tuple[QuantizeResult, bool]:
    """The variant's checkpoint and quantize result, from `<out>/variants/<variant>-<key>` when cached;
    (result, reused)."""
    variant_opts = _variant_options(options, variant, kept)
    key, _ = fingerprint(
        {"model": source, "text": options.text, "options": variant_opts, "stage1": STAGE1_REVISION},
        package_versions(VARIANT_PACKAGES),
    )
    folder = Path(options.out) / VARIANTS_DIR / f"{variant}-{key[:16]}"
    result_file = folder / "result.json"
    if result_file.exists() and (folder / "checkpoint" / "config.json").exists():
        result = QuantizeResult.model_validate_json(result_file.read_text())
        return result.model_copy(update={"out_dir": folder / "checkpoint"}), True
    with atomic_dir(folder, overwrite=True) as tmp:
        result = quantize(
            quantize_options(
                model=str(source), out=tmp / "checkpoint", text=options.text, device=options.device, **variant_opts
            )
        )
        result = result.model_copy(update={"out_dir": folder / "checkpoint"})
        atomic_write_json(tmp / "result.json", result.model_dump(mode="json"))
    mark_output(Path(options.out))  # an interrupted evaluate's folder is still its own, and resumes
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


class Figures(TypedDict):
    """One variant's figures against the reference: the `VariantResult` fields `compare` fills."""

    perplexity: dict[str, float]
    ppl_recovery: dict[str, float]
    kl: float
    agreement: float
    flags: list[str]


def compare(
    reference: Reference, logits: dict[str, torch.Tensor], ppl: dict[str, float], *, quantized: bool
) -> Figures:
    """Recovery, KL and agreement of one variant's logits and perplexity (`perplexity_report`'s) against the
    reference."""
    from neuronforge.pipeline.evaluate.metrics import divergence, recovery, sanity_flags

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
    with progress() as bar:
        task = bar.add_task(f"gsm8k {label}", total=len(problems))
        score = score_problems(
            emulated.generate, tokenizer, problems, options.max_new_tokens, lambda: bar.advance(task)
        )
    return score.accuracy


# ---------------------------------------------------------------- the command


@dataclass
class Prepared:
    """What every variant is measured with: the model, its tokenizer, held-out windows, shapes and task."""

    source: Path
    tokenizer: PreTrainedTokenizerBase
    windows: dict[str, torch.Tensor]
    model_shape: ModelShape
    forced: list[str]  # blocks NxDI must keep bf16 whatever the selection (a tied lm_head)
    problems: list[Problem] | None


@dataclass
class Checkpoints:
    """The variant checkpoints and the blocks each keeps bf16 ("rtn": the forced ones only)."""

    paths: dict[str, Path]
    kept: dict[str, list[str]]
    autoround_vs_rtn: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # QuantizeResult's, by variant


def evaluate(options: EvaluateOptions, command: str = "") -> EvaluationReport:
    """Measure every variant and write report.md/json/png into `options.out` (see the module docstring)."""
    options = expect(options, EvaluateOptions, "nf.evaluate")
    _check_out(options)
    force_offline()
    device = resolve_device(options.device)  # `cuda` without a usable GPU refuses before any work
    start = time.perf_counter()
    timings: dict[str, float] = {}
    prepared = _prepare(options)
    timings["load"] = time.perf_counter() - start
    checkpoints = _variant_checkpoints(options, prepared, timings)
    plans = plan_variants(options.dtype, options.kv == "fp8")
    reference: Reference | None = None
    results: list[VariantResult] = []
    with progress() as bar:
        overall = bar.add_task("variants", total=len(plans))
        for plan in plans:
            result, reference = _measure(plan, options, prepared, checkpoints, reference, bar, device)
            results.append(result)
            bar.advance(overall)
    timings["total"] = time.perf_counter() - start
    return _write(options, prepared, results, timings, command, device)


def _check_out(options: EvaluateOptions) -> None:
    """Refuse an --out that overlaps an input, or holds files neuronforge did not write (core/outputs.py); its own
    earlier folder is re-used, as the variant checkpoints' cache."""
    out = Path(options.out)
    check_apart(out, {"--model": input_path(options.model), "--text": options.text, "--gsm8k": options.gsm8k})
    check_replaceable(out, overwrite=True)


def _prepare(options: EvaluateOptions) -> Prepared:
    """Inputs, held-out windows and shapes: everything but the variants, checked before any quantize run."""
    source = resolve_model(options.model)
    tokenizer = load_tokenizer(source)
    problems = load_problems(options.gsm8k, options.task_limit) if options.gsm8k else None
    if options.lm_eval_tasks:
        check_lm_eval_tasks(options.lm_eval_tasks)
    texts = resolve_splits(options.text).evaluation
    windows = held_out_windows(tokenizer, texts, options.eval_seq_len, options.eval_tokens)
    model_shape = load_model_shape(source, name=str(options.model))
    # A tied lm_head is the embedding: NxDI cannot quantize it (read from config.json, no need to load the model).
    forced = ["lm_head"] if read_config(source).get("tie_word_embeddings", False) else []
    return Prepared(source, tokenizer, windows, model_shape, forced, problems)


def _variant_checkpoints(options: EvaluateOptions, prepared: Prepared, timings: dict[str, float]) -> Checkpoints:
    """Quantize (or reuse) each variant checkpoint; RTN + selective first, since AutoRound + selective reuses its
    list of bf16 blocks."""
    checkpoints = Checkpoints(paths={}, kept={"rtn": prepared.forced})
    for variant in VARIANT_CHECKPOINTS:
        t0 = time.perf_counter()
        err_console.print(f"[bold cyan]>> variant {variant}[/]")
        result, reused = variant_checkpoint(variant, prepared.source, options, checkpoints.kept.get("rtn_selective"))
        checkpoints.paths[variant], checkpoints.kept[variant] = result.out_dir, result.modules_to_not_convert
        checkpoints.autoround_vs_rtn[variant] = result.autoround_vs_rtn
        timings[f"variant {variant}" + (" (cached)" if reused else "")] = time.perf_counter() - t0
    return checkpoints


def _measure(
    plan: VariantPlan,
    options: EvaluateOptions,
    prepared: Prepared,
    checkpoints: Checkpoints,
    reference: Reference | None,
    bar: Progress,
    device: torch.device,
) -> tuple[VariantResult, Reference]:
    """One variant through the emulator: its logits on every window, compared with the reference (the first
    variant measured, bf16), plus task scores, weight memory and the smallest instance; (result, reference)."""
    from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated, perplexity_report

    t0 = time.perf_counter()
    windows = prepared.windows
    mtnc = checkpoints.kept.get(plan.checkpoint or "rtn", []) if plan.weights else []
    spec = EmulationSpec(
        dtype=options.dtype if plan.weights else None,
        kv="fp8" if plan.kv_fp8 else "bf16",
        modules_to_not_convert=tuple(mtnc),
    )
    release(device)  # the previous variant's cached GPU blocks count as free for this one
    emulated = load_emulated(  # (on a GPU the request: each variant is placed by what fits now)
        checkpoints.paths[plan.checkpoint] if plan.checkpoint else prepared.source,
        spec,
        emulation_device(device, options.device),
    )
    windows_task = bar.add_task(f"  {plan.label}", total=sum(w.shape[0] for w in windows.values()))
    logits = {
        t: text_logits(
            emulated, w, options.prefill_len, options.batch_size, functools.partial(bar.advance, windows_task)
        )
        for t, w in windows.items()
    }
    bar.remove_task(windows_task)
    problems = prepared.problems
    accuracy = _task_score(emulated, prepared.tokenizer, problems, options, plan.label) if problems else None
    lm_eval_scores = _lm_eval_scores(emulated, prepared.tokenizer, options)
    measured = perplexity_report(emulated, windows, logits=logits)
    if reference is None:
        reference = Reference(windows, logits, measured.perplexity, accuracy)
    figures = compare(reference, logits, measured.perplexity, quantized=plan.key != "bf16")
    if measured.kv_risk is not None and measured.kv_risk.over:
        figures["flags"].append(measured.kv_risk.describe())
    memory = weight_memory(prepared.model_shape.shapes, spec.dtype, mtnc)
    instance = smallest_for(prepared.model_shape, spec.dtype, plan.kv_fp8, mtnc, seq_len=options.seq_len)
    result = VariantResult(
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
        kv_out_of_range=measured.kv_risk.fraction if measured.kv_risk is not None else None,
        lm_eval=lm_eval_scores,
        seconds=time.perf_counter() - t0,
        device=str(emulated.device),
        autoround_vs_rtn=checkpoints.autoround_vs_rtn.get(plan.checkpoint) if plan.checkpoint else None,
        **figures,
    )
    return result, reference


def _write(
    options: EvaluateOptions,
    prepared: Prepared,
    results: list[VariantResult],
    timings: dict[str, float],
    command: str,
    device: torch.device,
) -> EvaluationReport:
    """The report of every variant, written as report.md/json/png into `options.out`."""
    problems = prepared.problems
    report = EvaluationReport(
        model=str(options.model),
        dtype=options.dtype,
        kv=options.kv,
        eval_tokens={t: int(w.numel()) for t, w in prepared.windows.items()},
        settings=options.model_dump(mode="json", exclude={"out"}),
        task=f"{Path(options.gsm8k).name} ({len(problems)} problems, greedy, {options.max_new_tokens} new tokens)"
        if options.gsm8k and problems
        else None,
        variants=results,
        timings={k: round(v, 1) for k, v in timings.items()},
        command=command,
        device=device_info(device),
    )
    write_report(report, Path(options.out))
    mark_output(Path(options.out))
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

    return run_lm_eval(emulated, tokenizer, options.lm_eval_tasks, options.lm_eval_limit)
