"""The model families neuronforge serves, and what NxD Inference does differently for each, read from its source.

Each family is one HF `model_type` and the NxDI class that compiles it (neuron/nxdi_api.py picks the class per
SDK). What differs between them is decided here, from config.json alone, so every stage refuses a model the
device would compute differently before any work, and stage 1, the emulator, neuron-config and the planner
agree on what stays bf16. Sources (prefix src/neuronx_distributed_inference/ of
aws-neuron/neuronx-distributed-inference; NXDI8 = @cd3abf3, NxDI 0.8, SDK 2.28; NXDI9 = @ef2731e, NxDI 0.9):

- head_dim: NxDI's Llama (NXDI8 models/llama/modeling_llama.py:1003) and Qwen3 (models/qwen3/modeling_qwen3.py:85)
  read `config.head_dim`; Qwen2 (models/qwen2/modeling_qwen2.py:87,97) and Mistral (NXDI9
  models/mistral/modeling_mistral.py:85,94) use hidden_size // num_attention_heads. A model whose real head_dim
  differs (Mistral-NeMo-12B: 5120 // 32 = 160, head_dim 128) cannot be sharded by that class: refused.
- biases: Qwen2 has q/k/v biases (InferenceConfig.add_derived_config sets qkv_bias, modeling_qwen2.py:59-62); Llama
  reads attention_bias/mlp_bias (modeling_llama.py:385,1006-1007); Qwen3 and Mistral build no attention bias.
- QK norm: Qwen3's q_norm/k_norm are applied per head before RoPE (modeling_qwen3.py:99-100, renamed to
  q_layernorm/k_layernorm at :224-230; attention_base.py:232 default PRE_ROPE, :609-612), as transformers does.
- RoPE: Llama uses its fp32 Llama3RotaryEmbedding for rope_type llama3 (modeling_llama.py:1013-1046, 1050-1111),
  which computes transformers' llama3 frequencies with the same fp32 operations; other scaling types go through
  HF's LlamaRotaryEmbedding of transformers 4.57 (not verified here: refused). Qwen2, Qwen3 and Mistral build a plain
  RotaryEmbedding and ignore rope_scaling (modules/attention/utils.py:306-343): a scaled config is refused.
- sliding window: Llama and Mistral pass `config.sliding_window` to attention and the KV cache, which is then
  sliding_window long whenever it is set (modules/kvcache/kv_cache_manager.py:198-203); Qwen2/Qwen3 never set it
  (models/model_base.py:111), so a Qwen config that turns it on (use_sliding_window) is refused.
- fp8 weights drop Linear biases: NxD's CPU quantizer maps nn.Linear to QuantizedLinear, which stores only weight
  and scale (aws-neuron/neuronx-distributed@v2.28.0 src/neuronx_distributed/quantization/quantization_utils.py:154-181,
  224-227), while int8's torch dynamic Linear keeps the bias (:110-119). So with f8e4m3 every biased block stays
  bf16 (`forced_bf16_blocks`): for Qwen2 that is every layers.{i}.self_attn.

User documentation, with the families x SDK x dtype table: docs/model-families.md.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from neuronforge.errors import NeuronforgeError


@dataclass(frozen=True)
class Family:
    """What NxDI's class for one HF model_type reads from config.json."""

    model_type: str
    reads_head_dim: bool  # False: the class sizes heads as hidden_size // num_attention_heads
    qkv_bias: bool  # q/k/v biases whatever the config says (Qwen2)
    reads_attention_bias: bool  # config.attention_bias / mlp_bias honoured (Llama)
    qk_norm: bool  # q_norm/k_norm over head_dim
    rope_types: tuple[str, ...]  # RoPE types the class computes as transformers does
    sliding_window: bool  # config.sliding_window sizes the KV cache and masks attention
    note: str


_PLAIN = ("default",)
FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family(
            "llama",
            reads_head_dim=True,
            qkv_bias=False,
            reads_attention_bias=True,
            qk_norm=False,
            rope_types=("default", "llama3"),
            sliding_window=True,
            note="Llama 2/3.x",
        ),
        Family(
            "mistral",
            reads_head_dim=False,
            qkv_bias=False,
            reads_attention_bias=False,
            qk_norm=False,
            rope_types=_PLAIN,
            sliding_window=True,
            note="Mistral 7B",
        ),
        Family(
            "qwen2",
            reads_head_dim=False,
            qkv_bias=True,
            reads_attention_bias=False,
            qk_norm=False,
            rope_types=_PLAIN,
            sliding_window=False,
            note="Qwen2, Qwen2.5",
        ),
        Family(
            "qwen3",
            reads_head_dim=True,
            qkv_bias=False,
            reads_attention_bias=False,
            qk_norm=True,
            rope_types=_PLAIN,
            sliding_window=False,
            note="Qwen3 dense",
        ),
    )
}


def supported_list() -> str:
    return ", ".join(f"{f.model_type} ({f.note})" for f in FAMILIES.values())


def rope_type(config: Mapping[str, Any]) -> str:
    """The RoPE type transformers 5 (rope_parameters) or 4.x (rope_scaling) reads from this config."""
    for key in ("rope_parameters", "rope_scaling"):
        value = config.get(key)
        if isinstance(value, Mapping):
            return str(value.get("rope_type", value.get("type", "default")))
    return "default"


def head_dims(config: Mapping[str, Any]) -> tuple[int, int]:
    """(head_dim transformers uses, hidden_size // num_attention_heads)."""
    heads = int(config.get("num_attention_heads") or 1)
    derived = int(config.get("hidden_size") or 0) // heads
    return int(config.get("head_dim") or derived), derived


def attention_biased(config: Mapping[str, Any]) -> bool:
    """Whether q/k/v (and for Llama o) carry biases NxDI loads."""
    family = FAMILIES.get(str(config.get("model_type")))
    return family is not None and (family.qkv_bias or bool(config.get("attention_bias", False)))


def sliding_window(config: Mapping[str, Any]) -> int | None:
    """The window NxDI sizes the KV cache by (None: the class ignores it, or none is set)."""
    family = FAMILIES.get(str(config.get("model_type")))
    window = config.get("sliding_window")
    return int(window) if family is not None and family.sliding_window and window else None


def family_problem(config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(what, fix) when NxDI would not compute this model as transformers does, or cannot serve it at all."""
    model_type = config.get("model_type")
    family = FAMILIES.get(str(model_type))
    if family is None:
        return (
            f"a '{model_type}' model is not supported; neuronforge supports: {supported_list()}",
            "use a checkpoint of a supported family (MoE, Gemma, Phi and others are not served)",
        )
    name = family.model_type
    head_dim, derived = head_dims(config)
    if not family.reads_head_dim and head_dim != derived:
        return (
            f"this {name} model has head_dim {head_dim}, but NxD Inference's {name} class sizes attention heads as "
            f"hidden_size // num_attention_heads = {derived}, so its q/k/v/o weights cannot be sharded",
            "no NxDI class serves it through vLLM on inf2 (Mistral-NeMo-type models need NxDI's Mistral class to "
            "honour head_dim); use a model whose head_dim equals hidden_size // num_attention_heads",
        )
    if not family.reads_attention_bias and not family.qkv_bias and config.get("attention_bias"):
        return (
            f"this {name} model has attention_bias=true, and NxD Inference's {name} class builds no attention bias",
            "use a checkpoint without attention biases",
        )
    rope = rope_type(config)
    if rope not in family.rope_types:
        return (
            f"this {name} model uses RoPE scaling '{rope}', and NxD Inference's {name} class computes "
            + ("only plain RoPE (it ignores rope_scaling)" if family.rope_types == ("default",) else "'llama3' only")
            + ", so the device would compute other positions than transformers",
            "remove rope_scaling from config.json if the context you serve fits the model's original length",
        )
    if not family.sliding_window and config.get("use_sliding_window"):
        return (
            f"this {name} model sets use_sliding_window, which NxD Inference's {name} class ignores (full attention)",
            "set use_sliding_window to false in config.json (the published Qwen configs do)",
        )
    return None


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def declared_biases(config: Mapping[str, Any]) -> set[str]:
    """The Linear biases ("self_attn.q_proj", ...) that this config makes both transformers and NxDI build: Qwen2's
    q/k/v always, Llama's q/k/v/o with attention_bias and gate/up/down with mlp_bias (module docstring)."""
    family = FAMILIES.get(str(config.get("model_type")))
    if family is None:
        return set()
    declared = {f"self_attn.{name}" for name in ATTENTION_PROJECTIONS[:3]} if family.qkv_bias else set()
    if family.reads_attention_bias and config.get("attention_bias"):
        declared |= {f"self_attn.{name}" for name in ATTENTION_PROJECTIONS}
    if family.reads_attention_bias and config.get("mlp_bias"):
        declared |= {f"mlp.{name}" for name in MLP_PROJECTIONS}
    return declared


def undeclared_bias_problem(config: Mapping[str, Any], keys: Collection[str]) -> tuple[str, str] | None:
    """(what, fix) when the checkpoint holds bias tensors its config.json does not declare.

    Both sides drop such a tensor without a word: transformers' Llama builds its Linears with
    bias=config.attention_bias / config.mlp_bias (transformers 5.23 models/llama/modeling_llama.py:158-160, 220-229)
    and only logs unused checkpoint keys; NxDI's Llama builds q/k/v/o biases only from attention_bias
    (NXDI8 models/llama/modeling_llama.py:1006-1007) and MLP biases from mlp_bias (:385). So quantize, emulate and the
    device would all compute another model than the file's (report A36: a Qwen2 checkpoint relabelled llama)."""
    declared = declared_biases(config)
    undeclared = sorted(key for key in keys if key.endswith(".bias") and _bias_module(key) not in declared)
    if not undeclared:
        return None
    model_type = config.get("model_type")
    kinds = {_bias_module(key) for key in undeclared}
    qkv = {f"self_attn.{name}" for name in ATTENTION_PROJECTIONS[:3]}
    family = FAMILIES.get(str(model_type))
    reads_bias = family is not None and family.reads_attention_bias
    if qkv <= kinds and "self_attn.o_proj" not in kinds:
        fix = "q/k/v biases without an o_proj bias are Qwen2's layout: if this is a Qwen2 model, set model_type to "
        fix += '"qwen2" and architectures to ["Qwen2ForCausalLM"] in config.json'
    elif reads_bias and kinds <= {f"self_attn.{name}" for name in ATTENTION_PROJECTIONS}:
        fix = "set attention_bias: true in config.json (the model was trained with q/k/v/o biases)"
    elif reads_bias and kinds <= {f"mlp.{name}" for name in MLP_PROJECTIONS}:
        fix = "set mlp_bias: true in config.json (the model was trained with MLP biases)"
    else:
        fix = "use the config.json the model was trained with (its model_type decides which biases are built)"
    what = (
        f"the checkpoint holds {len(undeclared)} bias tensors that its '{model_type}' config.json does not declare "
        f"({', '.join(undeclared[:3])}{', ...' if len(undeclared) > 3 else ''}): transformers and NxD Inference "
        "would silently drop them and compute another model than the file's"
    )
    return what, fix


def _bias_module(key: str) -> str:
    """ "model.layers.0.self_attn.q_proj.bias" -> "self_attn.q_proj" (the two names before .bias)."""
    return ".".join(key.split(".")[-3:-1])


def check_family(config: Mapping[str, Any], where: str) -> Family:
    """The family of `config`, or a NeuronforgeError naming `where` and the supported families."""
    if problem := family_problem(config):
        raise NeuronforgeError(f"{where}: {problem[0]}", problem[1])
    return FAMILIES[str(config["model_type"])]


def forced_bf16_blocks(config: Mapping[str, Any], dtype: str | None) -> dict[str, str]:
    """Block -> why it must stay bf16 whatever the sensitivity says: with fp8 weights, the biased blocks (NxD's fp8
    quantizer drops Linear biases, see the module docstring). Tied lm_heads are handled where they are found."""
    if dtype is None or not dtype.startswith("f8"):
        return {}
    layers = int(config.get("num_hidden_layers") or 0)
    kinds = []
    if attention_biased(config):
        kinds.append(("self_attn", "q/k/v biases"))
    family = FAMILIES.get(str(config.get("model_type")))
    if family is not None and family.reads_attention_bias and config.get("mlp_bias"):
        kinds.append(("mlp", "MLP biases"))
    reason = "{what}: NxD's fp8 quantizer drops Linear biases (quantization_utils.py:154-181), so the block stays bf16"
    return {f"layers.{i}.{kind}": reason.format(what=what) for kind, what in kinds for i in range(layers)}
