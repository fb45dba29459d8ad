"""CLI: `neuronforge run`, `neuronforge config init`, `neuronforge doctor`.

Every `run` flag is a RunConfig field of the same name (help text included), defaulting to None
so that only flags actually given override the config file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from neuronforge.console import App, console, err_console
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.runconfig import ALL_STAGES, RunConfig, build_config, default_config_yaml, read_config_file
from neuronforge.pipeline.runner import StageEvent


def _h(field: str) -> str:
    return RunConfig.model_fields[field].description or ""


def _print_event(event: StageEvent) -> None:
    took = f" in {event.seconds:.1f} s" if event.seconds is not None else ""
    if event.status == "running":
        err_console.print(f"[bold cyan]>> {event.stage}[/]: {event.message}")
    elif event.status == "done":
        err_console.print(f"[green]ok {event.stage}[/] done{took}")
    elif event.status == "up to date":
        took = f"; it took {event.seconds:.1f} s when it ran" if event.seconds is not None else ""
        err_console.print(f"[green]ok {event.stage}[/] up to date: inputs unchanged, not run again{took}")
    elif event.status == "skipped":
        err_console.print(f"[yellow]-- {event.stage}[/] skipped: {event.message}")
    else:
        err_console.print(f"[red]xx {event.stage}[/] failed{took}: {event.message}")


def _summary(outcome: Any, seconds: float) -> None:
    """Stage table, the emulated accuracy, and where the outputs are."""
    records = outcome.manifest.stages
    table = Table(title=f"neuronforge run: {outcome.remote or outcome.run_dir}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for name in [stage for stage in ALL_STAGES if stage in records]:
        record = records[name]
        seconds_text = f"{record.seconds:.1f}" if record.seconds is not None else ""
        note = record.message or ""
        if name == "model" and record.status == "done":
            note = f"{record.summary['model_type']}, {record.summary['layers']} layers"
        if name == "quantize" and record.status == "done":
            note = "bf16 blocks: " + (", ".join(record.summary.get("modules_to_not_convert", [])) or "none")
        if name == "evaluate" and record.status == "done":
            note = str(outcome.run_dir / name / record.summary["report"])
        if name == "package" and record.status == "done":
            note = f"{record.summary['kind']}: {outcome.run_dir / name / record.summary['path']}"
        table.add_row(name, record.status, seconds_text, note)
    console.print(table)
    model = records.get("model")
    if model is not None and model.status == "done":
        console.print(f"model: {model.summary['path']}", soft_wrap=True)
    emulate = records.get("emulate")
    if emulate is not None and emulate.status == "done":
        console.print((outcome.run_dir / "emulate" / "emulation.md").read_text(), markup=False, highlight=False)
    package = records.get("package")
    if package is not None and package.status == "done":
        console.print(f"next: {package.summary['next']}")
    console.print(f"manifest: {outcome.run_dir / 'manifest.json'}  (wall time {seconds:.1f} s)")


def run(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML/TOML config file (local or s3://); "
                                         "flags override its keys. Write one with `neuronforge config init`."),
    model: Optional[str] = typer.Option(None, "--model", help=_h("model") + " [default: smollm2]"),
    out: Optional[str] = typer.Option(None, "--out", help=_h("out")),
    stages: Optional[str] = typer.Option(None, "--stages", help="comma-separated subset; " + _h("stages")),
    text: Optional[str] = typer.Option(None, "--text", help=_h("text")),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_h("dtype")),
    iters: Optional[int] = typer.Option(None, "--iters", help=_h("iters")),
    nsamples: Optional[int] = typer.Option(None, "--nsamples", help=_h("nsamples")),
    seqlen: Optional[int] = typer.Option(None, "--seqlen", help=_h("seqlen")),
    sensitivity: Optional[str] = typer.Option(None, "--sensitivity", help=_h("sensitivity")),
    selection: Optional[str] = typer.Option(None, "--selection", help=_h("selection")),
    max_extra_memory: Optional[float] = typer.Option(None, "--max-extra-memory", help=_h("max_extra_memory")),
    topk: Optional[int] = typer.Option(None, "--topk", help=_h("topk")),
    threshold: Optional[float] = typer.Option(None, "--threshold", help=_h("threshold")),
    modules_to_not_convert: Optional[str] = typer.Option(None, "--modules-to-not-convert",
                                                         help="comma-separated; " + _h("modules_to_not_convert")),
    autoround: Optional[bool] = typer.Option(None, "--autoround/--no-autoround", help=_h("autoround")),
    minmax_tuning: Optional[bool] = typer.Option(None, "--minmax-tuning/--no-minmax-tuning", help=_h("minmax_tuning")),
    kv: Optional[str] = typer.Option(None, "--kv", help=_h("kv")),
    eval_tokens: Optional[int] = typer.Option(None, "--eval-tokens", help=_h("eval_tokens")),
    instance: Optional[str] = typer.Option(None, "--instance", help=_h("instance")),
    tp_degree: Optional[int] = typer.Option(None, "--tp-degree", help=_h("tp_degree")),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=_h("batch_size")),
    neuron_seq_len: Optional[int] = typer.Option(None, "--neuron-seq-len", help=_h("neuron_seq_len")),
    sdk: Optional[str] = typer.Option(None, "--sdk", help=_h("sdk")),
) -> None:
    """Run the pipeline end to end: model -> quantize -> emulate -> (Neuron host) compile -> package.

    Outputs go to a run directory with a manifest.json; a re-run skips every stage whose inputs are
    unchanged and resumes at the first stage that did not finish.
    """
    from neuronforge.pipeline.run import run_pipeline
    from neuronforge.pipeline.storage import is_s3, localize

    overrides = {name: value for name, value in locals().items() if name in RunConfig.model_fields}
    file_values, source = {}, "the command line"
    if config is not None:
        file_values = read_config_file(localize(config, what="config file"))
        source = f"{config} and the command line"
    settings = build_config(file_values, overrides, source)
    started = time.perf_counter()
    target = settings.run_dir()
    console.print(f"run directory: {target}{'' if is_s3(target) else f' ({Path(target).resolve()})'}")
    outcome = run_pipeline(settings, listener=_print_event)
    _summary(outcome, time.perf_counter() - started)


def config_init(
    path: str = typer.Argument("neuronforge.yaml", help="where to write it ('-' prints it)"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write the default run configuration as commented YAML (every key `neuronforge run` accepts)."""
    from neuronforge.atomic import atomic_write_text

    text = default_config_yaml()
    if path == "-":
        typer.echo(text, nl=False)
        return
    target = Path(path)
    if target.exists() and not force:
        raise NeuronforgeError(f"{target} already exists", "pass --force to overwrite it, or choose another path")
    atomic_write_text(target, text)
    console.print(f"wrote {target}; run it with: neuronforge run --config {target}")


def doctor(
    model: str = typer.Option("smollm2", "--model", help="model whose size to check disk and memory against"),
    out: str = typer.Option("runs", "--out", help="where runs will write (disk check)"),
    as_json: bool = typer.Option(False, "--json", help="print the checks as JSON"),
) -> None:
    """Report what this host can do: CUDA GPU, Neuron devices and SDK, AWS credentials/region, disk, memory."""
    from neuronforge.pipeline.doctor import as_json as checks_json
    from neuronforge.pipeline.doctor import capabilities, diagnose

    checks, note = diagnose(model, Path(out))
    if as_json:
        typer.echo(json.dumps({"checks": checks_json(checks), "model": note, "can": capabilities(checks)}, indent=2))
        return
    colors = {"ok": "green", "warn": "yellow", "absent": "dim"}
    table = Table(title="neuronforge doctor")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    for check in checks:
        table.add_row(check.name, f"[{colors[check.status]}]{check.status}[/]", check.detail)
    console.print(table)
    console.print(f"model: {note}")
    for line in capabilities(checks):
        console.print(f"  can run {line}")
    for check in checks:
        if check.fix:
            console.print(f"[bold]fix ({check.name}):[/] {check.fix}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `run`, `config init` and `doctor` to the root app."""
    app.command("run")(run)
    app.command("doctor")(doctor)
    config_app = App(help="Write and inspect run configuration files.")
    config_app.command("init")(config_init)
    app.add_typer(config_app, name="config")
