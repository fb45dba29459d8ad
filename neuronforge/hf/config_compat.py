"""config.json and tokenizer_config.json files that transformers 4.57 (NxDI's, the Neuron host's) and 5 read alike.

transformers 5 saves RoPE settings only as `rope_parameters` ({"rope_theta": ..., "rope_type": ..., scaling keys}).
transformers 4.57, which NxDI 0.8 pins (setup.py:43) and reads the model's config with (utils/hf_adapter.py:49),
knows only top-level `rope_theta` and `rope_scaling`, and silently falls back to rope_theta=10000.0 and no scaling
(configuration_llama.py defaults in 4.57.6): SmolLM2 (theta 100000) would run with the wrong RoPE on the device.
Writing both spellings fixes that, and transformers 5 reads the result exactly as it reads its own file (checked:
AutoConfig(...).to_dict() is identical); tests/test_hf/test_transformers457_contract.py checks it in a 4.57.6 venv.

transformers 5 also saves `"tokenizer_class": "TokenizersBackend"`, a name 4.57 does not have: 4.57.6's AutoTokenizer
resolves a class only as "PreTrainedTokenizerFast", a name in TOKENIZER_MAPPING_NAMES or an attribute of the
`transformers` module (models/auto/tokenization_auto.py:807-834), else raises "Tokenizer class TokenizersBackend does
not exist" (:1152-1154), so the endpoint and NxDI's smoke test cannot load the tokenizer. transformers 5 defines
PreTrainedTokenizerFast as an alias of TokenizersBackend (tokenization_utils_tokenizers.py:1580 in 5.23) and both
classes read tokenizer.json as saved, so that name gives the same token ids and chat template in both (checked in the
same contract test).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neuronforge.core.atomic import atomic_write_text

CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# transformers 5 tokenizer class names that 4.57 lacks -> the name both versions load the same tokenizer.json with.
PORTABLE_TOKENIZER_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def legacy_rope(rope_parameters: Mapping[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) as transformers 4.x spells the same settings; scaling is None for plain RoPE."""
    scaling = {key: value for key, value in rope_parameters.items() if key != "rope_theta"}
    plain = scaling.get("rope_type", scaling.get("type", "default")) == "default"
    return rope_parameters.get("rope_theta"), None if plain else scaling


def portable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with top-level rope_theta/rope_scaling derived from rope_parameters (unchanged without them)."""
    portable = dict(config)
    rope = config.get("rope_parameters")
    if isinstance(rope, Mapping) and "rope_theta" in rope:
        portable["rope_theta"], portable["rope_scaling"] = legacy_rope(rope)
    return portable


def rope_problem(config: Mapping[str, Any]) -> str | None:
    """Why transformers 4.57 would read different RoPE settings from this config.json than transformers 5 (or None)."""
    if portable_config(config) == dict(config):
        return None
    theta = config["rope_parameters"]["rope_theta"]
    return (
        f"rope_parameters (rope_theta {theta}) is not mirrored by matching top-level rope_theta/rope_scaling, so "
        "transformers 4.57 (NxD Inference) would read other RoPE settings (rope_theta 10000 and no scaling when absent)"
    )


def make_config_portable(folder: Path) -> None:
    """Rewrite `folder`/config.json in place when needed; only for folders neuronforge itself wrote."""
    path = Path(folder) / CONFIG_FILE
    config = json.loads(path.read_text())
    if rope_problem(config):
        atomic_write_text(path, json.dumps(portable_config(config), indent=2, sort_keys=True) + "\n")


def tokenizer_problem(tokenizer_config: Mapping[str, Any]) -> str | None:
    """Why transformers 4.57 cannot load the tokenizer this tokenizer_config.json names (or None)."""
    name = tokenizer_config.get("tokenizer_class")
    if name not in PORTABLE_TOKENIZER_CLASSES:
        return None
    return (
        f"tokenizer_class {name!r} exists only in transformers 5, so transformers 4.57 (NxD Inference, vLLM on the "
        "Neuron host) cannot load this tokenizer"
    )


def make_tokenizer_portable(folder: Path) -> None:
    """Rewrite `folder`/tokenizer_config.json's class to one 4.57 knows, when needed; only for folders we wrote."""
    path = Path(folder) / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    if tokenizer_problem(config):
        portable = {**config, "tokenizer_class": PORTABLE_TOKENIZER_CLASSES[config["tokenizer_class"]]}
        atomic_write_text(path, json.dumps(portable, indent=2, ensure_ascii=False) + "\n")


def make_portable(folder: Path) -> None:
    """config.json and tokenizer_config.json of a folder neuronforge wrote, readable alike by transformers 4.57 and 5."""
    make_config_portable(folder)
    make_tokenizer_portable(folder)
