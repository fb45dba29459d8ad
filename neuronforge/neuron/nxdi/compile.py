"""Stage 2: quantize the stage-1 checkpoint with NxD and compile it; on a Neuron host also load and smoke-test it.

The NeuronConfig is built in Python with a real KVQuantizationConfig. NxDI then writes the config to
`neuron_config.json` in a form its own loader cannot read back (Enum members become dicts, nxdi_json.py), so after
compiling we rewrite kv_quant_config in a form it can and re-read it with NxDI's loader, as vllm-neuron will.
Weights are presharded into the compiled folder (save_sharded_checkpoint) so serving never needs the absolute
quantized-checkpoint path the compile used. `compile_only` stops after compile (trace + preshard), which needs no
NeuronCores (application_base.py:292-315); load() runs torch.jit.load and nxd_model.initialize on the device
(:317-414), so without compile_only the host must have tp_degree NeuronCores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from pydantic import AliasChoices, ConfigDict, Field

from neuronforge.core.atomic import atomic_write_json
from neuronforge.core.knobs import LocalPath, PathText, TpDegree
from neuronforge.core.outputs import check_apart, check_replaceable, output_dir
from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError, expect
from neuronforge.hf.config_compat import TOKENIZER_CONFIG_FILE, make_tokenizer_portable, rope_problem, tokenizer_problem
from neuronforge.hf.folders import load_tokenizer, read_config, validate_hf_folder
from neuronforge.neuron.host import host_memory_bytes, host_neuron_cores
from neuronforge.neuron.nxdi.config import (
    NeuronConfigOptions,
    NeuronConfigSpec,
    model_facts,
    neuron_config,
    read_neuron_config,
    revalidate,
)
from neuronforge.neuron.nxdi.config_json import kv_settings, loadable_kv_quant_config
from neuronforge.neuron.nxdi.runtime import NxdiApi, check_installed_sdk, host_sdk, installed_nxdi_version, load_nxdi
from neuronforge.neuron.nxdi.versions import neuron_sdk
from neuronforge.neuron.planner.weight_memory import checkpoint_shapes

QUANTIZED_DIR = "quantized_checkpoint"
RECORD_FILE = "neuronforge_compile.json"
HF_FILES = ("config.json", "generation_config.json")
FP8_ENV = {"XLA_HANDLE_SPECIAL_SCALAR": "1", "UNSAFE_FP8FNCAST": "1"}
# inf2 and trn1 are both NeuronCore-v2 (arch v2). NxD's `hardware` enum maps "inf2" to TRN1 only when the variable is
# unset at import (NxD utils/utils.py:6-26: CUSTOM takes the variable's value), and NxDI compares the platform with
# "trn1" (attention_base.py:104,112). NxDI commit 94584dc (PR #106, run on inf2.48xlarge, SDK 2.28) sets "trn1" for
# inf2: "the NKI/MLA compiler recognizes 'trn1' but not the literal 'inf2'".
PLATFORM_TARGET = "trn1"
# Host RAM for NxD's quantize step: NxDI loads the HF model with no dtype (modeling_llama.py:1450-1451), i.e. fp32
# under transformers 4.57 (modeling_utils.py:1287-1293), then quantizes it in place: 4 B/param + 1 B/param of codes,
# plus a margin for Python, torch and the compiler (an estimate; not measured on a device).
HOST_BYTES_PER_PARAM = 5
HOST_MARGIN_BYTES = 2 * 2**30
# Compile hosts to suggest, with their RAM in GiB (AWS instance pages): trn1 compiles and loads; r7i cross-compiles.
COMPILE_HOSTS = (("ml.trn1.2xlarge", 32), ("ml.trn1.32xlarge", 512))
CROSS_COMPILE_HOSTS = (("ml.r7i.4xlarge", 128), ("ml.r7i.8xlarge", 256), ("ml.r7i.16xlarge", 512))


class CompileOptions(NeuronConfigOptions):
    """What `neuronforge compile` needs; `neuron_config` (a neuron_config.json) replaces the deployment fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: PathText = Field(description="stage-1 output folder (fake-quantized bf16 checkpoint)")
    out: LocalPath = Field(description="compiled folder to create (model.pt, presharded weights, ...)")
    # `tp` was this field's name before 0.x: old configs still validate.
    tp_degree: TpDegree = Field(None, validation_alias=AliasChoices("tp_degree", "tp"))
    neuron_config: LocalPath | None = Field(
        None, description="a neuron_config.json from `neuron-config`; replaces the deployment fields"
    )
    smoke_prompt: str = "The capital of France is"
    smoke_tokens: int = Field(16, ge=1)
    overwrite: bool = Field(False, description="replace the output if it exists")
    # quantize + compile + preshard only: no NeuronCores needed (CPU cross-compile)
    compile_only: bool = Field(
        False,
        description="quantize, compile and preshard only: no load or smoke test, so no NeuronCores are needed "
        "(CPU cross-compile)",
    )


def print_notices(notices: list[str]) -> None:
    """Show what the config builder decided for the user (tp chosen, lm_head added, GQA->MHA)."""
    for notice in notices:
        err_console.print(f"[yellow]notice:[/] {notice}", highlight=False)


def compile_env(spec: NeuronConfigSpec) -> dict[str, str]:
    """Environment for the compile: fp8 cast flags for e4m3 weights or an fp8 KV cache, and the target family."""
    env = {"NEURON_PLATFORM_TARGET_OVERRIDE": PLATFORM_TARGET}
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
    return neuron_config(
        model_dir,
        NeuronConfigOptions(
            **{**options.model_dump(include=set(NeuronConfigOptions.model_fields)), "sdk": options.sdk or host_sdk()}
        ),
    )


def smoke_generate(api: NxdiApi, model: Any, model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """Greedy-generate a few tokens through NxDI's HF adapter; an empty completion is a failed compile."""
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
    return cast(str, tokenizer.decode(new_tokens, skip_special_tokens=True))  # one sequence: one string


def check_host_cores(tp_degree: int, cores: int) -> None:
    """Loading needs tp_degree NeuronCores on this host; say so before any work instead of failing in load()."""
    if cores >= tp_degree:
        return
    where = "this host has no NeuronCores (no /dev/neuron*)" if cores == 0 else f"this host has {cores} NeuronCores"
    raise NeuronforgeError(
        f"compile loads the model on tp_degree={tp_degree} NeuronCores to smoke-test it, but {where}",
        "pass --compile-only to quantize and compile without loading (a CPU cross-compile), or run on an inf2/trn1 "
        f"host with >= {tp_degree} NeuronCores" + (f", or use --tp-degree <= {cores}" if cores else ""),
    )


def host_bytes_needed(model_dir: Path) -> int:
    """RAM NxD's quantize step needs for this checkpoint (see HOST_BYTES_PER_PARAM)."""
    params = sum(math.prod(shape) for shape in checkpoint_shapes(model_dir).values())
    return HOST_BYTES_PER_PARAM * params + HOST_MARGIN_BYTES


def check_host_memory(needed: int, available: int | None, compile_only: bool) -> None:
    """Refuse a compile that would exhaust host RAM while NxDI holds the model in fp32, naming a host that fits."""
    if available is None or needed <= available:
        return
    gib = 2**30
    hosts = [*COMPILE_HOSTS, *(CROSS_COMPILE_HOSTS if compile_only else ())]
    fits = [f"{name} ({ram} GiB)" for name, ram in hosts if ram * gib >= needed]
    cross = [f"{name} ({ram} GiB)" for name, ram in CROSS_COMPILE_HOSTS if ram * gib >= needed]
    suggestion = f"compile on {fits[0]}" if fits else "compile on a larger host"
    if not compile_only and cross:
        suggestion += (
            f", or cross-compile with --compile-only on {cross[0]} (`neuronforge sagemaker compile --processing`)"
        )
    raise NeuronforgeError(
        f"NxDI loads the model in fp32 to quantize it: about {needed / gib:.0f} GiB of host RAM, this host has "
        f"{available / gib:.0f} GiB",
        suggestion,
    )


def tokenizer_config_problem(model_dir: Path) -> str | None:
    """Why transformers 4.57 (this host's, the endpoint's) could not load the model's tokenizer (or None)."""

    path = model_dir / TOKENIZER_CONFIG_FILE
    return tokenizer_problem(json.loads(path.read_text())) if path.is_file() else None


def make_loadable(api: NxdiApi, compiled: Path, spec: NeuronConfigSpec) -> None:
    """Rewrite kv_quant_config in compiled/neuron_config.json so NxDI's loader accepts it, then prove it does.

    The proof is NxDI's own `config_class.load(path)`, the call `NeuronLlamaForCausalLM(path)` makes when vllm-neuron
    loads precompiled artifacts (application_base.py:82-83); its KV settings must equal the spec's.
    """
    path = compiled / "neuron_config.json"
    saved = json.loads(path.read_text())
    written = saved["neuron_config"].get("kv_quant_config")
    if written is not None:
        defaults = kv_settings(api.KVQuantizationConfig())
        saved["neuron_config"]["kv_quant_config"] = loadable_kv_quant_config(written, defaults)
        path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")  # NxDI's own formatting (config.py:903)
    try:
        reloaded = api.config_class.load(str(compiled)).neuron_config.kv_quant_config
    except (AssertionError, TypeError, ValueError) as exc:
        raise NeuronforgeError(
            f"NxDI cannot re-read the neuron_config.json it wrote ({type(exc).__name__}: {exc}), so vLLM could not "
            "load this model",
            "report this with the file attached; --kv bf16 avoids kv_quant_config",
        ) from None
    expected = None if spec.kv_quant_config is None else spec.kv_quant_config.model_dump()
    got = None if reloaded is None else kv_settings(reloaded)
    if got != expected:
        raise NeuronforgeError(
            f"NxDI re-reads kv_quant_config as {got}, but the compile used {expected}",
            "report this with compiled/neuron_config.json attached; --kv bf16 avoids kv_quant_config",
        )


def compile_model(options: CompileOptions) -> Path:
    """Quantize (NxD) and compile; unless compile_only, load and smoke-test. The folder appears only on success."""
    options = expect(options, CompileOptions, "nf.compile")
    check_apart(options.out, {"--model": options.model, "--neuron-config": options.neuron_config})
    check_replaceable(Path(options.out), overwrite=options.overwrite)
    model_dir = validate_hf_folder(Path(options.model))
    if problem := rope_problem(read_config(model_dir)):
        raise NeuronforgeError(
            f"{model_dir}/config.json: {problem}",
            "run `neuronforge quantize` on it (stage 1 writes a config.json both read the same), or add the "
            "top-level rope_theta and rope_scaling that transformers 4.x writes",
        )
    if problem := tokenizer_config_problem(model_dir):
        raise NeuronforgeError(
            f"{model_dir}/tokenizer_config.json: {problem}",
            "run `neuronforge quantize` on it (stage 1 writes a tokenizer both read the same), or set "
            '"tokenizer_class" to "PreTrainedTokenizerFast" in a copy of the folder',
        )
    spec = resolve_spec(options, model_dir)  # runs anywhere: a bad config fails before the Neuron checks
    api = load_nxdi(model_facts(model_dir).model_type, spec.sdk)  # fail fast off a Neuron host
    installed = installed_nxdi_version()
    check_installed_sdk(spec.sdk, installed)
    if not options.compile_only:
        check_host_cores(spec.tp_degree, host_neuron_cores())
    check_host_memory(host_bytes_needed(model_dir), host_memory_bytes(), options.compile_only)
    print_notices(spec.notices)
    env = compile_env(spec)
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 3)
        return result

    smoke = None
    with (
        output_dir(Path(options.out), overwrite=options.overwrite) as tmp,
        tempfile.TemporaryDirectory(prefix="nf-quantized-") as scratch,
        scoped_env(env),
    ):
        # R6: NxD's quantized checkpoint (int8/fp8 codes + fp32 other tensors) only feeds the presharding in compile();
        # load() and vLLM read weights/tp*_sharded_checkpoint.safetensors (application_base.py:388-398), so it lives
        # in $TMPDIR (the job's storage volume in SageMaker jobs) and is deleted with it.
        quantized_dir = Path(scratch) / QUANTIZED_DIR
        quantized_dir.mkdir()  # NxDI writes a pickle instead of safetensors if the directory is missing
        spec = spec.model_copy(update={"quantized_checkpoints_path": str(quantized_dir)})
        neuron_config = api.NeuronConfig(**nxdi_neuron_config_kwargs(api, spec))
        config = api.config_class(neuron_config, load_config=api.load_pretrained_config(str(model_dir)))
        timed("quantize_s", api.model_class.save_quantized_state_dict, str(model_dir), config)
        model = api.model_class(str(model_dir), config)
        timed("compile_s", model.compile, str(tmp))
        make_loadable(api, tmp, spec)
        if not options.compile_only:
            timed("load_s", model.load, str(tmp))
            completion = timed(
                "smoke_s", smoke_generate, api, model, model_dir, options.smoke_prompt, options.smoke_tokens
            )
            smoke = {"prompt": options.smoke_prompt, "completion": completion}
        for name in HF_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        load_tokenizer(model_dir).save_pretrained(tmp)
        make_tokenizer_portable(tmp)  # saved by transformers 5 when compile runs there (tests, stand-in)
        atomic_write_json(
            tmp / RECORD_FILE,
            {
                "source_model": str(model_dir),
                "sdk": spec.sdk,
                "pins": neuron_sdk(spec.sdk).pins(),
                "installed": {"neuronx-distributed-inference": installed},
                "spec": spec.model_dump(mode="json"),  # quantized_checkpoints_path: deleted after presharding
                "notices": spec.notices,
                "env": env,
                "compile_only": options.compile_only,
                "smoke": smoke,
                "timings": timings,
            },
        )
    return options.out
