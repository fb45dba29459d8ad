"""Which bias tensors a config declares, and the fix named for those it does not (report A36)."""

from __future__ import annotations

import pytest

from neuronforge.hf.families import declared_biases, undeclared_bias_problem

LAYER = "model.layers.0"
QKV = [f"{LAYER}.self_attn.{name}.bias" for name in ("q_proj", "k_proj", "v_proj")]
O_BIAS = f"{LAYER}.self_attn.o_proj.bias"
MLP = [f"{LAYER}.mlp.{name}.bias" for name in ("gate_proj", "up_proj", "down_proj")]


@pytest.mark.parametrize(
    ("config", "keys"),
    [
        ({"model_type": "qwen2"}, QKV),  # Qwen2's class builds q/k/v biases whatever the config says
        ({"model_type": "llama", "attention_bias": True}, [*QKV, O_BIAS]),
        ({"model_type": "llama", "mlp_bias": True}, MLP),
        ({"model_type": "llama"}, [f"{LAYER}.self_attn.q_proj.weight"]),
    ],
)
def test_declared_biases_pass(config: dict[str, object], keys: list[str]) -> None:
    assert undeclared_bias_problem(config, keys) is None


@pytest.mark.parametrize(
    ("config", "keys", "fix"),
    [
        ({"model_type": "llama"}, QKV, 'set model_type to "qwen2"'),  # a Qwen2 checkpoint relabelled llama
        ({"model_type": "llama"}, [*QKV, O_BIAS], "set attention_bias: true"),
        ({"model_type": "llama"}, MLP, "set mlp_bias: true"),
        ({"model_type": "mistral"}, QKV, 'set model_type to "qwen2"'),
        ({"model_type": "qwen2"}, [*QKV, O_BIAS], "use the config.json the model was trained with"),
        ({"model_type": "llama"}, ["model.norm.bias"], "use the config.json the model was trained with"),
    ],
)
def test_an_undeclared_bias_is_named_with_the_config_key_that_declares_it(
    config: dict[str, object], keys: list[str], fix: str
) -> None:
    problem = undeclared_bias_problem(config, keys)
    assert problem is not None and fix in problem[1]
    assert f"'{config['model_type']}' config.json does not declare" in problem[0]


def test_llama_declares_o_proj_bias_with_attention_bias_as_nxdi_builds_it() -> None:
    """NxDI's Llama passes attention_bias as both qkv_bias and o_bias (modeling_llama.py:1006-1007)."""
    assert "self_attn.o_proj" in declared_biases({"model_type": "llama", "attention_bias": True})
    assert "self_attn.o_proj" not in declared_biases({"model_type": "qwen2"})
