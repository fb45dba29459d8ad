"""Shared fixtures: the real SmolLM2 model (fetched once per cache) and tiny Llama folders with a real tokenizer."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    """The simulated GPU device must exist before autograd's first backward pass in this process (the engine
    sizes its per-device queues once): register it first (testkit/device_sim.py)."""
    from testkit.device_sim import device

    device()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real embedded model, converted once into the user's cache (about a minute the first time)."""
    from neuronforge.assets.models import fetch

    return fetch("smollm2")


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real byte-level BPE tokenizer (vocab 512) trained on the embedded Britannica text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from neuronforge.assets.texts import load_embedded_text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<unk>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([load_embedded_text("britannica")], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    out = tmp_path_factory.mktemp("tiny-tokenizer")
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def make_tiny_llama(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory for tiny random Llama folders (dims are multiples of 32 so AutoRound quantizes them).

    A few input channels get large outliers so quantization has something real to damage.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    def build(name: str = "tiny", *, seed: int = 0, dtype: torch.dtype = torch.bfloat16, **overrides: object) -> Path:
        settings: dict[str, object] = dict(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            rope_theta=10000.0,
        )
        settings.update(overrides)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**settings))
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.normal_(0.0, 0.08)
                    module.weight[:, :: max(1, module.in_features // 4)] *= 6.0
        out = tmp_path_factory.mktemp(name)
        model.to(dtype).save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(out)
        return out

    return build


@pytest.fixture(scope="session")
def tiny_llama_dir(make_tiny_llama: Callable[..., Path]) -> Path:
    return make_tiny_llama()


# Tiny random models of each supported family, built with transformers' own config classes: what differs is what
# NxDI's class for the family reads differently (neuronforge/hf/families.py).
FAMILIES = ("llama3", "qwen2", "qwen3", "mistral")


@pytest.fixture(scope="session")
def make_tiny_family(tiny_tokenizer_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory for a tiny random model of a family: 'llama3' (rope_scaling llama3), 'qwen2' (q/k/v biases, untied),
    'qwen3' (q/k norms, head_dim 32 != hidden 64 / 4 heads, tied), 'mistral' (explicit head_dim = hidden / heads).
    Biases and norm weights are random, so a dropped bias or a misplaced norm changes the logits."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        MistralConfig,
        Qwen2Config,
        Qwen3Config,
    )

    common: dict[str, object] = dict(
        vocab_size=544,  # Qwen's tokenizer class adds <|endoftext|> to the 512 trained tokens
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        rope_theta=10000.0,
    )
    llama3_rope = dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,  # every band of the head_dim-16 frequencies is scaled
    )
    configs: dict[str, tuple[type, dict[str, object]]] = {
        "llama3": (LlamaConfig, dict(tie_word_embeddings=True, rope_scaling=llama3_rope)),
        "qwen2": (Qwen2Config, dict(tie_word_embeddings=False)),
        "qwen3": (Qwen3Config, dict(head_dim=32, tie_word_embeddings=True)),
        "mistral": (MistralConfig, dict(head_dim=16, tie_word_embeddings=False)),
    }

    def build(family: str, *, seed: int = 0, **overrides: object) -> Path:
        torch.manual_seed(seed)
        config_class, settings = configs[family]
        model = AutoModelForCausalLM.from_config(config_class(**{**common, **settings, **overrides}))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("_proj.weight") or name.endswith("lm_head.weight"):
                    param.normal_(0.0, 0.08)
                    param[:, :: max(1, param.shape[1] // 4)] *= 6.0
                elif name.endswith(".bias"):
                    param.normal_(0.0, 0.5)
                elif name.endswith("norm.weight"):
                    param.uniform_(0.5, 1.5)
        out = tmp_path_factory.mktemp(f"tiny-{family}")
        model.to(torch.bfloat16).save_pretrained(out)
        AutoTokenizer.from_pretrained(tiny_tokenizer_dir).save_pretrained(out)
        return out

    return build


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_family_dir(request: pytest.FixtureRequest, make_tiny_family: Callable[..., Path]) -> Path:
    """One tiny model per supported family (tests using it run once per family)."""
    return make_tiny_family(request.param)


@pytest.fixture(scope="session")
def stage1_llama_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as stage 1 writes it: config.json and tokenizer transformers 4.57 (NxDI) and 5 read alike."""
    import shutil

    from neuronforge.hf.config_compat import make_portable

    out = tmp_path_factory.mktemp("stage1") / "model"
    shutil.copytree(tiny_llama_dir, out)
    make_portable(out)
    return out


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The one AWS fake: test credentials, us-east-1, no profile, SDK telemetry off, inside moto's mock_aws().

    moto validates endpoint instance types against an older list than botocore's; our own validation (against
    botocore's service model) is what is under test, so moto's copy is switched off. Yields the region.
    """
    import moto.sagemaker.models as moto_models
    from moto import mock_aws

    region = "us-east-1"
    for key, value in {
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "SAGEMAKER_VALIDATE_ROLE": "false",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = tmp_path_factory.mktemp("sagemaker-config") / "config.yaml"  # SDK v3 telemetry opt-out
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(config))
    monkeypatch.setattr(moto_models.FakeEndpointConfig, "validate_instance_type", lambda self, instance_type: None)
    with mock_aws():
        yield region
