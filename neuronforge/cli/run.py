"""CLI: `neuronforge run` and `neuronforge config init`.

Every `run` flag is a RunConfig field of the same name (help text included), defaulting to None
so that only flags actually given override the config file.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from neuronforge.cli.app import App, console
from neuronforge.cli.options import OverwriteOpt, VerboseOpt, parse_path_text
from neuronforge.core.atomic import atomic_write_text
from neuronforge.core.devices import DeviceRequest
from neuronforge.core.logs import third_party_log, third_party_logs
from neuronforge.core.presets import presets_help
from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.numerics.dtypes import ExportDtype, KvDtype
from neuronforge.pipeline.quantize.selection import Selection
from neuronforge.pipeline.quantize.sensitivity import Sensitivity
from neuronforge.pipeline.run import storage
from neuronforge.pipeline.run.api import RunOutcome, finished, run_pipeline, variant_lines
from neuronforge.pipeline.run.config import ALL_STAGES, RunConfig, build_config, default_config_yaml, read_config_file
from neuronforge.pipeline.run.runner import StageEvent
from neuronforge.pipeline.run.storage import is_s3, localize
from neuronforge.pipeline.run.summaries import ModelSummary, PackageSummary, QuantizeSummary


def _h(field: str) -> str:
    return RunConfig.model_fields[field].description or ""


def _print_event(event: StageEvent) -> None:
    message = escape(event.message)  # paths and YAML snippets may hold [...]
    took = f" in {event.seconds:.1f} s" if event.seconds is not None else ""
    if event.status == "running":
        err_console.print(f"[bold cyan]>> {event.stage}[/]: {message}")
    elif event.status == "done":
        err_console.print(f"[green]ok {event.stage}[/] done{took}")
    elif event.status == "up to date":
        took = f"; it took {event.seconds:.1f} s when it ran" if event.seconds is not None else ""
        err_console.print(f"[green]ok {event.stage}[/] up to date: inputs unchanged, not run again{took}")
    elif event.status == "warning":
        err_console.print(f"[yellow]warning:[/] {message}")
    elif event.status == "skipped":
        err_console.print(f"[yellow]-- {event.stage}[/] skipped: {message}")
    else:
        err_console.print(f"[red]xx {event.stage}[/] failed{took}: {message}")


def _variants_table(outcome: RunOutcome, config: RunConfig) -> None:
    """Accuracy next to the smallest inf2 instance, per variant (evaluate's when it ran, else emulate's)."""
    lines = variant_lines(outcome, config)
    if not lines:
        return
    table = Table(title="variants: perplexity recovery and the smallest inf2 instance that fits (neuronforge plan)")
    for column in ("variant", "recovery %", "smallest inf2 (tp, $/h)"):
        table.add_column(column)
    for line in lines:
        table.add_row(line.label, f"{line.ppl_recovery:.2f}", line.instance or "none fits")
    console.print(table)


def _summary(outcome: RunOutcome, seconds: float, config: RunConfig) -> None:
    """Stage table, the emulated accuracy, and where the outputs are."""
    records = outcome.manifest.stages
    table = Table(title=f"neuronforge run: {outcome.remote or outcome.run_dir}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for name in [stage for stage in ALL_STAGES if stage in records]:
        record = records[name]
        seconds_text = f"{record.seconds:.1f}" if record.seconds is not None else ""
        summary = finished(outcome, name)
        note = (summary.note(outcome.run_dir) if summary is not None else "") or record.message or ""
        table.add_row(name, record.status, seconds_text, note)
    console.print(table)
    quantized = finished(outcome, "quantize", QuantizeSummary)
    if quantized is not None and quantized.grid_agreement is None:
        err_console.print("[yellow]warning:[/] nothing was quantized: every block is in modules_to_not_convert")
    model = finished(outcome, "model", ModelSummary)
    if model is not None:
        console.print(f"model: {model.path}", soft_wrap=True)
    if finished(outcome, "emulate") is not None:
        console.print((outcome.run_dir / "emulate" / "emulation.md").read_text(), markup=False, highlight=False)
    _variants_table(outcome, config)
    package = finished(outcome, "package", PackageSummary)
    if package is not None:
        console.print(f"next: {package.next}")
    console.print(f"manifest: {outcome.run_dir / 'manifest.json'}  (wall time {seconds:.1f} s)")


def run_command(
    config: str | None = typer.Option(
        None,
        "--config",
        "-c",
        parser=parse_path_text,
        help="YAML/TOML config file (local or s3://); "
        "flags override its keys. Write one with `neuronforge config init`.",
    ),
    model: str | None = typer.Option(None, "--model", help=_h("model") + " (default: smollm2)"),
    out: str | None = typer.Option(None, "--out", help=_h("out")),
    stages: str | None = typer.Option(None, "--stages", help="comma-separated subset; " + _h("stages")),
    text: str | None = typer.Option(None, "--text", help=_h("text")),
    dtype: ExportDtype | None = typer.Option(None, "--dtype", help=_h("dtype")),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help=f"calibration budget for unset iters/nsamples/calib_seq_len (default: cpu-demo); {presets_help()}",
    ),
    iters: int | None = typer.Option(None, "--iters", help=_h("iters")),
    nsamples: int | None = typer.Option(None, "--nsamples", help=_h("nsamples")),
    calib_seq_len: int | None = typer.Option(None, "--calib-seq-len", help=_h("calib_seq_len")),
    sensitivity: Sensitivity | None = typer.Option(None, "--sensitivity", help=_h("sensitivity")),
    selection: Selection | None = typer.Option(None, "--selection", help=_h("selection")),
    max_extra_memory: float | None = typer.Option(None, "--max-extra-memory", help=_h("max_extra_memory")),
    budget_instance: str | None = typer.Option(None, "--budget-instance", help=_h("budget_instance")),
    topk: int | None = typer.Option(None, "--topk", help=_h("topk")),
    threshold: float | None = typer.Option(None, "--threshold", help=_h("threshold")),
    target_kl: float | None = typer.Option(None, "--target-kl", help=_h("target_kl")),
    modules_to_not_convert: str | None = typer.Option(
        None, "--modules-to-not-convert", help="comma-separated; " + _h("modules_to_not_convert")
    ),
    autoround: bool | None = typer.Option(None, "--autoround/--no-autoround", help=_h("autoround")),
    minmax_tuning: bool | None = typer.Option(None, "--minmax-tuning/--no-minmax-tuning", help=_h("minmax_tuning")),
    kv: KvDtype | None = typer.Option(None, "--kv", help=_h("kv")),
    eval_tokens: int | None = typer.Option(None, "--eval-tokens", help=_h("eval_tokens")),
    instance: str | None = typer.Option(None, "--instance", help=_h("instance")),
    tp_degree: int | None = typer.Option(None, "--tp-degree", help=_h("tp_degree")),
    batch_size: int | None = typer.Option(None, "--batch-size", help=_h("batch_size")),
    seq_len: int | None = typer.Option(None, "--seq-len", help=_h("seq_len")),
    sdk: str | None = typer.Option(None, "--sdk", help=_h("sdk")),
    verbose: VerboseOpt = False,
    device: DeviceRequest | None = typer.Option(None, "--device", help=_h("device")),
) -> None:
    """Run the pipeline end to end: model -> quantize -> emulate -> (Neuron host) compile -> package.

    Outputs go to a run directory with a manifest.json; a re-run skips every stage whose inputs are
    unchanged and resumes at the first stage that did not finish.
    """
    overrides = {name: value for name, value in locals().items() if name in RunConfig.model_fields or name == "preset"}
    file_values, source = {}, "the command line"
    if config is not None:
        file_values = read_config_file(localize(config, what="config file"))
        source = f"{config} and the command line"
    settings = build_config(file_values, overrides, source)
    started = time.perf_counter()
    target = settings.run_dir()
    console.print(f"run directory: {target}{'' if is_s3(target) else f' ({Path(target).resolve()})'}")
    log_dir = storage.local_mirror(target) if is_s3(target) else Path(target)
    existed = os.path.lexists(log_dir)  # (False for a name too long: run_pipeline's checks say so, naming --out)
    try:
        with third_party_logs(third_party_log(log_dir), verbose):
            outcome = run_pipeline(settings, listener=_print_event)
    except BaseException:
        if not existed:
            _drop_if_only_logs(log_dir)
        raise
    _summary(outcome, time.perf_counter() - started, settings)


def _drop_if_only_logs(folder: Path) -> None:
    """A run refused before any stage leaves no folder behind, even when a library logged while it checked."""
    logs = third_party_log(folder).parent
    if os.path.isdir(folder) and {p.name for p in folder.iterdir()} == {logs.name}:
        shutil.rmtree(folder)


config_cli = App(help="Write the run configuration file.")


@config_cli.command("init")
def config_init(
    path: str = typer.Argument("neuronforge.yaml", parser=parse_path_text, help="where to write it ('-' prints it)"),
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the default run configuration as commented YAML (every key `neuronforge run` accepts)."""
    text = default_config_yaml()
    if path == "-":
        typer.echo(text, nl=False)
        return
    target = Path(path)
    if target.is_dir():  # (--overwrite replaced the folder's temp file name in the error: C19)
        raise NeuronforgeError(f"{target} is a folder", "pass a file path for the configuration, e.g. neuronforge.yaml")
    if target.exists() and not overwrite:
        raise NeuronforgeError(f"{target} already exists", "pass --overwrite to replace it, or choose another path")
    atomic_write_text(target, text)
    console.print(f"wrote {target}; run it with: neuronforge run --config {target}")
