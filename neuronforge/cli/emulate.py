"""CLI commands for Neuron numerics on CPU: `neuronforge emulate` and `neuronforge quantize-nxd`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import get_args

import typer
from rich.markup import escape

from neuronforge.cli.app import checked_out, console
from neuronforge.cli.options import DeviceOpt, KvOpt, ModelOpt, NotConvertOpt, OverwriteOpt, QtypeOpt, TextOpt
from neuronforge.core.progress import err_console, track
from neuronforge.errors import NeuronforgeError, one_of
from neuronforge.neuron.dtypes import QUANT_DTYPES, KvDtype

WEIGHT_DTYPES = (*QUANT_DTYPES, "none")
KV_MODES: tuple[str, ...] = get_args(KvDtype)
DEFAULT_PROMPT = "The play Hamlet, by William Shakespeare, is"


def _tied_lm_head_warning(model_dir: Path, dtype: str | None, not_convert: tuple[str, ...]) -> None:
    from neuronforge.hf.folders import read_config
    from neuronforge.neuron.module_names import nxdi_skips

    if dtype and read_config(model_dir).get("tie_word_embeddings") and not nxdi_skips("lm_head", not_convert):
        err_console.print(
            "[yellow]warning:[/] tied embeddings with a quantized lm_head: NxDI's tied-weight update may replace "
            'lm_head.weight with the float embedding but keep lm_head.scale; add "lm_head" to --not-convert '
            "for a model you deploy."
        )


def emulate_command(
    model: ModelOpt = "smollm2",
    dtype: str = typer.Option(
        "int8", "--dtype", help="Weight dtype on the device: int8, f8e4m3, f8e5m2 or none (bf16)."
    ),
    kv: KvOpt = "fp8",
    qtype: QtypeOpt = "per_channel_symmetric",
    not_convert: NotConvertOpt = None,
    text: TextOpt = None,
    max_tokens: int = typer.Option(1024, "--max-tokens", min=2, help="Tokens evaluated per text."),
    eval_seq_len: int = typer.Option(
        256, "--eval-seq-len", min=2, help="Window length; the second half of each window decodes."
    ),
    prompt: str = typer.Option(DEFAULT_PROMPT, "--prompt", help="Prompt for the greedy sample."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=0, help="Greedy tokens to generate (0: skip)."),
    threads: int = typer.Option(
        0,
        "--threads",
        min=0,
        help="CPU threads for torch (0: torch's default). On a shared machine 1 is often fastest.",
    ),
    tp_degree: int = typer.Option(
        1, "--tp-degree", min=1, help="NeuronCores the compiled model is sharded over (row-parallel rounding)."
    ),
    exact_bf16: bool = typer.Option(
        False,
        "--exact-bf16",
        help="Use torch's bf16 GEMMs for bf16 layers (bit-identical to HF, several times slower on CPUs without bf16).",
    ),
    device: DeviceOpt = "auto",
) -> None:
    """Perplexity and greedy text as an inf2/trn1 would compute them (int8/fp8 weights, fp8 KV cache), on CPU."""
    from neuronforge.assets.models import fetch_or_resolve
    from neuronforge.assets.texts import evaluation_windows, resolve_splits
    from neuronforge.core.devices import device_info, resolve_device
    from neuronforge.hf.folders import header_shapes, load_tokenizer
    from neuronforge.hf.not_convert import read_not_convert
    from neuronforge.neuron.emulate import EmulationSpec, load_emulated, perplexity
    from neuronforge.neuron.module_names import checkpoint_linears, unmatched

    started = time.perf_counter()
    if threads:
        import torch

        torch.set_num_threads(threads)
    modules = tuple(read_not_convert(not_convert)) if not_convert else ()
    weight = one_of(dtype, WEIGHT_DTYPES, "--dtype")
    spec = EmulationSpec(
        dtype=None if weight == "none" else weight,
        kv_fp8=one_of(kv, KV_MODES, "--kv") == "fp8",
        modules_to_not_convert=modules,
        qtype=qtype,
        fast_bf16=not exact_bf16,
        tp_degree=tp_degree,
    )
    resolved = resolve_device(device)  # type: ignore[arg-type]  # `cuda` without a usable GPU refuses at once
    texts = resolve_splits(text).evaluation
    model_dir = fetch_or_resolve(model)
    linears = checkpoint_linears(header_shapes(model_dir))
    if spec.dtype and unmatched(modules, linears):
        raise NeuronforgeError(
            f"--not-convert entries {unmatched(modules, linears)} match no Linear layer of {model_dir}, so they "
            "would keep nothing in bf16",
            "use NxDI's names: lm_head, layers.N.self_attn, layers.N.mlp or a part of them such as q_proj "
            "(HF names like model.layers.0.mlp.gate_proj never match)",
        )
    _tied_lm_head_warning(model_dir, spec.dtype, modules)
    tokenizer = load_tokenizer(model_dir)
    windows = {name: evaluation_windows(tokenizer, body, eval_seq_len, max_tokens) for name, body in texts.items()}
    # (on a GPU the request: the model is placed by what fits once it is converted)
    emulated = load_emulated(model_dir, spec, resolved if resolved.type == "cpu" else device)  # type: ignore[arg-type]
    console.print(f"[bold]{escape(model)}[/]: {spec.describe(len(emulated.converted), len(linears))}")
    info = device_info(emulated.device)
    console.print(f"  device: {escape(str(info['device']))} ({escape(str(info['name']))})")
    scores = {name: perplexity(emulated, windows[name]) for name in track(list(windows), "perplexity")}
    for name, value in scores.items():
        console.print(
            f"  perplexity {name:<12} {value:9.3f}  ({windows[name].numel()} tokens, windows of {eval_seq_len})"
        )
    if spec.kv_fp8:
        console.print(f"  KV risk: {emulated.kv_risk.describe()}")
    if max_new_tokens:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if ids.numel() == 0:
            raise NeuronforgeError("--prompt is empty after tokenization", "pass a prompt with some text")
        new = emulated.generate(ids, max_new_tokens)[0, ids.shape[1] :]
        console.print(f"  greedy: {prompt}[cyan]{tokenizer.decode(new, skip_special_tokens=True)}[/]", highlight=False)
    console.print(f"  wall time {time.perf_counter() - started:.1f} s")


def quantize_nxd_command(
    model: ModelOpt = "smollm2",
    out: Path = typer.Option(..., "--out", help="Folder to write (NxDI's quantized_checkpoints_path)."),
    dtype: str = typer.Option("int8", "--dtype", help="int8, f8e4m3 or f8e5m2."),
    qtype: QtypeOpt = "per_channel_symmetric",
    not_convert: NotConvertOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write what NxDI's save_quantized_state_dict would write, on CPU, one shard at a time."""
    from neuronforge.assets.models import fetch_or_resolve
    from neuronforge.hf.not_convert import read_not_convert
    from neuronforge.neuron.checkpoint import per_tensor_list_ignored, write_quantized_checkpoint

    started = time.perf_counter()
    modules = tuple(read_not_convert(not_convert)) if not_convert else ()
    model_dir = fetch_or_resolve(model)
    if per_tensor_list_ignored(qtype, modules):
        err_console.print(
            "[yellow]warning:[/] per_tensor_symmetric ignores --not-convert offline (as NxDI does) but "
            "NxDI honours it at runtime: those layers would run without a scale. Prefer per_channel."
        )
    _tied_lm_head_warning(model_dir, dtype, modules)
    out = checked_out(out, model=model_dir, not_convert=not_convert)
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
