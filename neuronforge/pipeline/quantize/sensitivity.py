"""How much each NxD-skippable block (lm_head, layers.{i}.self_attn, layers.{i}.mlp) suffers from quantization.

Three scores, all "higher = keep in bf16 first":

* `measured`: quantize one block alone with Neuron numerics (NeuronQuantLinear swap, then restore)
  and measure KL(bf16 || quantized) of next-token distributions. Ground truth; one forward pass
  over the calibration set per block.
* `first_order`: sum over the block of |dL/dW * (W - Q(W))|, with L the LM cross-entropy and Q NxD's
  RTN grid. Computed one decoder layer at a time on the accelerator (two forwards and one backward in all,
  whatever the number of blocks; the model itself stays in bf16 on the host). We use the LM loss,
  not KL to bf16: KL(p || p_W) has zero gradient at W itself, so its first-order term vanishes.
* `variance`: mean per-output-channel weight variance of the block (the seed recipe's proxy; free).

For tied embeddings lm_head shares the embedding matrix; NxDI keeps it bf16 then, so it is
reported as forced and never scored.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from neuronforge.core import presets
from neuronforge.core.devices import small_op_threads
from neuronforge.core.presets import SENSITIVITY_BATCH
from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.families import forced_bf16_blocks
from neuronforge.neuron.numerics.module_names import block_of

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedModel

    from neuronforge.neuron.numerics.dtypes import QuantDtype

Sensitivity = Literal["first_order", "measured", "variance"]
SENSITIVITY_HELP = (
    "how each block's quantization damage is estimated: first_order (one forward+backward), "
    "measured (KL per block) or variance"
)


@dataclass
class Block:
    """One safe-granularity block and its Linear layers (HF names)."""

    name: str
    linears: list[str]
    weights: int  # number of weight elements
    rows: int  # output channels (one fp32 scale each)
    forced: bool = False  # always kept in bf16 (tied lm_head; biased blocks under fp8, hf/families.py)


@dataclass
class SensitivityResult:
    method: str
    blocks: list[Block]
    scores: dict[str, float]  # block -> score, forced blocks absent
    seconds: float
    extra: dict[str, dict[str, float]] = field(default_factory=dict)  # other methods' scores (when measured)
    spearman: dict[str, float] = field(default_factory=dict)  # cheap method -> rank correlation with measured

    def to_json(self) -> dict:
        total = sum(self.scores.values()) or 1.0
        return {
            "method": self.method,
            "seconds": round(self.seconds, 3),
            "blocks": [
                {
                    "block": b.name,
                    "forced_bf16": b.forced,
                    "score": self.scores.get(b.name),
                    "share": (self.scores[b.name] / total) if b.name in self.scores else None,
                    "weights": b.weights,
                    "linears": b.linears,
                    **{f"score_{m}": s.get(b.name) for m, s in self.extra.items()},
                }
                for b in self.blocks
            ],
            "spearman_vs_measured": self.spearman,
        }


def is_tied(model: nn.Module) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False))


def find_blocks(model: nn.Module, dtype: str | None = None) -> list[Block]:
    """Group the Linears NxDI would quantize into blocks, in model order; forced ones are those NxDI must keep bf16
    for `dtype` weights (a tied lm_head; with fp8, the biased blocks: `forced_bf16`)."""
    from neuronforge.neuron.numerics.qlinear import quantizable_linears

    linears = quantizable_linears(model)
    if not linears:
        raise NeuronforgeError(
            "the model has no Linear layers NxD Inference would quantize (q/k/v/o, gate/up/down, lm_head)",
            "pass a causal LM of a supported family (docs/model-families.md)",
        )
    blocks: dict[str, Block] = {}
    for name, linear in linears.items():
        block = blocks.setdefault(block_of(name), Block(block_of(name), [], 0, 0))
        block.linears.append(name)
        block.weights += linear.weight.numel()
        block.rows += linear.weight.shape[0]
    if "lm_head" in blocks and is_tied(model):
        blocks["lm_head"].forced = True
    for name in forced_bf16(model, dtype):
        if name in blocks:
            blocks[name].forced = True
    return list(blocks.values())


def forced_bf16(model: nn.Module, dtype: str | None) -> dict[str, str]:
    """Block -> why NxDI must keep it bf16 with `dtype` weights, from the model's config (hf/families.py)."""
    config = getattr(model, "config", None)
    return forced_bf16_blocks(config.to_dict(), dtype) if config is not None else {}


def calibration_batches(samples: list[torch.Tensor], batch_size: int = SENSITIVITY_BATCH) -> Iterable[torch.Tensor]:
    import torch

    for i in range(0, len(samples), batch_size):
        yield torch.cat(samples[i : i + batch_size], dim=0)


class _Captured(Exception):
    """Stops the model once its first decoder layer has been handed its inputs."""


def _layer_inputs(model: PreTrainedModel, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """fp32 hidden states and keyword arguments (RoPE, mask, positions) the model gives its first decoder layer."""
    import torch

    seen: dict[str, Any] = {}

    def grab(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        seen["hidden"], seen["kwargs"] = (args[0] if args else kwargs.pop("hidden_states")), kwargs
        raise _Captured

    decoder = model.get_decoder()
    embedding = model.get_input_embeddings()
    handle = decoder.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():  # the ids go where the model lives (the caller's model may be on the GPU)
            decoder(
                inputs_embeds=embedding(batch.to(cast(torch.Tensor, embedding.weight).device)).float(), use_cache=False
            )
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen["hidden"], seen["kwargs"]


def _on(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (in tuples and keyword dicts: RoPE's cos/sin, the mask) moved to `device`."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_on(v, device) for v in value)
    if isinstance(value, dict):
        return {key: _on(v, device) for key, v in value.items()}
    return value


def _fp32_copy(module: nn.Module, device: torch.device, storage: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """An fp32 copy of one block on `device`; the model's own (bf16) weights are never touched.

    The parameters are converted straight into the copy (deepcopy's memo), never copied in bf16 first. With
    `storage`, they are converted into the same fp32 tensors block after block (decoder layers share their
    shapes), so the fp32 copies of a whole model are not mapped and zero-filled afresh layer by layer.
    """
    import torch

    memo: dict[int, Any] = {}
    for name, param in module.named_parameters():
        held = storage.get(name) if storage is not None else None
        if held is None or held.shape != param.shape:
            held = torch.empty(param.shape, dtype=torch.float32, device=device)
            if storage is not None:
                storage[name] = held
        memo[id(param)] = torch.nn.Parameter(held.copy_(param.detach()), requires_grad=False)
    return copy.deepcopy(module, memo).to(device=device, dtype=torch.float32)  # buffers too


def _layer_output(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _score(weights: list[tuple[torch.Tensor, torch.Tensor]], dtype: QuantDtype) -> float:
    """sum |dL/dW * (Q(W) - W)| over (weight, its gradient) pairs, a row block at a time on the gradient's device
    (lm_head's weight stays on the host, its gradient is formed on the accelerator)."""
    from neuronforge.neuron.numerics.grid import chunk_elements, rounding_error, row_chunks

    total = 0.0
    for weight, grad in weights:
        with small_op_threads(grad.device):
            for rows in row_chunks(weight.shape, chunk_elements(grad.device)):
                total += float(rounding_error(weight[rows].to(grad.device), dtype).mul_(grad[rows]).abs_().sum())
    return total


def _grad_buffer(grads: dict[str, torch.Tensor], name: str, shape: torch.Size, device: torch.device) -> None:
    """Make grads[name] an fp32 tensor of `shape` on `device`, reusing the one already there when it fits."""
    import torch

    if name not in grads or grads[name].shape != shape:
        grads[name] = torch.empty(shape, dtype=torch.float32, device=device)


def _add_weight_grad(
    grads: dict[str, torch.Tensor], name: str, grad: torch.Tensor, inputs: torch.Tensor, first: bool
) -> None:
    """grads[name] = (or +=) grad_output^T @ input, with both flattened to [tokens, features]."""
    import torch

    grad = grad.reshape(-1, grad.shape[-1]).T
    inputs = inputs.reshape(-1, inputs.shape[-1])
    if first:
        torch.mm(grad, inputs, out=grads[name])
    else:
        grads[name].addmm_(grad, inputs)


def _watch_weight_grads(linears: dict[str, nn.Linear], grads: dict[str, torch.Tensor]) -> list[Any]:
    """Forward hooks that put each Linear's weight gradient, grad_output^T @ input as autograd forms it, into
    `grads[name]` when the backward pass reaches the Linear's output (the first batch writes it, later ones add).
    The weights themselves need no gradient, so autograd computes only activation gradients, and the weight
    gradients land in tensors reused layer after layer (autograd would map and zero-fill fresh ones for every
    layer). Returns the hook handles."""
    for name, linear in linears.items():
        _grad_buffer(grads, name, linear.weight.shape, linear.weight.device)
    unwritten = set(linears)

    def watch(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs = args[0].detach()

            def accumulate(grad: torch.Tensor) -> None:
                _add_weight_grad(grads, name, grad, inputs, first=name in unwritten)
                unwritten.discard(name)

            output.register_hook(accumulate)

        return hook

    return [module.register_forward_hook(watch(name)) for name, module in linears.items()]


def first_order_scores(
    model: PreTrainedModel,
    blocks: list[Block],
    samples: list[torch.Tensor],
    dtype: QuantDtype,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """sum |dL/dW * (W - Q(W))| per block, computed one decoder layer at a time on `device`.

    A forward pass keeps each layer's fp32 input activations on the host; the backward pass then walks the layers
    from the LM head down, recomputing one layer in fp32 on the device, back-propagating the incoming gradient and
    scoring that layer's Linears at once. Two forwards and one backward in all; the device holds one layer, its
    gradients and one batch of activations. Same numbers as a whole-model fp32 forward+backward (summation order aside).
    Only the first `presets.first_order_windows` samples are scored, so the host memory of the layer inputs stays
    bounded whatever calibration budget AutoRound gets (said so when it cuts).
    """
    import torch

    device = torch.device(device)
    scored = presets.first_order_windows(len(samples), samples[0].shape[-1]) if samples else 0
    if scored < len(samples):
        err_console.print(
            f"note: the first-order sensitivity scores {scored} of the {len(samples)} calibration windows "
            f"({scored * samples[0].shape[-1]} tokens; its host memory grows with tokens x layers x hidden); "
            "AutoRound tunes on all of them"
        )
        samples = samples[:scored]
    by_name = {b.name: b for b in blocks if not b.forced}
    layers = model.get_decoder().layers
    batches = list(calibration_batches(samples))
    total = sum(s.shape[0] for s in samples)
    inputs: list[list[torch.Tensor]] = [[]]
    kwargs: list[dict[str, Any]] = []
    for batch in batches:
        hidden, layer_kwargs = _layer_inputs(model, batch)
        inputs[0].append(hidden.cpu())
        kwargs.append(_on(layer_kwargs, device))
    storage: dict[str, torch.Tensor] = {}  # one decoder layer's fp32 weights, reused layer after layer
    with torch.no_grad():
        for layer in layers:
            work = _fp32_copy(layer, device, storage)
            inputs.append(
                [_layer_output(work, h.to(device), kw).cpu() for h, kw in zip(inputs[-1], kwargs, strict=True)]
            )
            del work
    scores: dict[str, float] = {}
    grads: dict[str, torch.Tensor] = {}  # weight gradients of one layer, reused layer after layer
    upstream, head_score = _head_backward(
        model, inputs.pop(), batches, total, device, dtype if "lm_head" in by_name else None
    )
    if head_score is not None:
        scores["lm_head"] = head_score
    for index in reversed(range(len(layers))):
        work = _fp32_copy(layers[index], device, storage)
        parts = [block for part in ("self_attn", "mlp") if (block := by_name.get(f"layers.{index}.{part}"))]
        # HF names (model.layers.3.mlp.up_proj) -> names inside the layer (mlp.up_proj)
        inside = {name: name.split(f"layers.{index}.", 1)[1] for block in parts for name in block.linears}
        linears = {rel: cast("nn.Linear", work.get_submodule(rel)) for rel in inside.values()}
        hooks = _watch_weight_grads(linears, grads)
        below = []
        for hidden, layer_kwargs, grad in zip(inputs.pop(), kwargs, upstream, strict=True):
            hidden = hidden.to(device).requires_grad_(True)
            _layer_output(work, hidden, layer_kwargs).backward(grad)
            assert hidden.grad is not None  # a leaf that requires grad, just back-propagated into
            below.append(hidden.grad)
        for handle in hooks:
            handle.remove()
        upstream = below
        for block in parts:
            scores[block.name] = _score([(linears[inside[n]].weight, grads[inside[n]]) for n in block.linears], dtype)
        del work
    return {name: scores[name] for name in by_name}


# lm_head is used in fp32 row blocks of at most this many elements (16 MB): a vocabulary-sized head, or its weight
# gradient, is never in fp32 whole (2.1 GB each for Llama-3-8B's 128256 x 4096 head, on the GPU when there is one).
HEAD_BLOCK_ELEMENTS = 1 << 22


def _head_backward(
    model: PreTrainedModel,
    hidden_states: list[torch.Tensor],
    batches: list[torch.Tensor],
    total: int,
    device: torch.device,
    dtype: QuantDtype | None,
) -> tuple[list[torch.Tensor], float | None]:
    """Final norm + lm_head + the language-model loss, forward and backward; returns d loss / d hidden per batch and,
    with `dtype`, lm_head's first-order score.

    The loss is HF's (ForCausalLMLoss, transformers loss/loss_utils.py: mean cross-entropy of each next token),
    batch b weighted by its share of the `total` sequences. Its gradient is used in closed form,
    d loss / d logits = (softmax - one_hot(next token)) * weight, so that everything runs a row block of the head
    at a time: a first pass gathers each token's log-sum-exp, a second recomputes each block's logits and forms
    their gradient, its way back to the hidden states and the block's weight gradient (summed over the batches,
    then scored). The bf16 head is converted to fp32 a row block at a time and neither it nor its gradient is ever
    in fp32 whole; it costs a fourth product with the head (autograd with a whole gradient takes three).
    """
    import torch

    from neuronforge.neuron.numerics.grid import row_chunks

    head = model.get_output_embeddings()
    weight = head.weight.detach()
    bias = head.bias.detach() if head.bias is not None else None
    blocks = row_chunks(weight.shape, HEAD_BLOCK_ELEMENTS)
    norm = _fp32_copy(model.get_decoder().norm, device)

    def block_logits(normed: torch.Tensor, rows: slice, block: torch.Tensor) -> torch.Tensor:
        logits = normed @ block.T
        return logits + bias[rows].to(device).float() if bias is not None else logits

    hidden = [h.to(device).requires_grad_(True) for h in hidden_states]
    normed = [norm(h) for h in hidden]
    scored = [n.detach()[:, :-1] for n in normed]  # the last position has no next token
    targets = [batch[:, 1:].to(device) for batch in batches]  # (the ids may be wherever the caller's model is)
    weights = [(batch.shape[0] / total) / targets[i].numel() for i, batch in enumerate(batches)]
    with torch.no_grad():
        # Each token's max logit and log of sum(exp(logit - max)), kept apart as log_softmax keeps them: their sum
        # (the log-sum-exp, often 30-60) would round at its own ulp, 1e-5 of the softmax.
        peak = [torch.full(n.shape[:-1], -torch.inf, device=device) for n in scored]
        sums = [torch.zeros(n.shape[:-1], device=device) for n in scored]
        for rows in blocks:
            block = weight[rows].to(device).float()
            for n, top, total_exp in zip(scored, peak, sums, strict=True):
                logits = block_logits(n, rows, block)
                higher = torch.maximum(top, logits.amax(dim=-1))
                total_exp.mul_((top - higher).exp_()).add_(logits.sub_(higher.unsqueeze(-1)).exp_().sum(dim=-1))
                top.copy_(higher)
        log_sums = [total_exp.log_() for total_exp in sums]
        d_normed = [torch.zeros_like(n) for n in normed]
        score = 0.0
        for rows in blocks:
            block = weight[rows].to(device).float()
            grad = torch.zeros_like(block) if dtype is not None else None
            for n, top, log_sum, target, share, d in zip(
                scored, peak, log_sums, targets, weights, d_normed, strict=True
            ):
                d_logits = block_logits(n, rows, block).sub_(top.unsqueeze(-1)).sub_(log_sum.unsqueeze(-1)).exp_()
                inside = (target >= rows.start) & (target < rows.start + block.shape[0])
                index = (target - rows.start).clamp_(0, block.shape[0] - 1).unsqueeze(-1)
                d_logits.scatter_add_(-1, index, inside.unsqueeze(-1).to(d_logits.dtype).neg_()).mul_(share)
                d[:, :-1] += d_logits @ block
                if grad is not None:
                    grad.addmm_(d_logits.reshape(-1, block.shape[0]).T, n.reshape(-1, n.shape[-1]))
            if grad is not None and dtype is not None:  # grad exists exactly when dtype is given
                score += _score([(weight[rows], grad)], dtype)
    upstream = []
    for h, n, d in zip(hidden, normed, d_normed, strict=True):
        n.backward(d)
        assert h.grad is not None  # a leaf that requires grad, just back-propagated into
        upstream.append(h.grad)
    return upstream, score if dtype is not None else None


def _next_token_logprobs(model: nn.Module, samples: list[torch.Tensor]) -> list[torch.Tensor]:
    import torch

    with torch.no_grad():
        return [
            torch.log_softmax(model(input_ids=b.to(cast(torch.device, model.device))).logits.float(), dim=-1)
            for b in calibration_batches(samples)
        ]


def measured_scores(
    model: nn.Module,
    blocks: list[Block],
    samples: list[torch.Tensor],
    dtype: QuantDtype,
    step: Callable[[], None] | None = None,
) -> dict[str, float]:
    """KL(bf16 || block-quantized) per block, quantizing one block at a time with Neuron numerics (bf16 compute).

    The model runs in bf16 here and is cast back afterwards (exact for weights loaded from a bf16 checkpoint).
    """
    import torch

    dtype_before = next(model.parameters()).dtype
    model.to(torch.bfloat16)
    try:
        return _measured_bf16(model, blocks, samples, dtype, step)
    finally:
        model.to(dtype_before)


def _measured_bf16(
    model: nn.Module,
    blocks: list[Block],
    samples: list[torch.Tensor],
    dtype: QuantDtype,
    step: Callable[[], None] | None,
) -> dict[str, float]:
    import torch

    from neuronforge.neuron.numerics.qlinear import NeuronQuantLinear, quantizable_linears, replace_module

    reference = _next_token_logprobs(model, samples)
    linears = quantizable_linears(model)
    scores = {}
    for block in blocks:
        if block.forced:
            continue
        for name in block.linears:
            replace_module(model, name, NeuronQuantLinear.from_linear(linears[name], dtype))
        try:
            quantized = _next_token_logprobs(model, samples)
        finally:
            for name in block.linears:
                replace_module(model, name, linears[name])
        kl = [
            torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1).mean()
            for p, q in zip(reference, quantized, strict=True)
        ]
        scores[block.name] = float(torch.stack(kl).mean())
        if step:
            step()
    return scores


def variance_scores(model: nn.Module, blocks: list[Block]) -> dict[str, float]:
    """Mean per-output-channel variance of the block's weights (cheap proxy, no data)."""
    from neuronforge.neuron.numerics.qlinear import quantizable_linears

    linears = quantizable_linears(model)
    return {
        b.name: float(sum(linears[n].weight.detach().float().var(dim=1).mean() for n in b.linears) / len(b.linears))
        for b in blocks
        if not b.forced
    }


def spearman(a: dict[str, float], b: dict[str, float]) -> float:
    """Spearman rank correlation over the blocks both score."""
    from scipy.stats import spearmanr

    keys = sorted(set(a) & set(b))
    if len(keys) < 2:
        return float("nan")
    return float(spearmanr([a[k] for k in keys], [b[k] for k in keys]).statistic)


def analyze(
    model: PreTrainedModel,
    samples: list[torch.Tensor],
    dtype: QuantDtype,
    method: Sensitivity = "first_order",
    step: Callable[[], None] | None = None,
    device: str | torch.device = "cpu",
) -> SensitivityResult:
    """Score every block with `method` (first-order: one layer at a time on `device`; measured: where the model
    lives); with `measured`, also score the cheap methods and correlate them."""
    blocks = find_blocks(model, dtype)
    start = time.perf_counter()
    if method == "variance":
        return SensitivityResult(method, blocks, variance_scores(model, blocks), time.perf_counter() - start)
    if method == "first_order":
        return SensitivityResult(
            method, blocks, first_order_scores(model, blocks, samples, dtype, device), time.perf_counter() - start
        )
    scores = measured_scores(model, blocks, samples, dtype, step)
    seconds = time.perf_counter() - start
    extra = {
        "first_order": first_order_scores(model, blocks, samples, dtype, device),
        "variance": variance_scores(model, blocks),
    }
    return SensitivityResult(method, blocks, scores, seconds, extra, {m: spearman(s, scores) for m, s in extra.items()})
