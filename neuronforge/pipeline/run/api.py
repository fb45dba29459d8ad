"""`neuronforge run`: resolve inputs (mirroring s3:// ones), run the stages, sync the run directory up.

With an s3:// `out`, the run directory lives in the local cache and is mirrored from the bucket
first, so a run started on a GPU host (quantize, emulate) and continued on an inf2 host (compile,
package) shares one manifest: each host skips what the other already finished. Every finished or
failed stage is pushed back before the next one starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

from pydantic import BaseModel

from neuronforge.errors import expect
from neuronforge.neuron.planner.plan import describe, load_model_shape, smallest_for
from neuronforge.pipeline.evaluate.report import VariantResult
from neuronforge.pipeline.run import storage
from neuronforge.pipeline.run.checks import check_inputs, check_mirror, check_output
from neuronforge.pipeline.run.config import RunConfig
from neuronforge.pipeline.run.manifest import MANIFEST_FILE, Manifest
from neuronforge.pipeline.run.runner import Listener, Stage, StageEvent, run_stages
from neuronforge.pipeline.run.stages import STAGES, RunInputs
from neuronforge.pipeline.run.summaries import SUMMARIES, EmulateSummary, EvaluateSummary, ModelSummary

Summary = TypeVar("Summary", bound=BaseModel)


class Noted(Protocol):
    """Every stage summary: one line for the run's stage table."""

    def note(self, run_dir: Path) -> str: ...


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path  # local run directory (the mirror, for an s3:// out)
    remote: str | None  # the s3:// run directory, if any
    manifest: Manifest


def resolve_model_input(model: str) -> str:
    """An embedded name or local folder as given; an s3:// prefix mirrored into the cache first."""
    return str(storage.download(model)) if storage.is_s3(model) else model


def run_pipeline(
    config: RunConfig, *, listener: Listener = lambda event: None, stages: list[Stage] | None = None
) -> RunOutcome:
    """Run `config.stages` in the run directory, skipping what is already done with the same inputs.

    Every input and the output location are checked first (`checks`), so a bad one fails before anything
    is written or loaded.
    """
    config = expect(config, RunConfig, "nf.run")
    check_output(config)
    target = config.run_dir()
    remote = target if storage.is_s3(target) else None
    run_dir = storage.local_mirror(target) if remote else Path(target)
    inputs = RunInputs(
        config=config, model=resolve_model_input(config.model), text=storage.localize(config.text, what="text file")
    )
    check_inputs(config, inputs.model, inputs.text)
    if remote:
        storage.download(remote, run_dir, missing_ok=True)
        check_mirror(run_dir, remote)

    _warn_if_another_model(run_dir, config.model, listener)

    def push(name: str) -> None:
        if remote is None:
            return
        if (run_dir / name).is_dir():
            storage.upload_dir(run_dir / name, f"{remote.rstrip('/')}/{name}")
        storage.upload_file(run_dir / MANIFEST_FILE, f"{remote.rstrip('/')}/{MANIFEST_FILE}")

    try:
        manifest = run_stages(
            run_dir,
            stages or STAGES,
            inputs,
            selected=config.stages,
            listener=listener,
            after_stage=push,
            config_record=config.model_dump(mode="json"),
        )
    except BaseException:
        if remote and (run_dir / MANIFEST_FILE).exists():
            push(MANIFEST_FILE)  # let the other host see where this run stopped
        raise
    return RunOutcome(run_dir=run_dir, remote=remote, manifest=manifest)


def _warn_if_another_model(run_dir: Path, model: str, listener: Listener) -> None:
    """Re-using a run directory re-runs what changed, by design; but when the model changed, every result in it
    is about to be replaced by another model's, which a re-used folder name hid (report O13): say so first."""
    if not (run_dir / MANIFEST_FILE).is_file():
        return
    manifest = Manifest.load(run_dir)
    previous = manifest.config.get("model")
    if previous in (None, model) or not any(record.status == "done" for record in manifest.stages.values()):
        return
    listener(
        StageEvent(
            "model",
            "warning",
            f"{run_dir} holds the results of another model ({previous}); the stages that run now replace them "
            f"with results for {model} (choose another --out to keep both)",
        )
    )


@dataclass(frozen=True)
class VariantLine:
    """One row of the run summary: a variant, its measured accuracy and the smallest inf2 it fits."""

    label: str
    ppl_recovery: float  # mean over texts of bf16_ppl / variant_ppl x 100
    instance: str | None  # e.g. "ml.inf2.xlarge (tp 2, $0.76/h)"; None = no inf2 instance fits


@overload
def finished(outcome: RunOutcome, stage: str) -> Noted | None: ...
@overload
def finished(outcome: RunOutcome, stage: str, model: type[Summary]) -> Summary | None: ...
def finished(outcome: RunOutcome, stage: str, model: type[BaseModel] | None = None) -> Any:
    """A stage's summary when it finished in this run directory (as `model`, by default its SUMMARIES model)."""
    record = outcome.manifest.stages.get(stage)
    if record is None or record.status != "done":
        return None
    return (model or SUMMARIES[stage]).model_validate(record.summary)


def variant_lines(outcome: RunOutcome, config: RunConfig) -> list[VariantLine]:
    """bf16, all-quantized and selective variants from the evaluate report; else bf16 vs the run's quantized
    checkpoint from the emulate check, planned for the run's deployment (neuron/plan.py). Empty when neither ran."""
    evaluate = finished(outcome, "evaluate", EvaluateSummary)
    if evaluate is not None:
        return [_from_report(variant) for variant in evaluate.variants]
    emulate, model = finished(outcome, "emulate", EmulateSummary), finished(outcome, "model", ModelSummary)
    if emulate is None or model is None:
        return []

    shape = load_model_shape(Path(model.path), name=config.model)
    deployment = {"seq_len": config.seq_len or 1024, "batch_size": config.batch_size}
    ppl = emulate.perplexity
    lines = []
    for key, label, dtype, kv_fp8, blocks in (
        ("bf16", "bf16 (reference)", None, False, []),
        ("neuron", f"{config.dtype} (this run)", config.dtype, config.kv == "fp8", emulate.modules_to_not_convert),
    ):
        recovery = sum(100.0 * ppl["bf16"][t] / ppl[key][t] for t in ppl["bf16"]) / len(ppl["bf16"])
        row = smallest_for(shape, dtype, kv_fp8, blocks, **deployment)
        lines.append(VariantLine(label, recovery, describe(row) if row else None))
    return lines


def _from_report(variant: VariantResult) -> VariantLine:
    recovery = sum(variant.ppl_recovery.values()) / len(variant.ppl_recovery)
    instance = variant.instance
    if instance is not None:
        instance = f"{instance} (tp {variant.instance_tp}, ${variant.instance_usd_per_hour:.2f}/h)"
    return VariantLine(variant.label, recovery, instance)
