"""A validated NxD Inference NeuronConfig for a quantized model of a supported family, and the files that carry it.

NxDI's NeuronConfig accepts unknown keys with only a log warning, matches `modules_to_not_convert`
by substring, silently drops fp8 Linear biases and mis-handles tied lm_heads (docs/nxd-numerics.md,
with the NxDI/NxD source lines). Every one of those turns into a bad endpoint hours
later, so this module refuses them up front with a NeuronforgeError that says what to do, or (tied lm_head,
biased blocks under fp8: hf/families.py) keeps the block bf16 and says so.

Tensor parallelism (NxDI's GQA rules, modules/attention/gqa.py): we require tp_degree to divide
num_attention_heads, because otherwise NxDI pads the query heads with zero heads (wasted compute,
and the pad also pads weight scales). KV heads are kept as they are when tp_degree divides them,
and replicated once per rank when num_key_value_heads divides tp_degree; in any other case NxDI
converts GQA to MHA and replicates K/V up to num_attention_heads. That still works, so it is a
notice (with the KV-cache growth factor), not an error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from neuronforge.core.atomic import atomic_write_json
from neuronforge.core.knobs import BatchSize, SeqLen, TpDegree
from neuronforge.errors import NeuronforgeError, validated
from neuronforge.hf.folders import read_config, validate_hf_folder
from neuronforge.hf.not_convert import NOT_CONVERT_FILE, read_not_convert, write_not_convert
from neuronforge.neuron.numerics.dtypes import KvOption, QuantDtype, QuantDtypeOption, QuantType, QuantTypeOption
from neuronforge.neuron.nxdi.runtime import default_sdk, host_sdk, model_class_problem
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK, SDKS
from neuronforge.neuron.planner.instances import NEURON_INSTANCES, neuron_cores, neuron_instance
from neuronforge.neuron.planner.model_facts import ModelFacts, choose_tp, keeps_gqa
from neuronforge.neuron.planner.plan import deployment_from, load_model_shape, require_fits

NEURON_CONFIG_FILE = "neuron_config.json"
DEFAULT_INSTANCE = "ml.inf2.xlarge"

_CANONICAL = re.compile(r"^(?:lm_head|layers\.(\d+)\.(?:self_attn|mlp))$")
_SUBMODULE = re.compile(r"^layers\.(\d+)\.(self_attn|mlp)\..+$")
_BARE_LAYER = re.compile(r"^layers\.(\d+)$")


def _fail(what: str, fix: str) -> NeuronforgeError:
    return NeuronforgeError(what, fix)


def normalize_instance(value: Any) -> str:
    """'inf2.xlarge' or 'ml.inf2.xlarge' -> 'ml.inf2.xlarge', refusing anything without NeuronCores we know."""
    if not isinstance(value, str):
        raise _fail(f"instance type {value!r} is not a string", "pass e.g. ml.inf2.xlarge")
    neuron_instance(value)  # the catalogue shared with the SageMaker side; raises for unknown types
    return f"ml.{value.removeprefix('ml.')}"


def entry_problem(entry: str) -> tuple[str, str] | None:
    """Why one modules_to_not_convert entry is unsafe for NxDI, as (what, fix); None if it is canonical."""
    if _CANONICAL.match(entry):
        return None
    if entry.startswith("model."):
        return (
            f"modules_to_not_convert entry {entry!r} is an HF module name",
            f"drop the 'model.' prefix and name the whole block, e.g. {_block_hint(entry[len('model.') :])!r}: "
            "NxDI's runtime paths have no 'model.' prefix, so the layer would be quantized anyway",
        )
    if m := _SUBMODULE.match(entry):
        return (
            f"modules_to_not_convert entry {entry!r} names a single projection",
            f"exclude the whole block {f'layers.{m[1]}.{m[2]}'!r}: NxDI's path for q/k/v is "
            "layers.N.self_attn.qkv_proj.q_proj, so a projection name does not match at runtime",
        )
    if m := _BARE_LAYER.match(entry):
        return (
            f"modules_to_not_convert entry {entry!r} is a bare layer prefix",
            f"use 'layers.{m[1]}.self_attn' and/or 'layers.{m[1]}.mlp': NxDI matches by substring, so "
            f"{entry!r} would also match layers.{m[1]}0-{m[1]}9 and beyond",
        )
    return (
        f"modules_to_not_convert entry {entry!r} is not one NxDI matches safely",
        "use only 'lm_head', 'layers.{i}.self_attn' or 'layers.{i}.mlp'",
    )


def _block_hint(name: str) -> str:
    m = _SUBMODULE.match(name)
    return f"layers.{m[1]}.{m[2]}" if m else name


class KVQuantSpec(BaseModel):
    """NxD's KVQuantizationConfig as plain data: direct-cast fp8 e4m3, the only mode NxDI can serve.

    Non-direct modes need per-layer K/V scales that NxDI has no way to load (they stay 1.0), and
    direct cast requires per-tensor methods (an assert in KVQuantizationConfig).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k_quant_method: Literal["per_tensor_symmetric"] = "per_tensor_symmetric"
    v_quant_method: Literal["per_tensor_symmetric"] = "per_tensor_symmetric"
    quant_dtype: Literal["float8_e4m3fn"] = "float8_e4m3fn"
    direct_cast: Literal[True] = True


class NeuronConfigSpec(BaseModel):
    """The NeuronConfig overrides for one compile, plus the target they were validated against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tp_degree: int = Field(ge=1)
    batch_size: int = Field(1, ge=1)
    # Continuous batching, as vllm-neuron compiles a model for max_num_seqs = batch_size (batching_fields below).
    ctx_batch_size: int = Field(1, ge=1)
    tkg_batch_size: int = Field(1, ge=1)
    is_continuous_batching: bool = False
    seq_len: int = Field(ge=1)
    n_positions: int = Field(ge=1)
    torch_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    quantized: Literal[True] = True
    quantized_checkpoints_path: str = Field(min_length=1)
    quantization_dtype: QuantDtype = "int8"
    quantization_type: QuantType = "per_channel_symmetric"
    modules_to_not_convert: list[str] = Field(default_factory=list)
    kv_cache_quant: bool = True
    kv_quant_config: KVQuantSpec | None = Field(default_factory=KVQuantSpec)
    # Not NeuronConfig kwargs: what the spec was validated for.
    target_instance: str = DEFAULT_INSTANCE
    sdk: str = DEFAULT_SDK
    notices: list[str] = Field(default_factory=list, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _batching_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("batch_size", 1), int):
            return {**batching_fields(data.get("batch_size", 1)), **data}
        return data

    @field_validator("quantization_dtype", mode="before")
    @classmethod
    def _dtype_spelling(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lower() == "f8e4m3fn":
            raise _fail(
                "quantization_dtype 'f8e4m3fn' is not what NxDI expects",
                "spell it 'f8e4m3': NxDI adds the fp8 compiler flag only for that exact string, and without it "
                "the compile fails with NCC_EVRF051",
            )
        return value

    @field_validator("quantization_dtype")
    @classmethod
    def _no_e5m2(cls, value: str) -> str:
        if value == "f8e5m2":
            raise _fail(
                "f8e5m2 weights are not supported on Neuron by neuronforge",
                "use --dtype f8e4m3 or int8: NxDI casts every floating checkpoint tensor except float8_e4m3fn to "
                "the model dtype before sharding (application_base.py:643-656), so e5m2 codes reach sharding as bf16, "
                "and NxDI adds no fp8 compiler flag for e5m2 (model_wrapper.py:149-157); unverified on a device, so "
                "refused",
            )
        return value

    @field_validator("modules_to_not_convert")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        for entry in value:
            if problem := entry_problem(entry):
                raise _fail(*problem)
        duplicates = sorted({e for e in value if value.count(e) > 1})
        if duplicates:
            raise _fail(f"modules_to_not_convert lists {duplicates} more than once", "list each block once")
        return value

    @field_validator("target_instance", mode="before")
    @classmethod
    def _instance(cls, value: Any) -> Any:
        return normalize_instance(value)

    @field_validator("sdk")
    @classmethod
    def _sdk(cls, value: str) -> str:
        if value not in SDKS:
            raise _fail(f"Neuron SDK {value!r} is not one neuronforge targets", f"use one of: {', '.join(SDKS)}")
        return value

    @model_validator(mode="after")
    def _fp8_per_tensor(self) -> NeuronConfigSpec:
        if self.quantization_dtype.startswith("f8") and self.quantization_type == "per_tensor_symmetric":
            raise _fail(
                f"{self.quantization_dtype} per_tensor_symmetric weights cannot be sharded by NxDI",
                "use --qtype per_channel_symmetric: NxD's fp8 per-tensor quantizer stores a 0-dim scale "
                "(quantization_utils.py:144-152), which NxDI's GQA sharding takes for a per-channel scale and then "
                "fails with 'Cannot get channel axis for the scale' (gqa.py:130-155)",
            )
        return self

    @model_validator(mode="after")
    def _positions(self) -> NeuronConfigSpec:
        if self.n_positions != self.seq_len:
            raise _fail(
                f"n_positions {self.n_positions} differs from seq_len {self.seq_len}",
                "set only --seq-len: NxDI overwrites n_positions with the bucket length (= seq_len) when it traces "
                "(model_wrapper.py:1684-1686) and sizes the KV cache by max_length = seq_len "
                "(kv_cache_manager.py:198-203), so a different n_positions would have no effect",
            )
        return self

    @model_validator(mode="after")
    def _batching(self) -> NeuronConfigSpec:
        expected = batching_fields(self.batch_size)
        got = {key: getattr(self, key) for key in expected}
        if got != expected:
            raise _fail(
                f"batch_size {self.batch_size} with {got}",
                f"use {expected} (set only --batch-size): vllm-neuron serves every request in its own KV-cache slot "
                "(seq_id), which only a continuous-batching compile honours; with static batching NxDI's context "
                "encoding writes the cache from batch line 0 (kv_cache_manager.py:488-515), so concurrent requests "
                "would overwrite each other's cache",
            )
        return self

    @model_validator(mode="after")
    def _kv_pair(self) -> NeuronConfigSpec:
        if self.kv_cache_quant != (self.kv_quant_config is not None):
            raise _fail(
                f"kv_cache_quant={self.kv_cache_quant} with kv_quant_config={self.kv_quant_config}",
                "set both (fp8 KV: kv_cache_quant adds the compiler flag, kv_quant_config quantizes the cache "
                "from SDK 2.28 on) or neither (bf16 KV); --kv fp8|bf16 does this for you",
            )
        return self

    def neuron_config_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for NxDI's NeuronConfig, kv_quant_config still as plain data."""
        return self.model_dump(exclude={"target_instance", "sdk", "notices"})

    @property
    def weights_fp8_e4m3(self) -> bool:
        return self.quantization_dtype == "f8e4m3"


def batching_fields(batch_size: int) -> dict[str, Any]:
    """NeuronConfig batching for an endpoint serving `batch_size` concurrent requests, as vllm-neuron sets it.

    vllm-neuron gives each new request a free seq_id (its KV-cache line) and prefills it alone
    (worker/neuronx_distributed_model_runner.py:130-136, 704-724 at a5ef7c8); when it compiles a model itself it
    sets ctx_batch_size=1, batch_size=max_num_seqs and is_continuous_batching=(batch_size > 1), leaving
    tkg_batch_size at NxDI's default batch_size (worker/neuronx_distributed_model_loader.py:751-764;
    NxDI models/config.py:161-164 at cd3abf3 and ef2731e). A precompiled model is loaded as compiled (:214-218).
    """
    return {"ctx_batch_size": 1, "tkg_batch_size": batch_size, "is_continuous_batching": batch_size > 1}


def make_spec(**fields: Any) -> NeuronConfigSpec:
    """Construct a spec, turning pydantic's type errors into a NeuronforgeError."""
    return validated(NeuronConfigSpec, "neuron-config", **fields)


def check_against_model(spec: NeuronConfigSpec, facts: ModelFacts) -> NeuronConfigSpec:
    """Apply the model-dependent rules; returns the spec with lm_head added for tied models, the biased blocks for
    fp8 weights, and notices set."""
    notices = list(spec.notices)
    entries = _with_tied_lm_head(list(spec.modules_to_not_convert), facts, notices)
    _check_layer_indices(entries, facts)
    entries = _with_fp8_forced(spec, entries, facts, notices)
    _check_per_tensor(spec, entries, facts)
    _check_tp(spec, facts, notices)
    _check_lengths(spec, facts)
    _check_model_class(spec, facts)
    return spec.model_copy(update={"modules_to_not_convert": entries, "notices": notices})


def _with_tied_lm_head(entries: list[str], facts: ModelFacts, notices: list[str]) -> list[str]:
    if not facts.tie_word_embeddings or "lm_head" in entries:
        return entries
    notices.append(
        "added 'lm_head' to modules_to_not_convert: the model ties lm_head to embed_tokens, and NxDI would "
        "load the float embedding into lm_head with an int8/fp8 scale left over"
    )
    return [*entries, "lm_head"]


def _check_layer_indices(entries: list[str], facts: ModelFacts) -> None:
    for entry in entries:
        if (m := _CANONICAL.match(entry)) and m[1] is not None and int(m[1]) >= facts.num_layers:
            raise _fail(
                f"modules_to_not_convert entry {entry!r} names layer {m[1]}, but the model has "
                f"{facts.num_layers} layers (0-{facts.num_layers - 1})",
                "remove it or fix the index",
            )


def _check_per_tensor(spec: NeuronConfigSpec, entries: list[str], facts: ModelFacts) -> None:
    if spec.quantization_type == "per_tensor_symmetric" and entries:
        raise _fail(
            f"per_tensor_symmetric cannot keep modules in bf16 (modules_to_not_convert = {entries})",
            "use --qtype per_channel_symmetric: NxD's per-tensor quantizer ignores the list while the runtime "
            "honours it, which loads int8 codes into a float layer"
            + (" (tied-embedding models always need lm_head excluded)" if facts.tie_word_embeddings else ""),
        )


def _with_fp8_forced(spec: NeuronConfigSpec, entries: list[str], facts: ModelFacts, notices: list[str]) -> list[str]:
    """fp8 weights: add every biased block (hf/families.py: NxD's fp8 quantizer drops Linear biases)."""
    forced = facts.forced_bf16(spec.quantization_dtype)
    added = [block for block in forced if block not in entries]
    if added:
        notices.append(
            f"added {len(added)} blocks ({added[0]}{' ...' if len(added) > 1 else ''}) to modules_to_not_convert: "
            f"{forced[added[0]]}"
        )
    return [*entries, *added]


def _check_tp(spec: NeuronConfigSpec, facts: ModelFacts, notices: list[str]) -> None:
    cores = neuron_cores(spec.target_instance)
    if spec.tp_degree > cores:
        raise _fail(
            f"tp_degree {spec.tp_degree} needs {spec.tp_degree} NeuronCores; {spec.target_instance} has {cores}",
            f"use --tp-degree <= {cores}, or a larger instance ({_larger_instances(spec.tp_degree)})",
        )
    if facts.num_attention_heads % spec.tp_degree:
        divisors = [t for t in range(1, cores + 1) if facts.num_attention_heads % t == 0]
        raise _fail(
            f"tp_degree {spec.tp_degree} does not divide num_attention_heads={facts.num_attention_heads}",
            f"use --tp-degree in {divisors} on {spec.target_instance} (NxDI would otherwise pad zero query heads)",
        )
    if not keeps_gqa(spec.tp_degree, facts.num_key_value_heads):
        factor = facts.num_attention_heads // facts.num_key_value_heads
        notices.append(
            f"tp_degree {spec.tp_degree} neither divides nor is a multiple of num_key_value_heads="
            f"{facts.num_key_value_heads}: NxDI converts GQA to MHA, so the KV cache holds {factor}x more heads"
        )


def _check_lengths(spec: NeuronConfigSpec, facts: ModelFacts) -> None:
    if facts.max_position_embeddings and spec.seq_len > facts.max_position_embeddings:
        raise _fail(
            f"seq_len {spec.seq_len} exceeds the model's max_position_embeddings {facts.max_position_embeddings}",
            f"use --seq-len <= {facts.max_position_embeddings}",
        )


def _check_model_class(spec: NeuronConfigSpec, facts: ModelFacts) -> None:
    if problem := model_class_problem(facts.model_type, spec.sdk):
        raise _fail(*problem)


def _larger_instances(tp: int) -> str:
    return (
        ", ".join(f"ml.{name}" for name, entry in NEURON_INSTANCES.items() if entry.neuron_cores >= tp)
        or "none has that many"
    )


def kv_fields(kv: str) -> dict[str, Any]:
    """fp8 KV needs both flags from SDK 2.28 on: kv_cache_quant adds the compiler flag, kv_quant_config the cache."""
    if kv == "fp8":
        return {"kv_cache_quant": True, "kv_quant_config": KVQuantSpec()}
    if kv == "bf16":
        return {"kv_cache_quant": False, "kv_quant_config": None}
    raise _fail(f"KV cache mode {kv!r} is not supported", "use --kv fp8 or --kv bf16")


class NeuronConfigOptions(BaseModel):
    """The deployment a NeuronConfig is built for (`nf.neuron_config`, `neuronforge neuron-config`, compile's flags)."""

    model_config = ConfigDict(extra="forbid")

    dtype: QuantDtypeOption = "int8"
    modules_to_not_convert: list[str] | None = Field(
        None,
        description="blocks kept bf16; default: the model folder's modules_to_not_convert.json (stage 1 writes it)",
    )
    tp_degree: TpDegree = None
    instance: str = Field(
        DEFAULT_INSTANCE, description="target instance: ml.inf2.{xlarge,8xlarge,24xlarge,48xlarge} or ml.trn1.*"
    )
    kv: KvOption = "fp8"
    qtype: QuantTypeOption = "per_channel_symmetric"
    batch_size: BatchSize = 1
    seq_len: SeqLen = 1024
    sdk: str | None = Field(
        None,
        description=f"Neuron SDK release to target ({' or '.join(SDKS)}); default: this host's NxDI, else "
        f"{DEFAULT_SDK}, or the SDK that serves the model type",
    )


def neuron_config(model_dir: Path, options: NeuronConfigOptions | None = None) -> NeuronConfigSpec:
    """The validated NeuronConfigSpec for `model_dir` and `options` (`nf.neuron_config`)."""
    options = options or NeuronConfigOptions()
    return build_neuron_config_spec(
        model_dir,
        dtype=options.dtype,
        modules_to_not_convert=(
            default_not_convert(model_dir, None)
            if options.modules_to_not_convert is None
            else options.modules_to_not_convert
        ),
        tp_degree=options.tp_degree,
        instance=options.instance,
        kv=options.kv,
        quantization_type=options.qtype,
        batch_size=options.batch_size,
        seq_len=options.seq_len,
        sdk=options.sdk,
    )


def build_neuron_config_spec(
    model_dir: Path,
    *,
    dtype: str = "int8",
    modules_to_not_convert: Sequence[str] = (),
    tp_degree: int | None = None,
    instance: str = DEFAULT_INSTANCE,
    kv: str = "fp8",
    quantization_type: str = "per_channel_symmetric",
    batch_size: int = 1,
    seq_len: int = 1024,
    torch_dtype: str = "bfloat16",
    quantized_checkpoints_path: str = "quantized_checkpoint",
    sdk: str | None = None,
) -> NeuronConfigSpec:
    """Read the model's config.json and build a NeuronConfigSpec that passes every rule above.

    Without `sdk`, the model type's default (nxdi_api.default_sdk): DEFAULT_SDK unless its vLLM cannot serve it.
    """
    facts = model_facts(model_dir)
    notices: list[str] = []
    if sdk is None:
        sdk = default_sdk(facts.model_type)
        if sdk != DEFAULT_SDK:
            notices.append(
                f"Neuron SDK {sdk} chosen: SDK {DEFAULT_SDK}'s vLLM cannot serve model_type {facts.model_type!r}, and "
                f"SDK {sdk}'s Inf2/Trn1 support is disputed between AWS sources (docs/conformance.md, 'SDK pairing')"
            )
    if tp_degree is None:
        tp_degree = choose_tp(facts, instance)
        notices.append(f"tp_degree {tp_degree} chosen: the largest that divides the query heads and fits {instance}")
    spec = make_spec(
        tp_degree=tp_degree,
        batch_size=batch_size,
        seq_len=seq_len,
        n_positions=seq_len,
        torch_dtype=torch_dtype,
        quantized_checkpoints_path=quantized_checkpoints_path,
        quantization_dtype=dtype,
        quantization_type=quantization_type,
        modules_to_not_convert=list(modules_to_not_convert),
        target_instance=instance,
        sdk=sdk,
        notices=notices,
        **kv_fields(kv),
    )
    return _require_fits(check_against_model(spec, facts), model_dir)


def revalidate(spec: NeuronConfigSpec, model_dir: Path) -> NeuronConfigSpec:
    """Check a spec read from disk against the model it will now compile."""
    return _require_fits(check_against_model(spec, model_facts(model_dir)), model_dir)


def _require_fits(spec: NeuronConfigSpec, model_dir: Path) -> NeuronConfigSpec:
    """Refuse a spec whose weights and KV cache will not fit its target instance (neuron/planner/plan.py)."""
    deployment = deployment_from(
        dtype=spec.quantization_dtype,
        kv="fp8" if spec.kv_cache_quant else "bf16",
        seq_len=spec.seq_len,  # NxDI's max_length defaults to seq_len (config.py:138); a sliding window replaces it
        batch_size=spec.batch_size,
        modules_to_not_convert=tuple(spec.modules_to_not_convert),
        qtype=spec.quantization_type,
    )
    require_fits(load_model_shape(model_dir), deployment, spec.target_instance, spec.tp_degree)
    return spec


def check_servable(model_dir: Path, sdk: str | None) -> None:
    """Refuse, before any work, a model that the SDK the compile would target (`sdk`, else this host's, else the model
    type's default) has no vLLM-served NxDI class for: `run` would otherwise quantize and emulate, then fail."""
    model_type = model_facts(model_dir).model_type
    if problem := model_class_problem(model_type, sdk or host_sdk() or default_sdk(model_type)):
        raise _fail(*problem)


def model_facts(model_dir: Path) -> ModelFacts:
    """ModelFacts of a validated model folder."""
    return ModelFacts.from_config(read_config(validate_hf_folder(Path(model_dir))))


def write_config_files(spec: NeuronConfigSpec, out_dir: Path) -> tuple[Path, Path]:
    """Write neuron_config.json (our loadable spec) and modules_to_not_convert.json (inference_demo's format)."""
    out_dir = Path(out_dir)
    config_path = out_dir / NEURON_CONFIG_FILE
    atomic_write_json(config_path, spec.model_dump(mode="json"))
    return config_path, write_not_convert(out_dir, spec.modules_to_not_convert)


def read_neuron_config(path: Path) -> NeuronConfigSpec:
    """Load a neuron_config.json written by write_config_files, validating it again."""
    return make_spec(**_read_json(path))


def default_not_convert(model_dir: Path, not_convert_file: Path | None) -> list[str]:
    """The explicit file if given, else the model folder's modules_to_not_convert.json (stage 1 writes it), else []."""
    if not_convert_file is not None:
        return read_not_convert(not_convert_file)
    candidate = Path(model_dir) / NOT_CONVERT_FILE
    return read_not_convert(candidate) if candidate.is_file() else []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise _fail(f"{path} does not exist", "check the path") from None
    except json.JSONDecodeError as exc:
        raise _fail(
            f"{path} is not valid JSON ({exc})", "rewrite it, or regenerate it with `neuronforge neuron-config`"
        ) from None
