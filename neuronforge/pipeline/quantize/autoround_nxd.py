"""AutoRound tuned directly on NxD's grids, through auto-round's own data-type registry.

Stock AutoRound int8 is "full-range" (qmax 128, signed scale) and its fp8 uses +-448; NxD recomputes
per-row scales as amax/127 (int8) and amax/240 (e4m3). Instead of patching auto-round internals we
register two new data types, `nxd_int_sym` and `nxd_fp8_sym`, selected by the scheme's `data_type`
("nxd_int" / "nxd_fp8" with sym=True). They keep auto-round's signature and `(qdq, scale, zp)` return,
tune the same learned rounding offset `v` (and, only with `minmax_tuning`, the range shrink `max_scale`), but:

* scale = max(amax * max_scale / qmax, NxD's floor) in fp32, qmax = 127 or 240;
* the element holding a row's |max| is pinned to +-qmax, so the row max of the fake-quantized
  weights is exactly qmax * scale and NxD re-derives the very same scale from it.

Tuning runs in fp32 (`amp=False`, a decoder block at a time), so every tuned weight w satisfies
`neuron.grid.quantize_weight(w)` == the tuned codes; `grid_export` then picks bf16 values for them, as each
block's tuning ends when the model is bf16.
"""

from __future__ import annotations

import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from auto_round import AutoRound, QuantizationScheme, SignRoundConfig
from auto_round.algorithms.composer import AlgorithmComposer
from auto_round.compressors import orchestrator
from auto_round.data_type.register import QUANT_FUNC_WITH_DTYPE
from auto_round.data_type.utils import (
    float8_e4m3fn_ste,
    reshape_pad_tensor_by_group_size,
    revert_tensor_by_pad,
    round_ste,
)

from neuronforge.core.logs import adopt_third_party_loggers
from neuronforge.core.progress import progress
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.numerics.grid import (
    E4M3_NEURON_MAX,
    FP8_SCALE_FLOOR,
    FP32_EPS,
    INT8_PER_CHANNEL_DIVISOR,
    dequantize,
    divide,
    quantize_weight,
)
from neuronforge.neuron.numerics.qlinear import quantizable_linears
from neuronforge.pipeline.quantize.grid_export import checked_grid_exact

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

    from neuronforge.neuron.numerics.dtypes import ExportDtype, QuantDtype

NXD_INT = "nxd_int"
NXD_FP8 = "nxd_fp8"
# auto-round looks up f"{data_type}_sym" for sym=True schemes (data_type/utils.py::get_quant_func).
REGISTERED_NAMES = {"int8": f"{NXD_INT}_sym", "f8e4m3": f"{NXD_FP8}_sym"}
SCHEME_DATA_TYPES = {"int8": NXD_INT, "f8e4m3": NXD_FP8}


def _row_amax(tensor: torch.Tensor, tensor_min: Any, tensor_max: Any) -> torch.Tensor:
    """Per-row |max| from auto-round's cached min/max when given (wrapper.py), else from the tensor."""
    if tensor_min is None or tensor_max is None:
        return tensor.abs().amax(dim=-1)
    lo = torch.as_tensor(tensor_min, device=tensor.device)
    hi = torch.as_tensor(tensor_max, device=tensor.device)
    return torch.maximum(lo.abs(), hi.abs())


def _pin_row_extreme(tensor: torch.Tensor, q: torch.Tensor, qmax: float, active: torch.Tensor) -> torch.Tensor:
    """Set the code of each active row's largest-magnitude weight to +-qmax (keeps the gradient path of the rest)."""
    idx = tensor.detach().abs().argmax(dim=-1, keepdim=True)
    sign = torch.where(torch.gather(tensor.detach(), -1, idx) < 0, -1.0, 1.0).to(q.dtype)
    pinned = torch.scatter(q, -1, idx, sign * qmax)
    return torch.where(active.unsqueeze(-1), pinned, q)


def nxd_int_sym(
    tensor: torch.Tensor,
    bits: int = 8,
    group_size: int = -1,
    v: Any = 0,
    min_scale: Any = 1.0,
    max_scale: Any = 1.0,
    scale_dtype: Any = None,
    tensor_min: Any = None,
    tensor_max: Any = None,
    q_scale_thresh: float = 0.0,
    init_scale: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """int8 symmetric on NxD's per-channel grid: scale = amax/127 (fp32, floor fp32 eps), codes in [-127, 127]."""
    if bits != 8 or group_size != -1:
        raise ValueError(f"{NXD_INT} supports bits=8, group_size=-1 only (got bits={bits}, group_size={group_size})")
    tensor, orig_shape, pad_len = reshape_pad_tensor_by_group_size(tensor, group_size)
    amax = _row_amax(tensor, tensor_min, tensor_max).float() * max_scale
    scale = torch.clamp(divide(amax, INT8_PER_CHANNEL_DIVISOR), min=FP32_EPS)  # (IEEE on every device, as NxD)
    active = divide(amax, INT8_PER_CHANNEL_DIVISOR) > FP32_EPS
    scale = scale.unsqueeze(-1)
    q = torch.clamp(round_ste(tensor.float() / scale + v), -INT8_PER_CHANNEL_DIVISOR, INT8_PER_CHANNEL_DIVISOR)
    q = _pin_row_extreme(tensor, q, INT8_PER_CHANNEL_DIVISOR, active)
    qdq = revert_tensor_by_pad((q * scale).to(tensor.dtype), orig_shape=orig_shape, pad_len=pad_len)
    return qdq, scale, 0


def nxd_fp8_sym(
    tensor: torch.Tensor,
    max_scale: Any = 1.0,
    tensor_max: Any = None,
    group_size: int = -1,
    v: Any = 0,
    tensor_min: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, None]:
    """fp8 e4m3 on Neuron's grid: scale = max(amax/240, 1e-5) in fp32, values cast to e4m3 with RNE, |x| <= 240."""
    if group_size != -1:
        raise ValueError(f"{NXD_FP8} supports per-channel (group_size=-1) only, got {group_size}")
    tensor, orig_shape, pad_len = reshape_pad_tensor_by_group_size(tensor, group_size)
    if isinstance(max_scale, torch.Tensor):
        max_scale = max_scale.to(tensor.device)
    amax = _row_amax(tensor, tensor_min, tensor_max).float() * max_scale
    active = divide(amax, E4M3_NEURON_MAX) > FP8_SCALE_FLOOR
    scale = torch.clamp(divide(amax, E4M3_NEURON_MAX), min=FP8_SCALE_FLOOR).unsqueeze(-1)
    x = torch.clamp(tensor.float() / scale + v, -E4M3_NEURON_MAX, E4M3_NEURON_MAX)
    q = _pin_row_extreme(tensor, float8_e4m3fn_ste(x), E4M3_NEURON_MAX, active)
    qdq = revert_tensor_by_pad((q * scale).to(tensor.dtype), orig_shape=orig_shape, pad_len=pad_len)
    return qdq, scale, None


def register_nxd_dtypes() -> None:
    """Add our data types to auto-round's registry (idempotent); stock entries stay untouched."""
    QUANT_FUNC_WITH_DTYPE[REGISTERED_NAMES["int8"]] = nxd_int_sym
    QUANT_FUNC_WITH_DTYPE[REGISTERED_NAMES["f8e4m3"]] = nxd_fp8_sym


def nxd_scheme(dtype: ExportDtype) -> Any:
    """The auto-round QuantizationScheme that selects our data type: weight-only, 8 bits, per-channel."""
    if dtype not in SCHEME_DATA_TYPES:
        raise NeuronforgeError(f"unknown dtype {dtype!r}", f"use one of: {', '.join(SCHEME_DATA_TYPES)}")
    return QuantizationScheme(bits=8, group_size=-1, sym=True, data_type=SCHEME_DATA_TYPES[dtype], act_bits=16)


def keep_bf16_layer_config(model: nn.Module, blocks_kept: list[str], block_of: Callable[[str], str]) -> dict[str, dict]:
    """layer_config entries keeping every Linear of the kept blocks at 16 bits, keyed by exact full names.

    Exact module names are matched as-is by auto-round; short names like `layers.1.` would be
    turned into substring regexes that also hit `layers.10.`.
    """
    kept = set(blocks_kept)
    return {name: {"bits": 16} for name in quantizable_linears(model) if name != "lm_head" and block_of(name) in kept}


@dataclass(frozen=True)
class BlockChoice:
    """AutoRound's tuned block against the RTN block, on calibration windows the tuning never saw.

    Errors are relative squared errors of the block's output against the bf16 model's block output
    (sum (out - ref)^2 / sum ref^2), both fed the same (quantized-model) inputs, as auto-round's own loss is.
    """

    block: str
    autoround_error: float
    rtn_error: float

    @property
    def winner(self) -> str:
        return "autoround" if self.autoround_error <= self.rtn_error else "rtn"


def check_indices(samples: int, check: int) -> list[int]:
    """Which of `samples` calibration windows are held out of tuning to compare AutoRound with RTN: `check` of
    them spread evenly (the windows are evenly spaced over the calibration text, so both sets cover every text)."""
    if check <= 0:
        return []
    step = samples / check
    return sorted({min(samples - 1, int(step * i + step / 2)) for i in range(check)})


def _relative_error(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    difference = outputs.float() - reference.float()
    return float(torch.sum(difference * difference) / torch.clamp(torch.sum(reference.float() ** 2), min=1e-30))


def _rtn_(linears: dict[str, nn.Linear], originals: dict[str, torch.Tensor], dtype: QuantDtype) -> None:
    """Set each Linear to its original weight rounded to NxD's grid (what NxD's own quantizer would store)."""
    for name, module in linears.items():
        codes, scale = quantize_weight(originals[name], dtype)
        module.weight.data = dequantize(codes, scale, originals[name].dtype).to(module.weight.device)


@contextmanager
def _fp32_a_block_at_a_time(
    model: PreTrainedModel, targets: list[str], dtype: ExportDtype, check: list[int], choices: list[BlockChoice]
) -> Iterator[None]:
    """Tune a bf16 model in fp32 one decoder block at a time, so the host holds it in bf16 plus one block in fp32;
    and keep, per block, AutoRound's tuning or RTN, whichever reproduces the bf16 block better on the `check`
    calibration windows (indices into auto-round's cached samples, which tune on the others).

    auto-round with `amp=False` casts the whole model to fp32 unless HF's `model.dtype` (its first parameter, the
    embedding) already reads fp32 (auto-round 0.16.1 context/model.py:455-481). So only the embedding goes to fp32:
    the first block's cached inputs, and the RoPE cos/sin and masks computed from them, are then the whole-fp32
    model's. Each block is cast to fp32 as auto-round starts on it (`AlgorithmComposer.compress_block`, called once
    per block from compressors/orchestrator.py:298, which has no hook of its own) and settled when it returns,
    after computing the next block's inputs in fp32: its tuned Linears become the checked grid-exact bf16 the
    export would write (NxD re-derives the same codes from it), everything else goes back to bf16 exactly (auto-round
    changed nothing else). A model not in bf16 is cast to fp32 whole (and compared per block the same way).

    Why held-out windows: auto-round keeps the best of its iterations by the loss on the windows it tunes on, and
    iteration 0 is RTN (v = 0), so on those windows the tuned block never loses (sign_round/quantizer.py:554); on
    few, short windows it still overfits and loses on unseen text (cpu-fast int8: held-out KL 0.0106 vs RTN's 0.0093).
    """
    bf16 = next(model.parameters()).dtype == torch.bfloat16
    if not bf16:
        model.to(torch.float32)  # type: ignore[arg-type]  # transformers types .to as functools.wraps(nn.Module.to)
    wanted = set(targets)
    names = {id(module): name for name, module in model.named_modules()}
    compress_block = AlgorithmComposer.compress_block

    def cast(root: nn.Module, to: torch.dtype) -> None:  # parameters only: buffers (RoPE's inv_freq) keep theirs
        for param in root.parameters():
            if param.is_floating_point():
                param.data = param.data.to(to)

    def settle(root: nn.Module) -> None:
        inside = {id(module) for module in root.modules()}
        for name, module in model.named_modules():
            if name in wanted and id(module) in inside and module.weight.dtype == torch.float32:
                exact = checked_grid_exact(module.weight, dtype, name)[2]
                module.weight = torch.nn.Parameter(exact, requires_grad=False)
        cast(root, torch.bfloat16)

    def tune_and_compare(
        composer: Any, block: nn.Module, fp_inputs: Any, input_others: dict, *args: Any, **kwargs: Any
    ) -> Any:
        if bf16:
            cast(block, torch.float32)
        linears = {names[id(m)]: typing.cast("nn.Linear", m) for m in block.modules() if names.get(id(m)) in wanted}
        q_inputs = kwargs.get("q_inputs")
        if not check or not linears or not isinstance(fp_inputs, list) or len(fp_inputs) <= len(check):
            result = compress_block(composer, block, fp_inputs, input_others, *args, **kwargs)
        else:
            result = _compare_with_rtn(
                composer, compress_block, block, linears, fp_inputs, q_inputs, input_others, args, kwargs
            )
        if bf16:
            settle(block)
        return result

    def _compare_with_rtn(
        composer: Any,
        compress: Callable[..., Any],
        block: nn.Module,
        linears: dict[str, nn.Linear],
        fp_inputs: list,
        q_inputs: list | None,
        input_others: dict,
        args: tuple,
        kwargs: dict,
    ) -> Any:
        forward = composer.block_forward
        held_out = torch.tensor(check)
        tune = [i for i in range(len(fp_inputs)) if i not in set(check)]
        inputs = q_inputs if q_inputs is not None else fp_inputs  # what the block sees in the quantized model
        with torch.no_grad():
            reference = forward(block, fp_inputs, input_others)  # the bf16 model's block, every window
        originals = {name: m.weight.detach().clone() for name, m in linears.items()}
        subset = {
            key: [value[i] for i in tune] if isinstance(value, list) and len(value) == len(fp_inputs) else value
            for key, value in kwargs.items()  # q_inputs, and input_ids (token ids) when auto-round passes them
        }
        subset["reference_output"] = [reference[i] for i in tune]
        compress(composer, block, [fp_inputs[i] for i in tune], input_others, *args, **subset)
        linears = {
            name: typing.cast("nn.Linear", model.get_submodule(name)) for name in linears
        }  # (auto-round unwraps its wrappers)
        with torch.no_grad():
            reference_check = torch.cat([reference[i] for i in check])
            tuned_error = _relative_error(forward(block, inputs, input_others, held_out), reference_check)
            tuned = {name: m.weight.detach().clone() for name, m in linears.items()}
            _rtn_(linears, originals, dtype)
            rtn_error = _relative_error(forward(block, inputs, input_others, held_out), reference_check)
            choice = BlockChoice(names.get(id(block), ""), tuned_error, rtn_error)
            if choice.winner == "autoround":
                for name, module in linears.items():
                    module.weight.data = tuned[name]
            choices.append(choice)
            outputs = forward(block, inputs, input_others)  # the next block's (quantized-model) inputs
        return outputs, reference

    if bf16:
        cast(model.get_input_embeddings(), torch.float32)
    AlgorithmComposer.compress_block = tune_and_compare
    try:
        yield
    finally:
        AlgorithmComposer.compress_block = compress_block
    if bf16:
        settle(model)  # the embedding, and anything auto-round rounded outside the blocks


class _BlockBar:
    """Stands in for the tqdm bar auto-round's block loop drives (intel/auto-round@v0.16.1:
    auto_round/compressors/orchestrator.py:651-786 calls update, set_description and close), drawn as one of our
    progress bars, so a run shows one progress display."""

    open_bars: list[_BlockBar] = []

    def __init__(self, iterable: Any = None, *args: Any, total: int | None = None, **kwargs: Any) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self._bar = progress()
        self._task = self._bar.add_task("AutoRound", total=total)
        self._bar.start()
        _BlockBar.open_bars.append(self)

    def update(self, n: int = 1) -> None:
        self._bar.advance(self._task, n)

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self._bar.update(self._task, description=f"AutoRound ({desc.removeprefix('Quantizing ')})")

    def close(self) -> None:
        if self in _BlockBar.open_bars:
            _BlockBar.open_bars.remove(self)
            self._bar.stop()


@contextmanager
def _our_block_bar() -> Iterator[None]:
    """auto-round's per-block bar drawn as ours while the block runs (and closed if tuning fails midway)."""
    saved = orchestrator.tqdm
    orchestrator.tqdm = _BlockBar
    try:
        yield
    finally:
        orchestrator.tqdm = saved
        for bar in list(_BlockBar.open_bars):
            bar.close()


@dataclass
class TuneResult:
    """Which Linears auto-round tuned on our grid, and which it left alone (dims not multiple of 32 etc.); per
    decoder block, AutoRound against RTN on the held-out calibration windows (the loser's weights are gone)."""

    tuned: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    blocks: list[BlockChoice] = field(default_factory=list)
    seconds: float = 0.0


def check_windows(nsamples: int) -> int:
    """Calibration windows held out of tuning to compare AutoRound with RTN per block (on top of `nsamples`)."""
    return max(2, nsamples // 4)


def run_autoround(
    model: PreTrainedModel,
    tokenizer: Any,
    samples: list[torch.Tensor],
    dtype: ExportDtype,
    layer_config: dict[str, dict],
    iters: int,
    seqlen: int,
    targets: list[str],
    *,
    minmax_tuning: bool = False,
    device: torch.device | str = "cpu",
    check: int = 0,
) -> TuneResult:
    """Tune `model` in place on our data types, in fp32. `targets` are the HF Linear names we expect quantized.
    `check` of `samples`, spread evenly, are windows held out of tuning: on them each tuned decoder block is compared with
    its RTN version and the better one is kept (`_fp32_a_block_at_a_time`).

    Returns which of `targets` auto-round actually quantized; the caller rounds the rest with RTN. A bf16 model
    comes back in bf16, its tuned Linears already grid-exact (`_fp32_a_block_at_a_time`); any other comes back fp32.

    Memory (auto-round 0.16.1): a bf16 model stays bf16 on the host, plus its embedding and one decoder block in
    fp32 (before, auto-round cast the whole model to fp32: 4 bytes per parameter). Tuning is block-wise: after
    caching the first block's inputs the model goes back to the host (compressors/orchestrator.py
    `_quantize_data_driven`, `mv_module_from_gpu`) and each decoder block is moved to the device with its cached
    activations. `low_gpu_mem_usage` stays off so those activations stay on the GPU; `low_cpu_mem_usage`
    (auto-round's default) only streams MoE or meta-skeleton models and switches itself off for a dense model
    already in host RAM (orchestrator.py, same function). Tuning runs on `device`; the model ends where it was.
    """
    if iters < 1:
        raise NeuronforgeError(
            f"iters must be >= 1 for AutoRound, got {iters}", "use --no-autoround for plain rounding"
        )
    if any(s.shape[-1] < seqlen for s in samples):
        raise NeuronforgeError(
            "a calibration sample is shorter than seqlen", "lower --calib-seq-len or supply more text"
        )
    adopt_third_party_loggers()  # auto-round's logger exists now: into the log file when a command keeps one
    register_nxd_dtypes()
    start = time.perf_counter()
    home = next(model.parameters()).device  # the caller's model goes back there (auto-round leaves it on the host)
    choices: list[BlockChoice] = []
    held_out = check_indices(len(samples), check)
    try:
        with _fp32_a_block_at_a_time(model, targets, dtype, held_out, choices), _our_block_bar():
            rounder = AutoRound(
                model,
                tokenizer=tokenizer,
                scheme=nxd_scheme(dtype),
                alg_configs=SignRoundConfig(iters=iters, enable_minmax_tuning=minmax_tuning),
                layer_config=dict(layer_config) or None,
                dataset=samples,
                nsamples=len(samples),
                seqlen=seqlen,
                batch_size=min(8, len(samples)),
                device_map=str(device),
                enable_torch_compile=False,  # minutes on CPU, and our data types are untested under it on GPU
                amp=False,
                low_cpu_mem_usage=True,
                low_gpu_mem_usage=False,
            )
            _, resolved = rounder.quantize()
    except SystemExit as exc:  # auto-round calls sys.exit when no sample is long enough
        raise NeuronforgeError(
            f"AutoRound found no usable calibration data (exit code {exc.code})",
            "supply more text (--text) or lower --calib-seq-len",
        ) from None
    model.to(home)  # type: ignore[arg-type]  # transformers types .to as functools.wraps(nn.Module.to)
    tuned = [n for n in targets if int((resolved.get(n) or {}).get("bits", 16)) <= 8]
    untouched = [n for n in targets if n not in tuned]
    return TuneResult(tuned=tuned, untouched=untouched, blocks=choices, seconds=time.perf_counter() - start)
