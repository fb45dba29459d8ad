"""The run stages' cache keys come from the options models they build: a field is a key or says why it is not."""

from __future__ import annotations

import pydantic
import pytest

from neuronforge.pipeline.evaluate.api import EvaluateOptions
from neuronforge.pipeline.quantize.api import QuantizeSettings
from neuronforge.pipeline.run import stages
from neuronforge.pipeline.run.config import RunConfig

KEYED = [
    ("quantize", QuantizeSettings, stages.QUANTIZE_KEYS, stages.QUANTIZE_EXCLUDED),
    ("evaluate", EvaluateOptions, stages.EVALUATE_KEYS, stages.EVALUATE_EXCLUDED),
]


@pytest.mark.parametrize(("stage", "model", "keys", "excluded"), KEYED, ids=[k[0] for k in KEYED])
def test_every_options_field_is_a_key_or_excluded_with_a_reason(stage, model, keys, excluded) -> None:
    fields = set(model.model_fields)
    assert set(keys) | set(excluded) == fields, f"{stage}: a field is neither a cache key nor excluded"
    assert not set(keys) & set(excluded)
    assert all(reason for reason in excluded.values())
    missing = [key for key in keys if key not in RunConfig.model_fields]
    assert missing == [], f"{stage} keys that `neuronforge run` has no setting for"


def test_a_new_options_field_joins_the_key_unless_excluded() -> None:
    """What the hand-kept tuples got wrong: a field added to the model escaped the cache key."""

    class Grown(QuantizeSettings):
        group_size: int = pydantic.Field(128, ge=1)

    assert "group_size" in stages.key_fields(Grown, stages.QUANTIZE_EXCLUDED)
    assert "group_size" not in stages.key_fields(Grown, {**stages.QUANTIZE_EXCLUDED, "group_size": "why"})


def test_the_keys_are_the_ones_before_the_derivation() -> None:
    """Deriving them kept every existing run's cache valid."""
    assert set(stages.QUANTIZE_KEYS) == {
        "dtype", "iters", "nsamples", "calib_seq_len", "sensitivity", "selection", "max_extra_memory",
        "budget_instance", "topk", "threshold", "modules_to_not_convert", "autoround", "minmax_tuning",
        "target_kl",  # issue 32: a new knob of the stage, so a new key
    }  # fmt: skip
    assert set(stages.EVALUATE_KEYS) == {
        "dtype", "kv", "eval_tokens", "calib_seq_len", "iters", "nsamples", "sensitivity", "selection",
        "max_extra_memory", "budget_instance", "topk", "threshold", "minmax_tuning", "seq_len",
    }  # fmt: skip


def test_iters_zero_with_the_evaluate_stage_is_refused_not_clamped() -> None:
    """The evaluate stage used to turn iters 0 into 1 silently; the config now says it cannot run."""
    with pytest.raises(pydantic.ValidationError, match="the evaluate stage tunes AutoRound variants"):
        RunConfig(iters=0, autoround=False, stages=["model", "evaluate"])
    assert RunConfig(iters=0, autoround=False).iters == 0
