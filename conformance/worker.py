"""One conformance case, run under transformers 4.57.6 with the REAL NxD/NxDI and vllm-neuron sources (see check.py).

argv: a JSON object {"model", "family", "sdk", "batch_size", "nxdi", "nxd", "vllm_neuron", "reference", "work"}.
Prints one JSON line: the steps passed (name -> detail) and, on the first failure, the step and its error.
"""

from __future__ import annotations

import ast
import json
import math
import sys
import tempfile
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

LOADER = "vllm_neuron/worker/neuronx_distributed_model_loader.py"


def vllm_neuron_default_config(source: Path, max_num_seqs: int, seq_len: int, tp: int) -> dict[str, Any]:
    """vllm-neuron's own `_get_default_neuron_config` (what it compiles for a model it compiles itself), executed from
    its source: the module imports vllm, which this venv lacks, so only the function is taken out with ast."""
    tree = ast.parse((source / LOADER).read_text())
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_get_default_neuron_config")
    namespace: dict[str, Any] = {
        "OnDeviceSamplingConfig": lambda **kw: kw, "ceil": math.ceil, "logger": SimpleNamespace(debug=print),
        "TORCH_DTYPE_TO_NEURON_AMP": {"bfloat16": "bfloat16"},
    }  # fmt: skip
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(source / LOADER), "exec"), namespace)
    return namespace["_get_default_neuron_config"](
        SimpleNamespace(dtype="bfloat16"),
        SimpleNamespace(block_size=seq_len, num_gpu_blocks_override=None, enable_prefix_caching=False),
        SimpleNamespace(tensor_parallel_size=tp),
        SimpleNamespace(chunked_prefill_enabled=False, max_num_seqs=max_num_seqs, max_model_len=seq_len,
                        max_num_batched_tokens=seq_len),
        None, None,
    )  # fmt: skip


def run(case: dict[str, Any], steps: dict[str, str]) -> None:
    import device_stubs
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    model = Path(case["model"])
    steps["transformers"] = transformers.__version__

    tokenizer = AutoTokenizer.from_pretrained(model)
    reference = case["reference"]
    ids = [tokenizer(text).input_ids for text in reference["texts"]]
    chat = tokenizer.apply_chat_template(reference["chat"], tokenize=False) if tokenizer.chat_template else None
    assert ids == reference["ids"] and chat == reference["rendered"], "token ids or chat template differ from v5's"
    steps["tokenizer"] = f"{type(tokenizer).__name__}: ids and chat template as transformers 5"

    from neuronforge.neuron.nxdi.compile import make_loadable, nxdi_neuron_config_kwargs
    from neuronforge.neuron.nxdi.config import build_neuron_config_spec
    from neuronforge.neuron.nxdi.runtime import load_nxdi

    spec = build_neuron_config_spec(model, sdk=case["sdk"], batch_size=case["batch_size"], seq_len=128, tp_degree=1)
    steps["neuron-config"] = f"tp {spec.tp_degree}, batch {spec.batch_size}, not_convert {spec.modules_to_not_convert}"

    api = load_nxdi(spec_model_type(model), spec.sdk)  # the real modules, with only the device packages stubbed
    device_stubs.strict()  # from here on, a call into a device package is reported, never faked
    work = Path(tempfile.mkdtemp(dir=case["work"]))
    quantized = work / "quantized_checkpoint"
    quantized.mkdir()
    spec = spec.model_copy(update={"quantized_checkpoints_path": str(quantized)})
    neuron_config = api.NeuronConfig(**nxdi_neuron_config_kwargs(api, spec))
    config = api.config_class(neuron_config, load_config=api.load_pretrained_config(str(model)))
    rope = config.rope_theta
    assert rope == reference["rope_theta"], f"NxDI reads rope_theta {rope}, transformers 5 {reference['rope_theta']}"
    steps["nxdi-config"] = f"{type(config).__name__}, rope_theta {rope}"

    api.model_class.save_quantized_state_dict(str(model), config)
    state = load_file(next(quantized.glob("*.safetensors")))
    exported = {k: v for f in sorted(model.glob("*.safetensors")) for k, v in load_file(f).items()}
    exact = total = 0
    for key, codes in state.items():
        if key.endswith(".scale") or codes.dtype not in (torch.int8, torch.float8_e4m3fn):
            continue
        name = key.removesuffix(".weight")
        scale = state[f"{name}.scale"]
        total += 1
        original = exported.get(f"model.{key}", exported.get(key))
        exact += bool(torch.equal((codes.float() * scale.float()).to(torch.bfloat16), original.to(torch.bfloat16)))
    assert total and exact == total, f"NxD's codes*scale reproduce {exact}/{total} exported Linears"
    steps["nxd-quantize"] = f"{exact}/{total} Linears: NxD's codes x scale == our export (bit-exact)"

    compiled = work / "compiled"
    config.save(str(compiled))
    make_loadable(api, compiled, spec)
    steps["config-save"] = "neuron_config.json written by NxDI, rewritten loadable, re-read by NxDI"

    reloaded = api.model_class(str(compiled))  # what vllm-neuron's loader does with NEURON_COMPILED_ARTIFACTS (:216)
    got = reloaded.config.neuron_config
    keys = ("batch_size", "ctx_batch_size", "tkg_batch_size", "is_continuous_batching")
    vllm = vllm_neuron_default_config(Path(case["vllm_neuron"]), spec.batch_size, spec.seq_len, spec.tp_degree)
    expected = {"batch_size": vllm["batch_size"], "ctx_batch_size": vllm["ctx_batch_size"],
                "tkg_batch_size": vllm["batch_size"], "is_continuous_batching": vllm["is_continuous_batching"]}  # fmt: skip
    assert {k: getattr(got, k) for k in keys} == expected, f"batching {got.__dict__} vs vllm-neuron's {expected}"
    kv = got.kv_quant_config
    steps["vllm-reload"] = (
        f"{type(reloaded).__name__}(compiled): batching as vllm-neuron compiles max_num_seqs={spec.batch_size}; "
        f"KV {None if kv is None else (str(kv.quant_dtype), kv.direct_cast)}"
    )

    built = api.model_class(str(model), config)
    try:
        built.compile(str(work / "out"))
    except device_stubs.DeviceStepReached as stop:
        frames = [f for f in traceback.extract_tb(stop.__traceback__) if "device_stubs" not in f.filename]
        where = frames[-1]
        steps["construct"] = (
            f"{type(built).__name__} built; stops at the device step {stop} "
            f"({Path(where.filename).name}:{where.lineno} {where.name})"
        )
        return
    raise AssertionError("compile() finished without reaching a device package")


def spec_model_type(model: Path) -> str:
    return json.loads((model / "config.json").read_text())["model_type"]


def main() -> None:
    case = json.loads(sys.argv[1])
    sys.path[:0] = [str(Path(__file__).parent), f"{case['nxdi']}/src", f"{case['nxd']}/src"]
    import device_stubs

    device_stubs.install()
    steps: dict[str, str] = {}
    try:
        run(case, steps)
        print(json.dumps({"ok": True, "steps": steps}))
    except Exception as exc:  # the check reports any failure as data
        where = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{type(exc).__name__}: {exc} ({Path(where.filename).name}:{where.lineno})"
        print(json.dumps({"ok": False, "steps": steps, "error": error[:600]}))


if __name__ == "__main__":
    main()
