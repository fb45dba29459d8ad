"""Stage 1 entry points: sensitivity -> selection -> AutoRound on NxD's grid -> grid-exact bf16 weights.

`quantize_model` works on a model already in memory (like torchao's `quantize_(model, config)`): it
fake-quantizes the decoder Linears in place so every weight sits on NxD's int8/fp8 grid, and returns the
NxD codes, scales and the blocks kept in bf16. `quantize` is the folder-to-folder wrapper: it loads the
model, calls `quantize_model`, and writes an ordinary HF checkpoint (same shards as the input) whose
quantized weights NxD re-quantizes to exactly the codes AutoRound tuned. It exports shard by shard: the grid
check covers what is written (each shard is read back) and the folder only appears (atomically) when it passes
at 100%. Host memory: the model once in bf16 (AutoRound itself casts it to fp32) plus one shard; see
docs/memory.md.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, cast

import pydantic

from neuronforge.assets.models import input_path, resolve_model
from neuronforge.assets.texts import calibration_samples, resolve_splits
from neuronforge.core.atomic import atomic_write_json, atomic_write_text
from neuronforge.core.devices import (
    DeviceField,
    device_info,
    emulation_device,
    resolve_device,
    small_op_threads,
    threads_for_load,
)
from neuronforge.core.knobs import (
    FINITE,
    BatchSize,
    BudgetInstance,
    CalibSeqLen,
    Iters,
    LocalPath,
    MaxExtraMemory,
    Nsamples,
    PathText,
    SeqLen,
    Threshold,
    Topk,
    TpDegree,
)
from neuronforge.core.memory import reuse_freed_tensors
from neuronforge.core.outputs import check_apart, check_replaceable, check_writable, output_dir
from neuronforge.core.package_versions import package_versions
from neuronforge.core.presets import PRESETS, PresetName, apply_preset
from neuronforge.core.progress import progress, track
from neuronforge.errors import NeuronforgeError, expect, validated
from neuronforge.hf.config_compat import make_portable
from neuronforge.hf.folders import (
    check_loaded_model,
    check_tokenizer_object,
    differing_tensors,
    header_shapes,
    ignored_on_load,
    load_model,
    load_tokenizer,
    map_windows,
    mapped_tensors,
    reload_weights,
    shard_keys,
    warn_once,
)
from neuronforge.hf.not_convert import write_not_convert
from neuronforge.neuron.numerics.dtypes import ExportDtype, ExportDtypeOption, KvOption
from neuronforge.neuron.numerics.module_names import block_of, canonical_blocks, checkpoint_linears
from neuronforge.neuron.nxdi.config import DEFAULT_INSTANCE, choose_tp, model_facts, normalize_instance
from neuronforge.neuron.planner.plan import deployment_from, instance_budget
from neuronforge.pipeline.quantize import grid_export
from neuronforge.pipeline.quantize.autoround_check import compare_with_rtn
from neuronforge.pipeline.quantize.plots import frontier_chart, sensitivity_chart
from neuronforge.pipeline.quantize.scoring import SplitScorer, deployed_spec, split_windows
from neuronforge.pipeline.quantize.selection import SELECTION_HELP, Selection, missing_selection_value, select
from neuronforge.pipeline.quantize.sensitivity import SENSITIVITY_HELP, Sensitivity, analyze, find_blocks, forced_bf16
from neuronforge.pipeline.quantize.target import (
    FRONTIER_JSON,
    FRONTIER_MD,
    FRONTIER_PNG,
    TargetSearch,
    frontier_markdown,
)

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from neuronforge.core.devices import DeviceRequest
    from neuronforge.pipeline.quantize.autoround_nxd import BlockChoice
    from neuronforge.pipeline.quantize.grid_export import Agreement
    from neuronforge.pipeline.quantize.sensitivity import Block, SensitivityResult
    from neuronforge.pipeline.quantize.target import Frontier, TargetSearch


TARGET_KL_HELP = (
    "Accuracy target: keep the fewest bf16 blocks whose mean per-token KL to bf16 (emulated Neuron numerics, "
    "this --kv) on validation text is at most this; writes frontier.json/.md/.png and the test-split KL "
    "(see docs/accuracy-target.md). Replaces --selection/--max-extra-memory."
)


def check_target(
    target_kl: float | None, selection: str, modules_to_not_convert: list[str] | None, budget_instance: str | None
) -> None:
    """An accuracy target chooses the bf16 blocks itself: refuse every other way of choosing them (quantize, run)."""
    if target_kl is None:
        return
    if selection == "none":
        raise NeuronforgeError(
            "--target-kl chooses which blocks stay bf16, and --selection none quantizes every block",
            "drop --selection none (to quantize everything, drop --target-kl instead)",
        )
    if selection != "budget" or modules_to_not_convert is not None or budget_instance is not None:
        raise NeuronforgeError(
            "--target-kl chooses which blocks stay bf16 itself; it cannot be combined with --selection "
            f"{selection}, --not-convert / modules_to_not_convert or --budget-instance",
            "drop those options, or drop --target-kl",
        )


# The accuracy target, declared once (RunConfig takes the same field).
TargetKl = Annotated[float | None, pydantic.Field(gt=0, description=TARGET_KL_HELP), FINITE]


class QuantizeSettings(pydantic.BaseModel):
    """How to quantize: every knob except where the model comes from and where it goes (`quantize_model` input).

    `preset="cpu-demo"` (or "cpu-fast"; default "gpu") fills iters/nsamples/calib_seq_len left unset (presets.py).
    """

    model_config = pydantic.ConfigDict(extra="forbid")
    default_preset: ClassVar[PresetName] = "gpu"  # fills iters/nsamples/calib_seq_len left unset

    dtype: ExportDtypeOption = "int8"
    iters: Iters = PRESETS["gpu"].iters  # >= 1 with autoround (checked below)
    nsamples: Nsamples = PRESETS["gpu"].nsamples
    calib_seq_len: CalibSeqLen = PRESETS["gpu"].calib_seq_len
    text: LocalPath | None = pydantic.Field(
        None, description="your .txt/.jsonl (calibration and held-out text); default: the embedded texts"
    )
    sensitivity: Sensitivity = pydantic.Field("first_order", description=SENSITIVITY_HELP)
    selection: Selection = pydantic.Field("budget", description=SELECTION_HELP)
    max_extra_memory: MaxExtraMemory = 0.10
    topk: Topk = None
    threshold: Threshold = None
    modules_to_not_convert: list[str] | None = pydantic.Field(
        None, description="explicit blocks kept bf16 (e.g. lm_head, layers.0.mlp); skips the selection"
    )
    autoround: bool = pydantic.Field(True, description="false: round-to-nearest on NxD's grid, no tuning")
    # AutoRound's per-row range shrink (max_scale). Off by default: at 8 bits it clips far more than it saves
    # (measured on SmolLM2: row ranges cut to 0.44x and held-out KL 2x worse than RTN; see README).
    minmax_tuning: bool = pydantic.Field(
        False, description="also tune AutoRound's per-row range shrink (clips outliers; off by default, see README)"
    )
    # Budget selection by instance: keep as many blocks bf16 as still fit this instance, for the deployment below
    # (compile's defaults); replaces max_extra_memory. Needs the model folder (`quantize`, not `quantize_model`).
    budget_instance: BudgetInstance = None
    kv: KvOption = "fp8"
    seq_len: SeqLen = 1024
    batch_size: BatchSize = 1
    tp_degree: TpDegree = None
    device: DeviceField = "auto"  # where sensitivity, AutoRound and the grid export run (not in any cache key:
    # the checkpoint's bits do not depend on it)
    target_kl: TargetKl = None

    @pydantic.model_validator(mode="after")
    def _target_chooses_the_blocks(self) -> QuantizeSettings:
        check_target(self.target_kl, self.selection, self.modules_to_not_convert, self.budget_instance)
        return self

    @pydantic.model_validator(mode="after")
    def _selection_has_its_value(self) -> QuantizeSettings:
        problem = missing_selection_value(self.selection, self.topk, self.threshold)
        if problem and self.modules_to_not_convert is None:
            raise ValueError(problem)
        return self

    @pydantic.model_validator(mode="after")
    def _budget_instance_needs_budget(self) -> QuantizeSettings:
        if self.budget_instance is not None and (self.selection != "budget" or self.modules_to_not_convert is not None):
            raise ValueError(
                "budget_instance chooses the bf16 blocks: use it with selection 'budget' and no explicit list"
            )
        return self

    @pydantic.model_validator(mode="after")
    def _tuning_steps(self) -> QuantizeSettings:
        if self.autoround and self.iters < 1:
            raise ValueError(
                f"iters must be >= 1 for AutoRound (got {self.iters}); use --no-autoround for plain rounding"
            )
        return self

    @pydantic.model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        return apply_preset(values, cls.default_preset)


class QuantizeOptions(QuantizeSettings):
    """Folder to folder (`quantize`): the settings plus the input model and the output folder."""

    model: PathText = pydantic.Field("smollm2", description="embedded model name ('smollm2') or a Hugging Face folder")
    out: LocalPath = pydantic.Field(description="output folder to create (fails if it exists)")


class QuantizeResult(pydantic.BaseModel):
    out_dir: Path
    modules_to_not_convert: list[str]
    grid_agreement: float | None  # None: nothing was quantized (every block kept bf16)
    naive_agreement: float | None
    value_agreement: float | None
    naive_value_agreement: float | None
    timings: dict[str, float]
    device: dict[str, Any] = pydantic.Field(default_factory=dict)  # core/devices.py `device_info`
    # With target_kl: the chosen point (validation and test KL, instance) and where the frontier was written.
    accuracy_target: dict[str, Any] | None = None
    # With AutoRound: the whole model as tuned and as RTN on the validation/test text, and which one was written
    # (autoround_check.py `ModelChoice.to_json`); None without AutoRound or with a held-out text too short to score.
    autoround_vs_rtn: dict[str, Any] | None = None


@dataclass
class QuantizedModel:
    """What `quantize_model` did to a model (whose quantized Linears now hold NxD-grid values, in place)."""

    modules_to_not_convert: list[str]  # blocks kept in bf16 (NxDI's list for this model)
    codes: dict[str, torch.Tensor]  # Linear name -> NxD codes (int8 or float8_e4m3fn), one row per output channel
    scales: dict[str, torch.Tensor]  # Linear name -> fp32 per-row scale (weight on Neuron = codes x scale)
    rtn_layers: list[str]  # quantized Linears AutoRound left alone: rounded to the grid without tuning
    sensitivity: SensitivityResult | None  # None when modules_to_not_convert was given explicitly
    timings: dict[str, float]


WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")


def options_from(**values: Any) -> QuantizeOptions:
    """Options from keyword values; a bad value is a NeuronforgeError, not a pydantic traceback."""
    return validated(QuantizeOptions, "quantize", **values)


def check_block_names(entries: list[str], names: list[str]) -> None:
    """A user's list must use the model's canonical block names (NxDI matches substrings: others misfire)."""
    unknown = [e for e in entries if e not in names]
    if unknown:
        raise NeuronforgeError(
            f"modules_to_not_convert entries {unknown} are not blocks of this model",
            f"use canonical names such as {names[:3]} (lm_head, layers.N.self_attn, layers.N.mlp)",
        )


def check_block_names_in(entries: list[str], model_dir: Path) -> None:
    """`check_block_names` against a checkpoint's own blocks, from its safetensors headers (nothing loaded)."""
    check_block_names(entries, canonical_blocks(checkpoint_linears(header_shapes(model_dir))))


def _explicit_kept(entries: list[str], blocks: list[Block]) -> list[str]:
    """Validate a user's list against the model's canonical block names (NxDI matches substrings)."""
    names = [b.name for b in blocks]
    check_block_names(entries, names)
    wanted = set(entries) | {b.name for b in blocks if b.forced}
    return [n for n in names if n in wanted]


@dataclass
class ExportCheck:
    """What the shard-by-shard export measured: grid agreement (ours and AutoRound's stock export) and error."""

    ours: Agreement
    naive: Agreement | None  # None: not measured (RTN path)
    per_block: dict[str, dict[str, float]]
    export_s: float = 0.0
    verify_s: float = 0.0  # saving and reading back


def _export(
    src: Path,
    dst: Path,
    model: nn.Module,
    targets: list[str],
    dtype: ExportDtype,
    autoround: bool,
    device: torch.device,
    from_source: Sequence[str] = (),
) -> ExportCheck:
    """Write `src`'s files to `dst` with every target Linear's weight on NxD's grid, one shard at a time.

    Per shard: each target weight is rounded to NxD's grid from the model (bf16: as loaded for RTN, grid-exact
    already after AutoRound), turned into grid-exact bf16 and checked against the intended codes, in 1 MB row
    blocks, overwritten in place and written from there, so no second copy of the model builds up. Every other parameter is written from the model, cast
    to bf16 (NxDI's input dtype): the source's values, which `load_model` cast to bf16 and nothing since changed
    (bf16 sources are copied bit for bit); what the model does not hold comes from the source shard, but for what
    loading ignores (`ignored_on_load`: leftover buffers, a tied model's own head copy), which is left out. The written
    shard is read back and must equal what was checked, bit for bit; then its weights leave the model (which is
    consumed), so host RAM falls shard by shard and leaves room for the page cache of the shards still to be
    written. Extra memory: one map window of the source (`mapped_tensors`) and the few tensors the model lacks.
    The grid math (elementwise IEEE fp32 and row maxima, every division tensor by tensor: the same bits on any
    device, see neuron/grid.py) runs on `device`.
    `autoround`: AutoRound tuned the targets, so its stock export of each weight is measured too (what tuning
    without us would have shipped). Without it (RTN) the targets still hold what `load_model` read from `src`,
    so where the source is bf16 the error statistics take the source's values from the model and the source's
    Linear weights are never read. `from_source`: Linears the model holds quantized that the checkpoint keeps bf16
    (an accuracy target's choice, made after tuning every block): written from the source, as a kept block is.
    """

    for item in src.iterdir():
        if item.is_file() and not any(item.match(p) for p in WEIGHT_FILES):
            shutil.copy2(item, dst / item.name)
    make_portable(dst)  # a source saved by transformers 5: rope_parameters only, TokenizersBackend; NxDI reads 4.57
    linears = {f"{name}.weight": cast("nn.Linear", model.get_submodule(name)) for name in targets}
    # (before the export consumes the model; `from_source` weights then come from the source shard, cast to bf16)
    parameters = {name for name, _ in model.named_parameters()} - {f"{name}.weight" for name in from_source}
    check = ExportCheck(grid_export.Agreement(0, 0), grid_export.Agreement(0, 0) if autoround else None, {})
    total = 0
    shards = {
        shard: [key for key in keys if key in linears or not ignored_on_load(model, key)]
        for shard, keys in shard_keys(src).items()
    }
    for shard, keys in track(list(shards.items()), "grid-exact export, shard by shard"):
        start = time.perf_counter()
        with small_op_threads(device):
            tensors = _shard_tensors(src / shard, keys, model, parameters, linears, dtype, device, check, autoround)
        check.export_s += time.perf_counter() - start
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        check.verify_s += _write_checked(dst / shard, tensors)
        for key in parameters.intersection(tensors):
            module, _, name = key.rpartition(".")
            setattr(model.get_submodule(module), name, None)
    missing = sorted(set(linears) - {key for keys in shards.values() for key in keys})
    if missing:
        raise NeuronforgeError(
            f"weights {missing[:3]} are not in {src}'s safetensors", "re-save the model with save_pretrained"
        )
    index = src / "model.safetensors.index.json"
    if index.exists():
        payload = json.loads(index.read_text())
        payload.setdefault("metadata", {})["total_size"] = total
        written = {key for keys in shards.values() for key in keys}
        payload["weight_map"] = {key: shard for key, shard in payload["weight_map"].items() if key in written}
        atomic_write_json(dst / index.name, payload)
    return check


def _shard_tensors(
    file: Path,
    keys: list[str],
    model: nn.Module,
    parameters: set[str],
    linears: dict[str, nn.Linear],
    dtype: ExportDtype,
    device: torch.device,
    check: ExportCheck,
    autoround: bool,
) -> dict[str, torch.Tensor]:
    """One shard's tensors as `_export` writes them: the targets on the grid, the model's other `parameters` in bf16,
    and from `file` only what the model does not hold. A function of its own so that no tensor read from `file`
    outlives it: one would keep the source's map, and every page read through it, resident during the write."""
    import torch

    others = [key for key in keys if key in parameters and key not in linears]
    tensors = {key: model.get_parameter(key).detach().to(torch.bfloat16) for key in others}
    for key, source in mapped_tensors(file, map_windows(file, [key for key in keys if key not in tensors])):
        if key in linears:
            tensors[key] = _grid_exact(key, linears[key], source, dtype, device, check, autoround)
        else:  # a tensor the model does not hold (a Linear kept from the source, a buffer)
            tensors[key] = source.to(torch.bfloat16, copy=True) if source.is_floating_point() else source.clone()
    return tensors


def _grid_exact(
    key: str,
    linear: nn.Linear,
    source: torch.Tensor,
    dtype: ExportDtype,
    device: torch.device,
    check: ExportCheck,
    autoround: bool,
) -> torch.Tensor:
    """`linear`'s weight on NxD's grid in grid-exact bf16, checked and measured into `check` (see `_export`)."""
    import torch

    from neuronforge.neuron.numerics.grid import chunk_elements, quantize_weight, row_chunks

    # bf16, as `load_model` made it (AutoRound's block-wise tuning keeps it bf16): overwritten row block by row block.
    weight = linear.weight.detach()
    assert weight.dtype == torch.bfloat16, key
    source_in_model = not autoround and source.dtype == torch.bfloat16  # the model holds the source's bits
    err = check.per_block.setdefault(block_of(key.removesuffix(".weight")), {"sq_err": 0.0, "sq_norm": 0.0})
    for rows in row_chunks(source.shape, chunk_elements(device)):  # per-row math: chunks bound the temporaries
        tuned = weight[rows].to(device).float()  # a copy: `weight` is overwritten below
        codes, scale = quantize_weight(tuned, dtype)
        out = weight[rows] if weight.device == device else None
        exact = grid_export.exact_bf16(codes, scale, dtype, out=out)
        if out is None:
            weight[rows] = exact.cpu()
        written = exact.float()
        check.ours += grid_export.grid_check(written, codes, scale, dtype)
        if check.naive is not None:
            check.naive += grid_export.naive_agreement(source[rows].to(device), dtype)
        reference = (tuned if source_in_model else source[rows].to(device).float()).flatten()
        difference = written.flatten().sub_(reference)
        err["sq_err"] += float(torch.dot(difference, difference))
        err["sq_norm"] += float(torch.dot(reference, reference))
    return weight


def _write_checked(path: Path, tensors: dict[str, torch.Tensor]) -> float:
    """Save one shard and read it back: it must hold what was checked, bit for bit. Returns the seconds it took."""
    from safetensors.torch import save_file

    start = time.perf_counter()
    save_file(tensors, path, metadata={"format": "pt"})
    differ = differing_tensors(path, tensors)
    if differ:
        raise NeuronforgeError(
            f"{path} does not hold what was checked ({differ[:3]})",
            "check the disk holding --out (full or failing) and run again",
        )
    return time.perf_counter() - start


def _versions() -> dict[str, str]:
    return package_versions(("neuronforge", "torch", "transformers", "auto-round"))


def _analyze(
    model: PreTrainedModel, samples: list[torch.Tensor], options: QuantizeSettings, device: torch.device
) -> SensitivityResult:
    blocks = [b for b in find_blocks(model, options.dtype) if not b.forced]
    with progress() as bar:
        total = len(blocks) if options.sensitivity == "measured" else 1
        task = bar.add_task(f"sensitivity ({options.sensitivity})", total=total)
        result = analyze(
            model, samples, options.dtype, options.sensitivity, step=lambda: bar.advance(task), device=device
        )
        bar.update(task, completed=total)
    return result


def _instance_budget(options: QuantizeSettings, src: Path) -> Callable[[Sequence[str]], bool]:
    """Does the model, with these blocks kept bf16, fit options.budget_instance (neuron/plan.py)?"""
    deployment = deployment_from(
        dtype=options.dtype, kv=options.kv, seq_len=options.seq_len, batch_size=options.batch_size
    )
    return instance_budget(src, normalize_instance(options.budget_instance), deployment, options.tp_degree)


@dataclass
class _Tuned:
    kept: list[str]  # blocks kept in bf16
    targets: list[str]  # the Linears to quantize
    untouched: list[str]  # targets AutoRound left alone (rounded to the grid without tuning)
    sensitivity: SensitivityResult | None
    timings: dict[str, float]
    blocks: list[BlockChoice]  # per decoder block: AutoRound or RTN, whichever won on held-out calibration windows


def _select_and_tune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    options: QuantizeSettings,
    fits: Callable[[Sequence[str]], bool] | None,
    samples: list[torch.Tensor] | None,
    device: torch.device,
) -> _Tuned:
    """Sensitivity -> selection -> AutoRound on NxD's grid: what both the in-memory and the folder path share,
    on the CPU with the threads other work leaves idle (`threads_for_load`)."""
    from neuronforge.neuron.numerics.qlinear import quantizable_linears

    with threads_for_load(device):
        timings: dict[str, float] = {}
        if not [name for name in quantizable_linears(model) if name != "lm_head"]:
            raise NeuronforgeError(
                f"{getattr(model, 'name_or_path', '') or type(model).__name__} has no decoder Linear layers to quantize "
                "(attention/MLP projections)",
                "pass a checkpoint of a supported family (docs/model-families.md) with num_hidden_layers >= 1",
            )
        blocks = find_blocks(model, options.dtype)
        if samples is None:
            samples = calibration_samples(
                tokenizer, resolve_splits(options.text).calibration, options.nsamples, options.calib_seq_len
            )

        sensitivity = None
        if options.modules_to_not_convert is not None:
            kept = _explicit_kept(options.modules_to_not_convert, blocks)
        else:
            sensitivity = _analyze(model, samples, options, device)
            timings["sensitivity"] = sensitivity.seconds
            kept = select(
                blocks,
                sensitivity.scores,
                "none" if options.target_kl is not None else options.selection,  # the target search chooses later
                options.max_extra_memory,
                options.topk,
                options.threshold,
                fits=fits,
            ).kept

        linears = quantizable_linears(model)
        targets = [n for n in linears if block_of(n) not in kept]
        untouched = list(targets)
        choices: list[BlockChoice] = []
        if options.autoround and targets:
            from neuronforge.pipeline.quantize.autoround_nxd import check_windows, keep_bf16_layer_config, run_autoround

            check = check_windows(options.nsamples)  # more windows of the same calibration text, never tuned on
            windows = calibration_samples(
                tokenizer, resolve_splits(options.text).calibration, options.nsamples + check, options.calib_seq_len
            )
            tuned = run_autoround(
                model,
                tokenizer,
                windows,
                options.dtype,
                keep_bf16_layer_config(model, kept, block_of),
                options.iters,
                options.calib_seq_len,
                targets,
                minmax_tuning=options.minmax_tuning,
                device=device,
                check=check,
            )
            untouched, choices, timings["autoround"] = tuned.untouched, tuned.blocks, tuned.seconds
        return _Tuned(kept, targets, untouched, sensitivity, timings, choices)


def quantize_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: QuantizeSettings | None = None,
) -> QuantizedModel:
    """Quantize a loaded HF causal LM in place onto NxD's grid; nothing is written to disk.

    Every decoder Linear outside the kept blocks ends up holding the bf16 value NxD re-quantizes to the
    returned codes (exactly representable in fp32 or bf16 models). fp32 is the fast dtype on CPUs. The model may
    live on any device and stays there; the heavy steps run on `settings.device`.
    """
    import torch

    from neuronforge.neuron.numerics.qlinear import quantizable_linears

    check_loaded_model(model, "nf.quantize_model")
    check_tokenizer_object(tokenizer, "nf.quantize_model")
    options = expect(settings, QuantizeSettings, "nf.quantize_model") if settings is not None else QuantizeSettings()
    if options.budget_instance is not None:
        raise NeuronforgeError(
            "budget_instance sizes the model from its folder, and quantize_model has only the loaded model",
            "use nf.quantize(nf.QuantizeOptions(model=<folder>, ...)), or budget selection with max_extra_memory",
        )
    if options.target_kl is not None:
        raise NeuronforgeError(
            "target_kl measures candidates against the model's folder (its bf16 Linears, its instance plan), and "
            "quantize_model has only the loaded model",
            "use nf.quantize(nf.QuantizeOptions(model=<folder>, target_kl=...))",
        )
    tuned = _select_and_tune(model, tokenizer, options, None, None, resolve_device(options.device))
    linears = quantizable_linears(model)
    timings = tuned.timings
    t0 = time.perf_counter()
    codes: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in track(tuned.targets, "grid-exact export"):
            # Tuned weights already sit on NxD's grid; untouched ones are rounded to it here (RTN).
            weight = linears[name].weight
            codes[name], scales[name], exact = grid_export.checked_grid_exact(weight, options.dtype, name)
            weight.copy_(exact)
    timings["export"] = time.perf_counter() - t0
    return QuantizedModel(tuned.kept, codes, scales, tuned.untouched, tuned.sensitivity, timings)


def quantize(options: QuantizeOptions) -> QuantizeResult:
    """Run stage 1 folder to folder and write `options.out` atomically. See the module docstring."""

    start = time.perf_counter()
    options = expect(options, QuantizeOptions, "nf.quantize")
    out = Path(options.out).expanduser()
    check_apart(out, {"--model": input_path(options.model), "--text": options.text})
    check_writable(out)
    check_replaceable(out, overwrite=False)
    device = resolve_device(options.device)  # `cuda` without a usable GPU refuses here, before anything is loaded
    # Everything that can be wrong with the inputs is checked before the (long) model load.
    src = resolve_model(options.model)
    fits = _instance_budget(options, src) if options.budget_instance else None  # refuses before any heavy work
    tokenizer = load_tokenizer(src)
    if options.modules_to_not_convert is not None:
        check_block_names_in(options.modules_to_not_convert, src)
    samples = calibration_samples(
        tokenizer, resolve_splits(options.text).calibration, options.nsamples, options.calib_seq_len
    )
    # The bf16 reference on the validation/test text first (a whole model of its own, never beside the one to
    # quantize): it judges AutoRound against RTN and an accuracy target's candidates. A target measures its floor
    # here too, so one below the floor fails before any tuning.
    tp_degree = options.tp_degree or choose_tp(model_facts(src), DEFAULT_INSTANCE)  # compile's default, as emulate
    scorer = _split_scorer(options, src, tokenizer, tp_degree, emulation_device(device, options.device))
    search = _target_search(options, scorer, src, tp_degree) if scorer and options.target_kl is not None else None
    # Once, in bf16 (what NxDI reads): heavy steps upcast one block at a time on the accelerator.
    model = load_model(src)
    reuse_freed_tensors()  # one model streamed through: layer-sized temporaries reuse the heap (core/memory.py)
    load_seconds = time.perf_counter() - start - (search.seconds if search else scorer.seconds if scorer else 0.0)
    tuned = _select_and_tune(model, tokenizer, options, fits, samples, device)
    timings = {"load": load_seconds, **tuned.timings}
    if scorer is not None and search is None:  # (a target search's time includes its reference)
        timings["reference"] = scorer.seconds
    kept, targets, untouched, sensitivity = tuned.kept, tuned.targets, tuned.untouched, tuned.sensitivity
    model_choice = None
    shipped_tuning = options.autoround and len(untouched) < len(targets)  # (AutoRound quantized some target)
    if scorer is not None and shipped_tuning:
        model_choice = compare_with_rtn(
            scorer,
            src,
            model,
            [n for n in targets if n not in untouched],
            deployed_spec(options.dtype, options.kv, kept, tp_degree),
            emulation_device(device, options.device),
        )
        timings["autoround_vs_rtn"] = model_choice.seconds
        if model_choice.winner == "rtn":  # the targets as loaded: the export rounds them as NxD would
            reload_weights(src, model, [f"{name}.weight" for name in targets])
            shipped_tuning = False
    frontier = None
    if search is not None:
        assert sensitivity is not None  # (target_kl excludes an explicit list)
        frontier = search.search(model, find_blocks(model), sensitivity.scores)
        timings["target_search"] = frontier.seconds
        assert frontier.chosen is not None
        kept = frontier.chosen.kept
        targets = [name for name in targets if block_of(name) not in kept]
        untouched = [name for name in untouched if name in targets]
        del search  # its bf16 model
    del scorer  # the reference's logits (0.45 GB at SmolLM2's vocabulary, 1.2 GB at Llama 3's): not through the export
    restored = [name for name in tuned.targets if name not in targets]  # tuned, then kept bf16 by the target

    with output_dir(out) as tmp:
        # The naive figure describes AutoRound's stock export, so it is measured when AutoRound's tuning ships
        # (on the RTN path it would only cost time: importing auto-round and two more passes over every weight).
        check = _export(src, tmp, model, targets, options.dtype, shipped_tuning, device, from_source=restored)
        ours, naive, per_block = check.ours, check.naive, check.per_block
        grid_export.require_exact(ours, str(out))
        timings["export"], timings["verify"] = check.export_s, check.verify_s
        timings["total"] = time.perf_counter() - start

        write_not_convert(tmp, kept)
        if sensitivity is not None:
            atomic_write_json(tmp / "sensitivity.json", {**sensitivity.to_json(), "kept_bf16": kept})
            sensitivity_chart(sensitivity.scores, kept, sensitivity.method, tmp / "sensitivity.png")
        accuracy_target = _write_frontier(frontier, tmp) if frontier is not None else None
        report: dict[str, Any] = {
            "model": str(src),
            "options": options.model_dump(mode="json", exclude={"out"}),  # (out: where this file is; under
            # `run` a temporary folder renamed into place afterwards)
            "dtype": options.dtype,
            "modules_to_not_convert": kept,
            "forced_bf16": forced_bf16(model, options.dtype),  # kept whatever the selection: NxDI needs them bf16
            "grid_agreement": ours.fraction if targets else None,
            "grid_matching_weights": ours.matching,
            "quantized_weights": ours.total,
            "grid_value_agreement": ours.value_fraction if targets else None,
            "naive_agreement": naive.fraction if targets and naive else None,
            "naive_value_agreement": naive.value_fraction if targets and naive else None,
            "value_agreement_definition": "weights whose value on Neuron (NxD code x NxD scale) is within a relative "
            "2^-8 (bf16 precision) of the value the quantizer tuned",
            "naive_definition": "AutoRound's stock export (int: qmax 128, signed scale; fp8: +-448) in bf16, re-quantized "
            "by NxD; measured when AutoRound's tuning is written (null with --no-autoround or when RTN won)",
            # (what the checkpoint holds: after RTN won the whole-model check, every target is RTN's)
            "autoround_tuned_layers": len(targets) - len(untouched) if shipped_tuning else 0,
            "rtn_layers": untouched if shipped_tuning else targets,
            "autoround_vs_rtn": {
                "definition": "per decoder block, relative squared error of its output against the bf16 block's on "
                "calibration windows AutoRound did not tune on; the better of AutoRound's tuning and RTN is kept. "
                "Then the whole model (whole_model): the better of the tuned model and RTN on the validation text",
                "blocks": [
                    {"block": c.block, "autoround": c.autoround_error, "rtn": c.rtn_error, "kept": c.winner}
                    for c in tuned.blocks
                ],
                "whole_model": model_choice.to_json() if model_choice is not None else None,
            },
            "per_block_relative_error": {
                b: (e["sq_err"] / e["sq_norm"]) ** 0.5 if e["sq_norm"] else 0.0 for b, e in per_block.items()
            },
            "accuracy_target": accuracy_target,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "device": device_info(device),
            "versions": _versions(),
        }
        atomic_write_json(tmp / "quantization_report.json", report)
    return QuantizeResult(
        out_dir=out,
        modules_to_not_convert=kept,
        grid_agreement=report["grid_agreement"],
        naive_agreement=report["naive_agreement"],
        value_agreement=report["grid_value_agreement"],
        naive_value_agreement=report["naive_value_agreement"],
        timings=timings,
        device=report["device"],
        accuracy_target=accuracy_target,
        autoround_vs_rtn=report["autoround_vs_rtn"]["whole_model"],
    )


def _split_scorer(
    options: QuantizeSettings,
    src: Path,
    tokenizer: PreTrainedTokenizerBase,
    tp_degree: int,
    device: torch.device | DeviceRequest,
) -> SplitScorer | None:
    """The judge of what stage 1 decides after tuning: None when nothing is decided (RTN without a target). A text too
    short for it fails a target (it has nothing to measure on) and only warns with AutoRound (the per-block check,
    on calibration windows, still decides)."""
    if not options.autoround and options.target_kl is None:
        return None
    try:
        windows = split_windows(tokenizer, options.text)
    except NeuronforgeError as exc:
        if options.target_kl is not None:
            raise
        warn_once(
            f"{exc.what}; so AutoRound is compared with RTN per block only, not on the whole model (fix: {exc.fix})"
        )
        return None
    return SplitScorer(src, windows, tp_degree, device)


def _target_search(options: QuantizeSettings, scorer: SplitScorer, src: Path, tp_degree: int) -> TargetSearch:
    """The accuracy target's floor, at the deployment's KV cache and tp degree."""
    assert options.target_kl is not None
    return TargetSearch(
        scorer,
        src,
        options.target_kl,
        options.dtype,
        options.kv,
        tp_degree,
        {"seq_len": options.seq_len, "batch_size": options.batch_size},
    )


def _write_frontier(frontier: Frontier, folder: Path) -> dict[str, Any]:
    """frontier.json/.md/.png into the checkpoint folder; returns the chosen point for the report."""

    assert frontier.chosen is not None and frontier.test is not None
    atomic_write_json(folder / FRONTIER_JSON, frontier.to_json())
    atomic_write_text(folder / FRONTIER_MD, frontier_markdown(frontier))
    frontier_chart(frontier, folder / FRONTIER_PNG)
    return {
        "target_kl": frontier.target_kl,
        "kv": frontier.kv,
        "floor_kl": frontier.floor.kl,
        "validation": asdict(frontier.chosen.validation),
        "test": asdict(frontier.test),
        "kept_blocks": len(frontier.chosen.kept),
        "extra_bytes": frontier.chosen.extra_bytes,
        "weight_bytes": frontier.chosen.weight_bytes,
        "instance": frontier.chosen.instance,
        "tp_degree": frontier.chosen.tp_degree,
        "usd_per_hour": frontier.chosen.usd_per_hour,
        "candidates_measured": len(frontier.points),
        "search_seconds": round(frontier.seconds, 1),
        "frontier": FRONTIER_JSON,
    }
