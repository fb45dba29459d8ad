"""CLI commands for Neuron numerics on CPU: `neuronforge emulate` and `neuronforge quantize-nxd`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import typer
from rich.markup import escape

from neuronforge.assets.models import fetch_or_resolve
from neuronforge.assets.texts import held_out_windows, resolve_splits
from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import ModelOpt, NotConvertOpt, OverwriteOpt, TextOpt, given, model_option, parse_path
from neuronforge.core.devices import DeviceRequest, capped_threads, device_info, resolve_device
from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError, validated
from neuronforge.hf.folders import header_shapes, load_tokenizer, read_config
from neuronforge.hf.not_convert import read_not_convert
from neuronforge.neuron.numerics.dtypes import KvDtype, QuantDtype, QuantType
from neuronforge.neuron.numerics.emulation_spec import EmulateOptions
from neuronforge.neuron.numerics.module_names import checkpoint_linears, nxdi_skips
from neuronforge.neuron.nxdi.config import NeuronConfigOptions

WeightDtype = Literal[QuantDtype, "none"]
DEFAULT_PROMPT = "The play Hamlet, by William Shakespeare, is"


def _tied_lm_head_warning(model_dir: Path, dtype: str | None, not_convert: tuple[str, ...]) -> None:
    if dtype and read_config(model_dir).get("tie_word_embeddings") and not nxdi_skips("lm_head", not_convert):
        err_console.print(
            "[yellow]warning:[/] tied embeddings with a quantized lm_head: NxDI's tied-weight update may replace "
            'lm_head.weight with the float embedding but keep lm_head.scale; add "lm_head" to --not-convert '
            "for a model you deploy."
        )


M = EmulateOptions


def emulate_command(
    model: ModelOpt = "smollm2",
    dtype: WeightDtype | None = model_option(M, "dtype"),
    kv: KvDtype | None = model_option(M, "kv"),
    qtype: QuantType | None = model_option(M, "qtype"),
    not_convert: NotConvertOpt = None,
    text: TextOpt = None,
    eval_tokens: int | None = model_option(M, "eval_tokens"),
    eval_seq_len: int | None = model_option(M, "eval_seq_len"),
    prompt: str = typer.Option(DEFAULT_PROMPT, "--prompt", help="Prompt for the greedy sample."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=0, help="Greedy tokens to generate (0: skip)."),
    threads: int = typer.Option(
        0,
        "--threads",
        min=0,
        help="CPU threads for torch (0: torch's default; at most the CPUs this process may use). On a shared machine 1 is often fastest.",
    ),
    tp_degree: int | None = model_option(M, "tp_degree"),
    exact_bf16: bool = typer.Option(
        False,
        "--exact-bf16",
        help="Use torch's bf16 GEMMs for bf16 layers (bit-identical to HF, several times slower on CPUs without bf16).",
    ),
    device: DeviceRequest | None = model_option(M, "device"),
) -> None:
    """Perplexity and greedy text as an inf2/trn1 would compute them (int8/fp8 weights, fp8 KV cache), on CPU."""
    flags = given(locals(), M)
    from neuronforge.neuron.numerics.emulate import load_emulated, perplexity_report

    started = time.perf_counter()
    if threads:
        import torch

        torch.set_num_threads(capped_threads(threads))
    modules = tuple(read_not_convert(not_convert)) if not_convert else ()
    options = validated(M, "emulate", **flags, modules_to_not_convert=modules, fast_bf16=not exact_bf16)
    spec = options.spec()
    resolved = resolve_device(options.device)  # `cuda` without a usable GPU refuses at once
    texts = resolve_splits(text).evaluation
    model_dir = fetch_or_resolve(model)
    _tied_lm_head_warning(model_dir, spec.dtype, modules)
    tokenizer = load_tokenizer(model_dir)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if max_new_tokens and ids.numel() == 0:  # before the load and the perplexity run, not after (report D17)
        raise NeuronforgeError("--prompt is empty after tokenization", "pass a prompt with some text")
    windows = held_out_windows(tokenizer, texts, options.eval_seq_len, options.eval_tokens)
    # (on a GPU the request: the model is placed by what fits once it is converted)
    emulated = load_emulated(model_dir, spec, resolved if resolved.type == "cpu" else options.device)
    linears = checkpoint_linears(header_shapes(model_dir))
    console.print(f"[bold]{escape(model)}[/]: {spec.describe(len(emulated.converted), len(linears))}")
    info = device_info(emulated.device)
    console.print(f"  device: {escape(str(info['device']))} ({escape(str(info['name']))})")
    report = perplexity_report(emulated, windows)
    for name, value in report.perplexity.items():
        console.print(
            f"  perplexity {name:<12} {value:9.3f}  ({report.tokens[name]} tokens, windows of {options.eval_seq_len})"
        )
    if report.kv_risk is not None:
        console.print(f"  KV risk: {report.kv_risk.describe()}")
    if max_new_tokens:
        new = emulated.generate(ids, max_new_tokens)[0, ids.shape[1] :]
        console.print(f"  greedy: {prompt}[cyan]{tokenizer.decode(new, skip_special_tokens=True)}[/]", highlight=False)
    console.print(f"  wall time {time.perf_counter() - started:.1f} s")


def quantize_nxd_command(
    model: ModelOpt = "smollm2",
    out: Path = typer.Option(
        ..., "--out", parser=parse_path, help="Folder to write (NxDI's quantized_checkpoints_path)."
    ),
    dtype: QuantDtype | None = model_option(NeuronConfigOptions, "dtype"),
    qtype: QuantType | None = model_option(NeuronConfigOptions, "qtype"),
    not_convert: NotConvertOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write what NxDI's save_quantized_state_dict would write, on CPU, one shard at a time."""
    deployment = validated(NeuronConfigOptions, "quantize-nxd", **given(locals(), NeuronConfigOptions))
    dtype, qtype = deployment.dtype, deployment.qtype
    from neuronforge.neuron.nxdi.checkpoint import per_tensor_list_ignored, write_quantized_checkpoint

    started = time.perf_counter()
    modules = tuple(read_not_convert(not_convert)) if not_convert else ()
    model_dir = fetch_or_resolve(model)
    if per_tensor_list_ignored(qtype, modules):
        err_console.print(
            "[yellow]warning:[/] per_tensor_symmetric ignores --not-convert offline (as NxDI does) but "
            "NxDI honours it at runtime: those layers would run without a scale. Prefer per_channel."
        )
    _tied_lm_head_warning(model_dir, dtype, modules)
    out = checked_out(out, overwrite, model=model_dir, not_convert=not_convert)
    result = write_quantized_checkpoint(model_dir, out, dtype, qtype, modules, overwrite=overwrite)
    size = sum(f.stat().st_size for f in result.out_dir.glob("*.safetensors"))
    console.print(
        f"[green]wrote[/] {result.out_dir}: {len(result.quantized)} Linears {dtype} {qtype}, "
        f"{len(result.kept)} kept bf16, {len(result.shards)} shard(s), {size / 2**20:.1f} MiB "
        f"in {time.perf_counter() - started:.1f} s"
    )
    if result.kept:
        console.print("  kept bf16: " + ", ".join(result.kept), highlight=False)
    typer.echo(str(result.out_dir))
