"""config.json that transformers 4.57 (NxDI's) and 5 (ours) read alike: the pure rewrite, checked with transformers 5."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from neuronforge.hf.config_compat import make_config_portable, portable_config, rope_problem

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip


def test_v5_config_gets_the_4x_spelling_and_v5_reads_it_unchanged(make_tiny_llama: Callable[..., Path]) -> None:
    from transformers import AutoConfig

    folder = make_tiny_llama("rope-llama3", rope_theta=500000.0, rope_scaling=dict(LLAMA3))
    written = json.loads((folder / "config.json").read_text())
    assert "rope_theta" not in written and written["rope_parameters"]["rope_theta"] == 500000.0  # what v5 writes
    assert "rope_theta 500000.0" in (rope_problem(written) or "")

    before = AutoConfig.from_pretrained(folder).to_dict()
    make_config_portable(folder)
    portable = json.loads((folder / "config.json").read_text())
    assert portable["rope_theta"] == 500000.0 and portable["rope_scaling"] == LLAMA3
    assert portable["rope_parameters"] == written["rope_parameters"] and rope_problem(portable) is None
    after = AutoConfig.from_pretrained(folder).to_dict()
    assert after == before  # transformers 5 reads exactly what it read from its own file


def test_plain_rope_has_no_scaling_and_4x_configs_are_left_alone() -> None:
    plain = portable_config({"rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}})
    assert plain["rope_theta"] == 100000.0 and plain["rope_scaling"] is None
    legacy = {"rope_theta": 10000.0, "rope_scaling": None, "model_type": "llama"}
    assert portable_config(legacy) == legacy and rope_problem(legacy) is None
    mismatch = {"rope_theta": 10000.0, "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
    assert "rope_theta 100000.0" in (rope_problem(mismatch) or "")


def test_tokenizer_class_transformers_457_lacks_is_renamed_and_nothing_else_changes(tmp_path: Path) -> None:
    """NEW-1: only `TokenizersBackend` (transformers 5's name) becomes PreTrainedTokenizerFast; other classes stay."""
    from neuronforge.hf.config_compat import make_tokenizer_portable, tokenizer_problem

    path = tmp_path / "tokenizer_config.json"
    saved = {"tokenizer_class": "TokenizersBackend", "bos_token": "<s>", "model_max_length": 8192, "extra": "é"}
    path.write_text(json.dumps(saved))
    assert "exists only in transformers 5" in (tokenizer_problem(saved) or "")
    make_tokenizer_portable(tmp_path)
    assert json.loads(path.read_text()) == {**saved, "tokenizer_class": "PreTrainedTokenizerFast"}
    for name in ("LlamaTokenizerFast", "PreTrainedTokenizerFast", None):
        assert tokenizer_problem({"tokenizer_class": name}) is None
    make_tokenizer_portable(tmp_path / "absent")  # no tokenizer_config.json: nothing to do
