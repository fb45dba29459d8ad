"""Stage 2 on a Neuron host: quantize the stage-1 checkpoint with NxD, compile, load and smoke-test it.

The NeuronConfig is built in Python, not from JSON: NxDI's JSON round trip of kv_quant_config
loses its Enum members and torch dtype (research notes section 5), so we build real
KVQuantizationConfig objects. Weights are presharded into the compiled folder
(save_sharded_checkpoint) so serving never needs the absolute quantized-checkpoint path the
compile used.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from neuronforge.core.atomic import atomic_dir, atomic_write_json
from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.config import (
    DEFAULT_INSTANCE,
    NeuronConfigSpec,
    build_neuron_config_spec,
    default_not_convert,
    model_facts,
    read_neuron_config,
    revalidate,
)
from neuronforge.neuron.nxdi_api import NxdiApi, load_nxdi
from neuronforge.neuron.versions import DEFAULT_SDK, neuron_sdk

QUANTIZED_DIR = "quantized_checkpoint"
RECORD_FILE = "neuronforge_compile.json"
HF_FILES = ("config.json", "generation_config.json")
FP8_ENV = {"XLA_HANDLE_SPECIAL_SCALAR": "1", "UNSAFE_FP8FNCAST": "1"}


class CompileOptions(BaseModel):
    """What `neuronforge compile` needs; `neuron_config` (a neuron_config.json) replaces the config flags."""

    model_config = ConfigDict(extra="forbid")

    model: str
    out: Path
    dtype: str = "int8"
    tp: int | None = None
    kv: str = "fp8"
    instance: str = DEFAULT_INSTANCE
    qtype: str = "per_channel_symmetric"
    batch_size: int = 1
    seq_len: int = 1024
    n_positions: int | None = None
    not_convert: Path | None = None
    neuron_config: Path | None = None
    sdk: str = DEFAULT_SDK
    smoke_prompt: str = "The capital of France is"
    smoke_tokens: int = 16
    overwrite: bool = False


def print_notices(notices: list[str]) -> None:
    """Show what the config builder decided for the user (tp chosen, lm_head added, GQA->MHA)."""
    for notice in notices:
        err_console.print(f"[yellow]notice:[/] {notice}", highlight=False)


def compile_env(spec: NeuronConfigSpec) -> dict[str, str]:
    """Environment for the compile: fp8 cast flags for e4m3 weights or an fp8 KV cache, and the target family."""
    env = {"NEURON_PLATFORM_TARGET_OVERRIDE": spec.target_instance.split(".")[1]}
    if spec.weights_fp8_e4m3 or spec.kv_cache_quant:
        env.update(FP8_ENV)
    return env


@contextmanager
def scoped_env(env: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore the previous values."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def nxdi_neuron_config_kwargs(api: NxdiApi, spec: NeuronConfigSpec) -> dict[str, Any]:
    """NeuronConfig(**kwargs) arguments, with kv_quant_config as a real KVQuantizationConfig object."""
    import torch

    kwargs = spec.neuron_config_kwargs()
    kv = kwargs.pop("kv_quant_config")
    if kv is not None:
        kwargs["kv_quant_config"] = api.KVQuantizationConfig(
            k_quant_method=api.QuantizationType(kv["k_quant_method"]),
            v_quant_method=api.QuantizationType(kv["v_quant_method"]),
            quant_dtype=getattr(torch, kv["quant_dtype"]),
            direct_cast=kv["direct_cast"],
        )
    kwargs["save_sharded_checkpoint"] = True
    return kwargs


def resolve_spec(options: CompileOptions, model_dir: Path) -> NeuronConfigSpec:
    """The spec from --neuron-config (checked again against this model) or from the flags."""
    if options.neuron_config is not None:
        return revalidate(read_neuron_config(options.neuron_config), model_dir)
    return build_neuron_config_spec(
        model_dir,
        dtype=options.dtype,
        modules_to_not_convert=default_not_convert(model_dir, options.not_convert),
        tp_degree=options.tp,
        instance=options.instance,
        kv=options.kv,
        quantization_type=options.qtype,
        batch_size=options.batch_size,
        seq_len=options.seq_len,
        n_positions=options.n_positions,
        sdk=options.sdk,
    )


def smoke_generate(api: NxdiApi, model: Any, model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy-generate a few tokens through NxDI's HF adapter; an empty completion is a failed compile."""
    from neuronforge.hf.folders import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    inputs = tokenizer(prompt, return_tensors="pt")
    adapter = api.HuggingFaceGenerationAdapter(model)
    output = adapter.generate(
        inputs.input_ids, attention_mask=inputs.attention_mask, max_new_tokens=max_new_tokens, do_sample=False
    )
    new_tokens = output[0, inputs.input_ids.shape[1] :]
    if new_tokens.numel() == 0:
        raise NeuronforgeError(
            "the compiled model generated no tokens in the smoke test", "check the compile log above"
        )
    return tokenizer.decode(new_tokens, skip_special_tokens=True)


def compile_model(options: CompileOptions) -> Path:
    """Quantize (NxD), compile, load and smoke-test; the compiled folder appears only if all of it succeeds."""
    from neuronforge.hf.folders import load_tokenizer, validate_hf_folder

    if Path(options.out).exists() and not options.overwrite:
        raise NeuronforgeError(f"{options.out} already exists", "choose another --out, or pass --overwrite")
    model_dir = validate_hf_folder(Path(options.model))
    api = load_nxdi(model_facts(model_dir).model_type, options.sdk)  # fail fast off a Neuron host
    spec = resolve_spec(options, model_dir)
    print_notices(spec.notices)
    env = compile_env(spec)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 3)
        return result

    final_quantized = Path(options.out).resolve() / QUANTIZED_DIR
    with atomic_dir(options.out, overwrite=options.overwrite) as tmp, scoped_env(env):
        quantized_dir = tmp / QUANTIZED_DIR
        quantized_dir.mkdir()  # NxDI writes a pickle instead of safetensors if the directory is missing
        spec = spec.model_copy(update={"quantized_checkpoints_path": str(quantized_dir)})
        neuron_config = api.NeuronConfig(**nxdi_neuron_config_kwargs(api, spec))
        config = api.config_class(neuron_config, load_config=api.load_pretrained_config(str(model_dir)))
        timed("quantize_s", api.model_class.save_quantized_state_dict, str(model_dir), config)
        model = api.model_class(str(model_dir), config)
        timed("compile_s", model.compile, str(tmp))
        timed("load_s", model.load, str(tmp))
        completion = timed("smoke_s", smoke_generate, api, model, model_dir, options.smoke_prompt, options.smoke_tokens)
        for name in HF_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        load_tokenizer(model_dir).save_pretrained(tmp)
        atomic_write_json(
            tmp / RECORD_FILE,
            {
                "source_model": str(model_dir),
                "sdk": spec.sdk,
                "pins": neuron_sdk(spec.sdk).pins(),
                "spec": spec.model_copy(update={"quantized_checkpoints_path": str(final_quantized)}).model_dump(
                    mode="json"
                ),
                "notices": spec.notices,
                "env": env,
                "smoke": {"prompt": options.smoke_prompt, "completion": completion},
                "timings": timings,
            },
        )
    return options.out
