"""CPU emulator of what an inf2/trn1 computes for an NxDI-compiled, quantized model of a supported family.

Weights: every Linear NxDI converts becomes a NeuronQuantLinear (codes on NxD's grid, bf16 matmul, fp32
per-row scale); with tp_degree > 1 the row-parallel layers round each rank's partial output before the
all-reduce (qlinear.py). KV cache: NxDI's direct-cast fp8 cache, with decode attention scores rounded as the
device rounds them (kv_cache.py). Everything else is the HF model in bf16. The fp32 accumulation order, the
all-reduce's internal precision, prefill attention and values with |K/V| > 240 are not modelled exactly.

Families (hf/families.py): what NxDI's class computes differently from transformers is refused before loading, so
the HF model is the device's model: Qwen2's q/k/v biases are added after the scaled GEMM (NxD
quantization_layers.py:698); Qwen3's q/k norms run per head before RoPE (NxDI attention_base.py:609-612, as
transformers); Llama 3.x RoPE frequencies are transformers' llama3 ones bit for bit (tests/test_neuron/
test_emulate_families.py checks them against a transcription of NxDI's Llama3RotaryEmbedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from transformers import DynamicCache

from neuronforge.core.devices import placement
from neuronforge.core.progress import track
from neuronforge.errors import NeuronforgeError, expect
from neuronforge.hf.families import forced_bf16_blocks
from neuronforge.hf.folders import (
    MAP_WINDOW_BYTES,
    check_loaded_model,
    header_shapes,
    load_model,
    read_config,
    row_blocks,
    validate_hf_folder,
    weight_map,
)
from neuronforge.neuron.numerics.emulation_spec import EmulationSpec
from neuronforge.neuron.numerics.kv_cache import ATTENTION_NAME, STATE_KWARG, KVRisk, KVState, register_attention
from neuronforge.neuron.numerics.module_names import checkpoint_linears, linear_name, nxdi_skips, unmatched
from neuronforge.neuron.numerics.qlinear import (
    Bf16Linear,
    Fp32Gemm,
    NeuronQuantLinear,
    convert_to_neuron_numerics,
    is_row_parallel,
    quantizable_linears,
    replace_module,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from neuronforge.core.devices import DeviceRequest


# Bytes of fp32 logits each step of `EmulatedModel.token_nll` makes (a block of positions of one window).
NLL_BLOCK_BYTES = 4 << 20
GPU_NLL_BLOCK_BYTES = 256 << 20  # on a GPU (a whole 256-token window at a 128k vocabulary is 131 MB)
# Bytes of a weight larger than a map window `load_emulated` reads and quantizes at a time.
QUANTIZE_BLOCK_BYTES = 4 << 20
# Above this many bytes of fp32 weight copies, GEMM operands are made per call instead of kept (see qlinear).
FP32_COPY_BUDGET = 1 << 30


@dataclass
class EmulatedModel:
    """An HF model converted in place to Neuron numerics, with teacher-forced logits and greedy decoding."""

    model: PreTrainedModel
    spec: EmulationSpec
    converted: list[str] = field(default_factory=list)
    kv_risk: KVRisk = field(default_factory=KVRisk)

    @property
    def device(self) -> torch.device:
        return self.model.device  # (its first parameter's: the embedding may have none, see load_model)

    def _kwargs(self, input_ids: torch.Tensor, prefill_len: int | None) -> dict[str, object]:
        seq = input_ids.shape[1]
        prefill = seq // 2 if prefill_len is None else prefill_len
        if not 1 <= prefill <= seq:
            raise NeuronforgeError(
                f"prefill_len {prefill} is outside 1..{seq}", "pick a prefill length within the sequence"
            )
        return {STATE_KWARG: KVState(prefill, self.kv_risk)} if self.spec.kv_fp8 else {}

    @torch.inference_mode()
    def device_logits(self, input_ids: torch.Tensor, prefill_len: int | None = None) -> torch.Tensor:
        """[b, s, vocab] logits as the model computes them (bf16, on its device), teacher-forced. With kv_fp8,
        positions >= prefill_len (default s // 2) run as decode steps: their past K/V come through the fp8 cache."""
        kwargs = self._kwargs(input_ids, prefill_len)
        return self.model(input_ids.to(self.device), use_cache=False, **kwargs).logits

    @torch.inference_mode()
    def token_nll(self, input_ids: torch.Tensor, prefill_len: int | None = None) -> torch.Tensor:
        """Per-token negative log-likelihood [b, s-1] of input_ids[:, 1:] (fp32, CPU), teacher-forced as in
        `device_logits`, without ever holding a batch's logits: the head runs on a block of one window's
        positions at a time (a 4 x 256-token batch's logits are 0.1 GB in bf16 at a 49k vocabulary, 0.26 GB at
        Llama 3's 128k). Each position's logits are those of the whole batch (same GEMM per row)."""
        kwargs = self._kwargs(input_ids, prefill_len)
        ids = input_ids.to(self.device)
        hidden = self.model.get_decoder()(ids, use_cache=False, **kwargs).last_hidden_state
        head = self.model.get_output_embeddings()
        predicted = ids.shape[1] - 1
        budget = NLL_BLOCK_BYTES if self.device.type == "cpu" else GPU_NLL_BLOCK_BYTES
        per_block = max(1, budget // (4 * head.out_features))
        blocks = torch.arange(predicted, device=self.device).tensor_split(-(-predicted // per_block))  # even sizes
        nll = torch.empty(ids.shape[0], predicted)
        for window, (states, targets) in enumerate(zip(hidden, ids, strict=True)):
            for rows in blocks:
                nll[window, rows.cpu()] = next_token_nll(head(states[rows]), targets[rows + 1]).cpu()
        return nll

    def operands_per_call(self) -> None:
        """Make each GEMM's fp32 operand per call instead of keeping it (4 bytes per parameter): for a model that
        runs a few passes beside another one in memory (stage 1's AutoRound-vs-RTN check). Same numbers."""
        for layer in self.model.modules():
            if isinstance(layer, Fp32Gemm):
                layer.keep_fp32, layer._fp32 = False, None

    def logits(self, input_ids: torch.Tensor, prefill_len: int | None = None) -> torch.Tensor:
        """`device_logits` as fp32 on the CPU."""
        return self.device_logits(input_ids, prefill_len).float().cpu()

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding like the device: prefill the prompt, then one token per step. Returns [1, s + n]."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
            raise NeuronforgeError(f"generate takes one non-empty prompt [1, s], got shape {tuple(input_ids.shape)}")
        eos = self.model.generation_config.eos_token_id
        stop = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        cache = DynamicCache(config=self.model.config)
        kwargs = self._kwargs(input_ids, input_ids.shape[1])
        sequence = step_input = input_ids.to(self.device)
        for _ in range(max_new_tokens):
            out = self.model(step_input, past_key_values=cache, use_cache=True, **kwargs)
            step_input = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            sequence = torch.cat([sequence, step_input], dim=1)
            if int(step_input) in stop:
                break
        return sequence.cpu()


def with_forced_bf16(spec: EmulationSpec, config: Mapping[str, object]) -> EmulationSpec:
    """`spec` with the blocks NxDI keeps bf16 for its weight dtype added, as neuron-config adds them (with fp8, every
    biased block: NxD's fp8 quantizer drops Linear biases, hf/families.py)."""
    added = [b for b in forced_bf16_blocks(config, spec.dtype) if b not in spec.modules_to_not_convert]
    return replace(spec, modules_to_not_convert=(*spec.modules_to_not_convert, *added)) if added else spec


def _untie_lm_head(model: PreTrainedModel) -> None:
    """Give lm_head its own weight so quantizing it never touches the embedding."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if embed is not None and getattr(head, "weight", None) is getattr(embed, "weight", False):  # (converted: none)
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        model.config.tie_word_embeddings = False


def emulate(
    model: PreTrainedModel, spec: EmulationSpec, device: DeviceRequest | torch.device = "auto"
) -> EmulatedModel:
    """Convert `model` in place to the numerics `spec` describes and move it to `device`: a torch device, or a
    `--device` request (`auto`: the GPU when torch can use it and the converted model fits in the memory this
    process can use there, else the CPU, said so; `cuda`: the GPU or a refusal). Same numerics everywhere: fp32
    GEMMs on the exact codes, rounded once to bf16."""
    check_loaded_model(model, "nf.emulate")
    spec = expect(spec, EmulationSpec, "nf.emulate")

    model.eval()
    spec = with_forced_bf16(spec, model.config.to_dict())
    if spec.dtype is not None:
        _untie_lm_head(model)
        convert_to_neuron_numerics(model, spec.dtype, spec.modules_to_not_convert, spec.qtype, spec.tp_degree)
    converted = [name for name, module in model.named_modules() if isinstance(module, NeuronQuantLinear)]
    for name, linear in quantizable_linears(model).items():  # the Linears still in bf16
        tp = spec.tp_degree if is_row_parallel(name) else 1
        if spec.fast_bf16 or tp > 1:
            replace_module(model, name, Bf16Linear(linear, tp))
    gemm_layers = [m for m in model.modules() if isinstance(m, Fp32Gemm)]
    keep = 4 * sum(m.in_features * m.out_features for m in gemm_layers) <= FP32_COPY_BUDGET
    for layer in gemm_layers:
        layer.keep_fp32 = keep
    if spec.kv_fp8:
        register_attention()
        model.set_attn_implementation(ATTENTION_NAME)
    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if not isinstance(device, torch.device):
        device = placement(device, needed_bytes=resident * 5 // 4)  # room for one layer's activations and operand
    model.to(device)  # type: ignore[arg-type]  # transformers types .to as functools.wraps(nn.Module.to)
    return EmulatedModel(model, spec, converted)


def load_emulated(model_dir: Path, spec: EmulationSpec, device: DeviceRequest | torch.device = "auto") -> EmulatedModel:
    """Load an HF folder in bf16, converting the Linears of each map window as they arrive, so host memory holds
    the converted model plus one window of bf16 weights (the spec validated itself before the load). A per-channel
    weight larger than a window (a vocabulary-sized lm_head) is quantized from the file a block of rows at a time,
    never whole in bf16 (0.2 GB at 49152 x 2048). An untied input embedding stays in the file and is read a row
    per token (hf/file_embedding.py): another 0.2 GB there, 1 GB for Llama 3 8B."""

    def convert_arrived(model: PreTrainedModel) -> None:
        if spec.dtype is not None:
            convert_to_neuron_numerics(model, spec.dtype, spec.modules_to_not_convert, spec.qtype, spec.tp_degree)

    spec = expect(spec, EmulationSpec, "nf.load_emulated")
    path = validate_hf_folder(Path(expect(model_dir, (str, Path), "nf.load_emulated", "a model folder path")))
    heads = read_config(path)["num_attention_heads"]
    if heads % spec.tp_degree:  # NxDI refuses it (neuron-config says so): no device computes this (report D15)
        raise NeuronforgeError(
            f"tp_degree {spec.tp_degree} does not divide num_attention_heads={heads}, so NxDI cannot shard this model",
            f"use a tp degree that divides {heads}",
        )
    spec = with_forced_bf16(spec, read_config(path))
    check_not_convert_matches(path, spec)
    by_rows = _quantized_by_rows(path, spec)
    deferred = {f"{name}.weight" for name in by_rows}
    model = load_model(path, after_window=convert_arrived, deferred=deferred, embedding_from_file=True)
    for name, (file, shape) in by_rows.items():
        assert spec.dtype is not None  # (only a quantizing spec defers weights)
        blocks = row_blocks(file, f"{name}.weight", torch.bfloat16, QUANTIZE_BLOCK_BYTES)
        tp = spec.tp_degree if is_row_parallel(name) else 1
        bias = cast(torch.nn.Linear, model.get_submodule(name)).bias
        replace_module(model, name, NeuronQuantLinear.from_row_blocks(blocks, shape, bias, spec.dtype, tp))
    return emulate(model, spec, device)


def check_not_convert_matches(model_dir: Path, spec: EmulationSpec) -> None:
    """Refuse a modules_to_not_convert entry that keeps no Linear of the checkpoint in bf16 (NxDI's substring rule):
    such a list quantizes what the user meant to keep, silently (read from the headers: nothing is loaded)."""
    if spec.dtype is None or not spec.modules_to_not_convert:
        return
    missing = unmatched(spec.modules_to_not_convert, checkpoint_linears(header_shapes(model_dir)))
    if missing:
        raise NeuronforgeError(
            f"modules_to_not_convert entries {missing} match no Linear layer of {model_dir}, so they would keep "
            "nothing in bf16",
            "use NxDI's names: lm_head, layers.N.self_attn, layers.N.mlp or a part of them such as q_proj "
            "(HF names like model.layers.0.mlp.gate_proj never match)",
        )


def _quantized_by_rows(path: Path, spec: EmulationSpec) -> dict[str, tuple[Path, tuple[int, int]]]:
    """HF Linear name -> (shard, weight shape) for the Linears `spec` quantizes per channel whose bf16 weight is
    larger than a map window (read from the headers: no weight is loaded)."""
    if spec.dtype is None or spec.qtype != "per_channel_symmetric":
        return {}
    shapes = header_shapes(path)
    found = {}
    for key, shard in weight_map(path).items():
        name, shape = linear_name(key), shapes.get(key, ())  # (a weight no shard holds: `load_model` says so)
        if (
            name is None
            or not key.endswith(".weight")
            or len(shape) != 2
            or nxdi_skips(name, spec.modules_to_not_convert)
        ):
            continue
        if 2 * shape[0] * shape[1] > MAP_WINDOW_BYTES:  # its bf16 copy
            found[name] = (path / shard, (shape[0], shape[1]))
    return found


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per row of [n, vocab] logits (any float dtype; the softmax in fp32)."""
    return -torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood `[n, s-1]` of ids[:, 1:] under logits[:, :-1], one window at a time."""
    return torch.stack(
        [next_token_nll(window[:-1], window_ids[1:]) for window, window_ids in zip(logits, ids, strict=True)]
    )


def perplexity_from_logits(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """exp(mean next-token NLL) over every predicted position of every window (inf when it overflows)."""
    return perplexity_from_nll([token_nll(logits, ids)])


def perplexity_from_nll(nll: list[torch.Tensor]) -> float:
    """exp(mean) of every per-token NLL in `nll` (tensors of any shape, in order), in fp64."""
    return torch.exp(torch.cat([part.flatten() for part in nll]).double().mean()).item()


@torch.inference_mode()
def perplexity(
    emulated: EmulatedModel, windows: torch.Tensor, prefill_len: int | None = None, batch_size: int = 4
) -> float:
    """`perplexity_from_logits` over [n, s] windows, run `batch_size` windows at a time (`EmulatedModel.token_nll`)."""
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        raise NeuronforgeError(f"perplexity needs [n, s>=2] token windows, got shape {tuple(windows.shape)}")
    return perplexity_from_nll([emulated.token_nll(batch, prefill_len) for batch in windows.split(batch_size)])


@dataclass(frozen=True)
class PerplexityReport:
    """Held-out perplexity of one emulated model, per text: what `emulate`, the run's emulate stage and evaluate
    report, all through `perplexity_report`."""

    perplexity: dict[str, float]
    tokens: dict[str, int]  # tokens scored per text
    kv_risk: KVRisk | None  # with an fp8 KV cache: the K/V values beyond fp8's range
    quantized_linears: int


def perplexity_report(
    emulated: EmulatedModel,
    windows: Mapping[str, torch.Tensor],
    label: str = "perplexity",
    logits: Mapping[str, torch.Tensor] | None = None,
) -> PerplexityReport:
    """`perplexity` of every text's [n, s] windows, with a progress bar named `label`. Given the model's `logits`
    for those windows (evaluate holds them for the KL anyway), the same NLL comes from them instead of a second
    forward pass: `EmulatedModel.token_nll` computes each position's logits with the same GEMM as `device_logits`."""
    if logits is None:
        scores = {name: perplexity(emulated, windows[name]) for name in track(list(windows), label)}
    else:
        scores = {name: perplexity_from_logits(logits[name], windows[name]) for name in windows}
    return PerplexityReport(
        perplexity=scores,
        tokens={name: int(ids.numel()) for name, ids in windows.items()},
        kv_risk=emulated.kv_risk if emulated.spec.kv_fp8 else None,
        quantized_linears=len(emulated.converted),
    )
