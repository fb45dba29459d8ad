"""`neuronforge quantize`: stage 1 from the command line (heavy imports stay inside the command)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import typer
from rich.markup import escape

from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import NotConvertOpt, VerboseOpt, given, model_option, parse_path, preset_option
from neuronforge.core.devices import DeviceRequest
from neuronforge.core.logs import LOG_FILE, third_party_log, third_party_logs
from neuronforge.core.progress import err_console
from neuronforge.hf.not_convert import read_not_convert
from neuronforge.neuron.numerics.dtypes import ExportDtype, KvDtype
from neuronforge.pipeline.quantize.api import QuantizeOptions, options_from, quantize
from neuronforge.pipeline.quantize.selection import Selection
from neuronforge.pipeline.quantize.sensitivity import Sensitivity

Q = QuantizeOptions
PRESET_FILLED = "from --preset"


def quantize_command(
    out: Path = typer.Option(..., "--out", parser=parse_path, help=Q.model_fields["out"].description),
    model: str | None = model_option(Q, "model"),
    dtype: ExportDtype | None = model_option(Q, "dtype"),
    preset: str | None = preset_option(Q),
    iters: int | None = model_option(Q, "iters", default_text=PRESET_FILLED),
    nsamples: int | None = model_option(Q, "nsamples", default_text=PRESET_FILLED),
    calib_seq_len: int | None = model_option(Q, "calib_seq_len", default_text=PRESET_FILLED),
    text: Path | None = model_option(Q, "text"),
    sensitivity: Sensitivity | None = model_option(Q, "sensitivity"),
    selection: Selection | None = model_option(Q, "selection"),
    max_extra_memory: float | None = model_option(Q, "max_extra_memory"),
    topk: int | None = model_option(Q, "topk"),
    threshold: float | None = model_option(Q, "threshold"),
    budget_instance: str | None = model_option(Q, "budget_instance"),
    kv: KvDtype | None = model_option(Q, "kv"),
    seq_len: int | None = model_option(Q, "seq_len"),
    batch_size: int | None = model_option(Q, "batch_size"),
    tp_degree: int | None = model_option(Q, "tp_degree"),
    target_kl: float | None = model_option(Q, "target_kl"),
    not_convert: NotConvertOpt = None,
    autoround: bool | None = model_option(Q, "autoround", "--autoround/--no-autoround"),
    minmax_tuning: bool | None = model_option(Q, "minmax_tuning", "--minmax-tuning/--no-minmax-tuning"),
    verbose: VerboseOpt = False,
    device: DeviceRequest | None = model_option(Q, "device"),
) -> None:
    """Stage 1: sensitivity + AutoRound on NxD's grid -> grid-exact fake-quantized bf16 checkpoint.

    --kv, --seq-len, --batch-size and --tp-degree describe the deployment --budget-instance is checked against.
    """
    flags = given(locals(), Q)

    options = options_from(
        **{
            **flags,
            "preset": preset,
            "out": checked_out(out, model=model, text=text, not_convert=not_convert),
            "modules_to_not_convert": read_not_convert(not_convert) if not_convert else None,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:  # the output folder appears only when quantize succeeds
        log = Path(tmp) / LOG_FILE
        with third_party_logs(log, verbose):
            result = quantize(options)
        if log.exists():
            third_party_log(result.out_dir).parent.mkdir(exist_ok=True)
            shutil.move(log, third_party_log(result.out_dir))

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.3f}%"

    console.print(f"[green]wrote:[/] {escape(str(result.out_dir))}")
    console.print(f"modules_to_not_convert: {escape(str(result.modules_to_not_convert))}")
    if result.grid_agreement is None:
        err_console.print(
            "[yellow]warning:[/] nothing was quantized: every block is in modules_to_not_convert, so this "
            "checkpoint is the bf16 model (lower --max-extra-memory or list fewer blocks)"
        )
    console.print(
        f"grid agreement (NxD re-quantization): {percent(result.grid_agreement)}  "
        f"(naive export: {percent(result.naive_agreement)})"
    )
    console.print(
        f"values kept on Neuron (within bf16 precision): {percent(result.value_agreement)}  "
        f"(naive export: {percent(result.naive_value_agreement)})"
    )
    console.print(f"device: {escape(str(result.device.get('device')))} ({escape(str(result.device.get('name')))})")
    if result.accuracy_target is not None:
        target = result.accuracy_target
        where = f"{target['instance']} (tp {target['tp_degree']}, ${target['usd_per_hour']:.2f}/h)"
        console.print(
            f"accuracy target KL {target['target_kl']:g}: validation KL {target['validation']['kl']:.5f}, "
            f"test KL {target['test']['kl']:.5f} (split the search never read), floor {target['floor_kl']:.5f}; "
            f"{target['kept_blocks']} bf16 blocks, +{target['extra_bytes'] / 2**20:.1f} MiB, smallest inf2: "
            f"{escape(where) if target['instance'] else 'none'}"
        )
        console.print(
            f"frontier: {target['candidates_measured']} candidates measured in {target['search_seconds']:.0f} s -> "
            f"{escape(str(result.out_dir / 'frontier.md'))}"
        )
    console.print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
