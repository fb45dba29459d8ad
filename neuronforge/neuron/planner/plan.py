"""Which inf2/trn1 instance a model fits on, at which tp degree and price, before anything is compiled.

Pure arithmetic over tensor shapes (a checkpoint's safetensors headers, or config.json alone): no torch,
no weights. For every instance of the catalogue and every tp degree `neuron-config` accepts (tp <= the
NeuronCores, tp divides the query heads), one rank's bytes are what NxDI places on one NeuronCore:
quantized codes + fp32 scales, bf16 blocks, its slice of the embedding and lm_head, replicated norms and
row-parallel scales, and its KV cache (weight_memory.py models the sharding). A row fits when

- HBM: weights + KV cache per core <= 16 GiB x (1 - headroom). The headroom (10% by default, vLLM's
  default gpu_memory_utilization of 0.9) stands for what this model leaves out: NEFF code and the runtime's
  96 MB micro-code per core, compiler scratchpad, DMA rings, collectives buffers and I/O tensors
  (Neuron docs, neuron-runtime/explore/device-memory.rst). None of it is measured here.
- host RAM: NxDI reads every rank's presharded weights into host memory before it copies them to the
  device (application_base.py:388-414), so tp x one rank's weights must fit the instance's RAM minus a
  4 GiB reserve (HOST_RESERVE_BASIS): the OS and, beside those weights, vLLM's API-server and engine-core processes
  (each with torch, NxDI and the tokenizer loaded). A judgement, not a measurement: tight on inf2.xlarge (16 GiB).

The smallest instance is the cheapest inf2 (the family neuronforge serves on) with a fitting row; trn1
rows are shown too. Evidence and the price sources: docs/deployment-planner.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from neuronforge.core.knobs import FINITE, BatchSize, SeqLen
from neuronforge.errors import NeuronforgeError, expect, validated
from neuronforge.hf.families import check_family
from neuronforge.hf.folders import check_config_values, validate_hf_folder
from neuronforge.neuron.numerics.dtypes import KvOption, QuantDtype, QuantTypeOption
from neuronforge.neuron.planner.instances import NEURON_INSTANCES, Price, instance_price, neuron_instance
from neuronforge.neuron.planner.model_facts import ModelFacts, choose_tp
from neuronforge.neuron.planner.weight_memory import (
    HeadLayout,
    WeightMemory,
    cache_length,
    checkpoint_shapes,
    config_shapes,
    gqa_layout,
    kv_cache_bytes,
    rank_shapes,
    weight_memory,
)

HEADROOM = 0.10
HOST_RESERVE_BYTES = 4 * 2**30
HOST_RESERVE_BASIS = (
    "the OS and vLLM's API-server and engine-core processes (torch, NxDI, tokenizer) beside the weights NxDI reads "
    "into RAM; a judgement, not measured"
)
SERVING_FAMILY = "inf2"
GIB = 2**30


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a model: its config facts, head size and every tensor's shape."""

    name: str
    facts: ModelFacts
    head_dim: int
    shapes: dict[str, tuple[int, ...]]
    from_weights: bool  # shapes read from safetensors headers (else derived from config.json)

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str) -> ModelShape:
        check_family(config, name)  # a family NxDI serves as transformers computes it, or refused before planning
        heads = int(config.get("num_attention_heads") or 0)
        head_dim = int(config.get("head_dim") or (int(config.get("hidden_size", 0)) // heads if heads else 0))
        return cls(name, ModelFacts.from_config(config), head_dim, config_shapes(config), False)


def load_model_shape(path: Path, name: str | None = None) -> ModelShape:
    """A model folder (config.json, with or without *.safetensors) or a bare config.json file."""
    path = Path(path)
    weights = path.is_dir() and any(path.glob("*.safetensors"))
    if weights:  # the checks `run` makes of a model folder before any stage (family, config values, shards, tensors)
        validate_hf_folder(path)
    config_file = path if path.is_file() else path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise NeuronforgeError(
            f"{config_file} does not exist", "pass a Hugging Face model folder or its config.json"
        ) from None
    except json.JSONDecodeError as exc:
        raise NeuronforgeError(f"{config_file} is not valid JSON ({exc})", "pass the model's config.json") from None
    if not isinstance(config, dict):
        raise NeuronforgeError(f"{config_file} does not hold a JSON object", "pass the model's config.json")
    check_config_values(config_file.parent, config)  # heads 0 planned "fitting" tp degrees (report E01)
    shape = ModelShape.from_config(config, name or (path.stem if path.is_file() else path.name))
    if weights:
        return ModelShape(shape.name, shape.facts, shape.head_dim, checkpoint_shapes(path), True)
    return shape


class Deployment(BaseModel):
    """How the model will be compiled: the inputs of the memory model besides the shapes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["bf16", QuantDtype] = Field(
        "int8", description="weights on Neuron: bf16 (not quantized), int8, f8e4m3 or f8e5m2"
    )
    kv: KvOption = "fp8"
    seq_len: SeqLen = 1024
    batch_size: BatchSize = 1
    modules_to_not_convert: tuple[str, ...] = ()
    qtype: QuantTypeOption = "per_channel_symmetric"
    headroom: Annotated[
        float,
        Field(
            ge=0.0, lt=1.0, description="share of each NeuronCore's 16 GiB kept free for code, scratchpad and runtime"
        ),
        FINITE,
    ] = HEADROOM

    @property
    def weight_dtype(self) -> QuantDtype | None:
        return None if self.dtype == "bf16" else self.dtype


def deployment_from(**values: Any) -> Deployment:
    """A Deployment from keyword values; a bad value is a NeuronforgeError."""
    return validated(Deployment, "plan", **values)


@dataclass(frozen=True)
class PlanRow:
    """One (instance, tp) pair: one NeuronCore's bytes against its HBM, and the host RAM to load them."""

    instance: str
    tp: int
    layout: HeadLayout
    weights: WeightMemory  # one rank
    kv_bytes: int  # one rank
    usable_bytes: int  # HBM per core after the headroom
    host_usable_bytes: int
    price: Price

    @property
    def per_core_bytes(self) -> int:
        return self.weights.total_bytes + self.kv_bytes

    @property
    def host_bytes(self) -> int:
        return self.tp * self.weights.total_bytes

    @property
    def fits_hbm(self) -> bool:
        return self.per_core_bytes <= self.usable_bytes

    @property
    def fits_host(self) -> bool:
        return self.host_bytes <= self.host_usable_bytes

    @property
    def fits(self) -> bool:
        return self.fits_hbm and self.fits_host

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "tp_degree": self.tp,
            "gqa": self.layout.strategy,
            "kv_heads_per_core": self.layout.kv_heads_per_rank(self.tp),
            "weight_bytes_per_core": self.weights.total_bytes,
            "weight_bytes_by_kind": self.weights.by_kind,
            "kv_cache_bytes_per_core": self.kv_bytes,
            "bytes_per_core": self.per_core_bytes,
            "usable_hbm_bytes_per_core": self.usable_bytes,
            "host_bytes": self.host_bytes,
            "usable_host_bytes": self.host_usable_bytes,
            "fits_hbm": self.fits_hbm,
            "fits_host_ram": self.fits_host,
            "fits": self.fits,
            "ec2_usd_per_hour": self.price.ec2,
            "sagemaker_usd_per_hour": self.price.sagemaker,
        }


@dataclass(frozen=True)
class Plan:
    model: str
    deployment: Deployment
    modules_to_not_convert: tuple[str, ...]  # the deployment's list, lm_head added for a tied model
    rows: list[PlanRow]
    smallest: PlanRow | None  # cheapest fitting inf2 row (the tp neuron-config would pick when it fits)

    def smallest_of_family(self, family: str) -> PlanRow | None:
        return _cheapest([r for r in self.rows if neuron_instance(r.instance).family == family and r.fits])

    def to_json(self) -> dict[str, Any]:
        price = self.rows[0].price if self.rows else None
        return {
            "model": self.model,
            "deployment": {
                **self.deployment.model_dump(mode="json"),
                "modules_to_not_convert": self.modules_to_not_convert,
            },
            "smallest": self.smallest.to_json() if self.smallest else None,
            "prices": {"as_of": price.as_of, "region": price.region} if price else None,
            "rows": [row.to_json() for row in self.rows],
        }


def _cheapest(rows: list[PlanRow]) -> PlanRow | None:
    return min(rows, key=lambda r: (r.price.ec2, -r.tp)) if rows else None


def allowed_tps(facts: ModelFacts, neuron_cores: int) -> list[int]:
    """The tp degrees neuron-config accepts on an instance: at most its cores, dividing the query heads."""
    return [tp for tp in range(1, neuron_cores + 1) if facts.num_attention_heads % tp == 0]


def effective_not_convert(model: ModelShape, deployment: Deployment) -> tuple[str, ...]:
    """A tied model keeps lm_head bf16: NxDI copies the float embedding into it; with fp8 weights the biased blocks
    stay bf16 (hf/families.py). neuron-config adds both too."""
    entries = tuple(deployment.modules_to_not_convert)
    if model.facts.tie_word_embeddings and "lm_head" not in entries:
        entries = (*entries, "lm_head")
    return (*entries, *(b for b in model.facts.forced_bf16(deployment.weight_dtype) if b not in entries))


def plan_row(model: ModelShape, deployment: Deployment, instance: str, tp: int) -> PlanRow:
    """One rank's bytes for `instance` at `tp`."""
    entry = neuron_instance(instance)
    facts = model.facts
    allowed = allowed_tps(facts, entry.neuron_cores)
    if tp not in allowed:
        raise NeuronforgeError(
            f"tp degree {tp} does not suit {model.name} on {instance} ({entry.neuron_cores} NeuronCores, "
            f"{facts.num_attention_heads} query heads)",
            f"use --tp-degree in {allowed}: at most the NeuronCores, and dividing the query heads",
        )
    layout = gqa_layout(facts.num_attention_heads, facts.num_key_value_heads, tp, model.head_dim)
    weights = weight_memory(
        rank_shapes(model.shapes, layout, tp),
        deployment.weight_dtype,
        effective_not_convert(model, deployment),
        deployment.qtype,
    )
    length = cache_length(deployment.seq_len, facts.sliding_window)
    kv = kv_cache_bytes(layout, facts.num_layers, tp, deployment.batch_size, length, deployment.kv == "fp8")
    usable = int(entry.hbm_bytes_per_core * (1.0 - deployment.headroom))
    host = entry.host_gib * GIB - HOST_RESERVE_BYTES
    return PlanRow(
        f"ml.{instance.removeprefix('ml.')}", tp, layout, weights, kv, usable, host, instance_price(instance)
    )


def plan(model: ModelShape, deployment: Deployment) -> Plan:
    """Every (instance, tp) row and the smallest inf2 instance that fits."""
    model = expect(model, ModelShape, "nf.plan", "a ModelShape (nf.load_model_shape(folder))")
    deployment = expect(deployment, Deployment, "nf.plan")
    rows = [
        plan_row(model, deployment, name, tp)
        for name, entry in NEURON_INSTANCES.items()
        for tp in allowed_tps(model.facts, entry.neuron_cores)
    ]
    rows.sort(key=lambda r: (r.price.ec2, r.tp))
    smallest = None
    fitting = [r for r in rows if r.fits and neuron_instance(r.instance).family == SERVING_FAMILY]
    if cheapest := _cheapest(fitting):
        preferred = choose_tp(model.facts, cheapest.instance)
        same = [r for r in fitting if r.instance == cheapest.instance]
        smallest = next((r for r in same if r.tp == preferred), max(same, key=lambda r: r.tp))
    return Plan(model.name, deployment, effective_not_convert(model, deployment), rows, smallest)


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def describe(row: PlanRow) -> str:
    """`ml.inf2.xlarge (tp 2, $0.76/h)` for reports."""
    return f"{row.instance} (tp {row.tp}, ${row.price.ec2:.2f}/h)"


def render_markdown(result: Plan) -> str:
    """The plan as a markdown table, one row per (instance, tp), with what each figure means."""
    d = result.deployment
    kept = ", ".join(result.modules_to_not_convert) or "none"
    price = result.rows[0].price
    lines = [
        f"Deployment plan: {result.model}, {d.dtype} weights, {d.kv} KV cache, batch {d.batch_size}, "
        f"seq-len {d.seq_len}; bf16 blocks: {kept}",
        "",
        "| instance | tp | KV heads/core | weights/core | KV cache/core | total/core | usable/core | host load "
        "| fits | EC2 $/h | SageMaker $/h |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in result.rows:
        fits = "yes" if row.fits else ("no: HBM" if not row.fits_hbm else "no: host RAM")
        sagemaker = f"{row.price.sagemaker:.2f}" if row.price.sagemaker is not None else "n/a"
        lines.append(
            f"| {row.instance} | {row.tp} | {row.layout.kv_heads_per_rank(row.tp)} ({row.layout.strategy}) "
            f"| {gib(row.weights.total_bytes)} | {gib(row.kv_bytes)} | {gib(row.per_core_bytes)} "
            f"| {gib(row.usable_bytes)} | {gib(row.host_bytes)} | {fits} | {row.price.ec2:.2f} | {sagemaker} |"
        )
    lines += ["", f"Smallest inf2 instance that fits: {describe(result.smallest) if result.smallest else 'none'}."]
    lines.append(
        f"usable/core = 16 GiB HBM minus {100 * d.headroom:.0f}% headroom for what the model leaves out (NEFF code, "
        "runtime, scratchpad, DMA rings, I/O); host load = tp x weights/core, read into host RAM at load "
        f"(must fit the instance's RAM minus {HOST_RESERVE_BYTES // GIB} GiB for {HOST_RESERVE_BASIS}). "
        f"On-demand prices, {price.region}, "
        f"pinned {price.as_of} (neuronforge/neuron/planner/instance_prices.json); n/a = no source found."
    )
    return "\n".join(lines) + "\n"


def nothing_fits(result: Plan) -> NeuronforgeError:
    """The error for a model no inf2 instance can hold, with the closest row and what would help."""
    serving = [r for r in result.rows if neuron_instance(r.instance).family == SERVING_FAMILY]
    best = min(serving, key=lambda r: (r.per_core_bytes / r.usable_bytes, r.host_bytes / r.host_usable_bytes))
    trn1 = result.smallest_of_family("trn1")
    also = f"; {describe(trn1)} would, but neuronforge serves on inf2 only" if trn1 else ""
    return NeuronforgeError(
        f"{result.model} ({result.deployment.dtype} weights, {result.deployment.kv} KV, seq-len "
        f"{result.deployment.seq_len}, batch {result.deployment.batch_size}) fits on no inf2 instance: the closest, "
        f"{best.instance} at tp {best.tp}, needs {gib(best.per_core_bytes)} per NeuronCore of {gib(best.usable_bytes)} "
        f"usable and {gib(best.host_bytes)} of host RAM{also}",
        "quantize it (--dtype int8 or f8e4m3, fewer bf16 blocks), use --kv fp8, a shorter --seq-len or a smaller "
        "--batch-size; models this size need Trn2, which NxDI on inf2's SDK (2.28) does not target",
    )


def require_fits(model: ModelShape, deployment: Deployment, instance: str, tp: int) -> PlanRow:
    """Refuse a compile that will not fit `instance` at `tp`, naming the smallest instance (and tp) that does."""
    row = plan_row(model, deployment, instance, tp)
    if row.fits:
        return row
    result = plan(model, deployment)
    same_instance = [r for r in result.rows if r.instance == row.instance and r.fits]
    if same_instance:
        option = f"use --tp-degree {max(r.tp for r in same_instance)} on {row.instance}"
    elif result.smallest:
        option = f"use --instance {result.smallest.instance} --tp-degree {result.smallest.tp} (smallest that fits, "
        option += f"${result.smallest.price.ec2:.2f}/h)"
    else:
        raise nothing_fits(result)
    reason = (
        f"{gib(row.per_core_bytes)} per NeuronCore (weights {gib(row.weights.total_bytes)} + KV cache "
        f"{gib(row.kv_bytes)}) of {gib(row.usable_bytes)} usable"
        if not row.fits_hbm
        else f"{gib(row.host_bytes)} of host RAM to load the weights, of {gib(row.host_usable_bytes)} usable"
    )
    raise NeuronforgeError(
        f"{model.name} will not fit {row.instance} at tp {tp}: it needs {reason}",
        f"{option}; or quantize more blocks, use --kv fp8, a shorter --seq-len or a smaller --batch-size "
        "(`neuronforge plan` shows every option)",
    )


def instance_budget(
    model_dir: Path, instance: str, deployment: Deployment, tp: int | None = None
) -> Callable[[Sequence[str]], bool]:
    """Whether a model with these blocks kept bf16 fits `instance` (at `tp`, default neuron-config's choice).

    Refuses up front, naming the smallest instance that fits, when even the all-quantized model does not."""
    model = load_model_shape(model_dir)
    tp = tp or choose_tp(model.facts, instance)
    require_fits(model, deployment, instance, tp)

    def fits(kept: Sequence[str]) -> bool:
        chosen = deployment.model_copy(update={"modules_to_not_convert": tuple(kept)})
        return plan_row(model, chosen, instance, tp).fits

    return fits


def smallest_for(
    model: ModelShape, dtype: QuantDtype | None, kv_fp8: bool, not_convert: Sequence[str], **deployment: Any
) -> PlanRow | None:
    """The smallest fitting inf2 row of one evaluated variant (dtype None = bf16 weights)."""
    chosen = deployment_from(
        dtype=dtype or "bf16", kv="fp8" if kv_fp8 else "bf16", modules_to_not_convert=tuple(not_convert), **deployment
    )
    return plan(model, chosen).smallest
