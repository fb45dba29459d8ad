"""Host memory and time of stage 1 and the emulator at two model sizes, next to NxDI's own host quantization.

Builds random-init Llama checkpoints (TinyLlama-like shapes, untied lm_head, bf16, 3 shards, SmolLM2's
tokenizer) once in the cache (`$NEURONFORGE_CACHE/bench`, never in the repo), then runs every stage in a
fresh process and prints, per size and stage: peak RSS, bytes per parameter, wall time and seconds per 1e9
parameters. Two anchors, in the same rounds: `nxdi` is what a user would otherwise run, NxDI's own host
quantization (`save_quantized_state_dict`, replayed step by step: see `nxdi_quantized_state_dict`), and
`nxd-math` is its floor, the same load and save around NxD's quantizer math alone (our bit-exact copy, no
torch quantized modules). The stages run in turn `--repeat` times (each after `sync`, so no stage pays for the
previous one's disk writes): tables show the median time and the largest peak, and the time target is judged
on the median of the per-round quantize/nxdi ratios (quantize/nxd-math is printed beside it). Then the
targets of issue 14 and, from a linear fit of peak RSS over the two sizes, the largest model each common GPU
host can take. Not a test: numbers depend on the machine.

    python benchmarks/bench_scale.py                      # 0.3b and 1.2b: nxdi, nxd-math, quantize (RTN), emulate; 3 rounds
    python benchmarks/bench_scale.py --sizes 0.3b --stages nxdi,quantize,autoround --repeat 1
    python benchmarks/bench_scale.py --sizes 1.2b --stages nxdi,quantize --load 0,2  # quiet, then beside 2 spinners
    python benchmarks/bench_scale.py --device cuda --stages nxdi,quantize,autoround,emulate --repeat 1  # GPU host

Each stage's peak RSS is its own process's (VmHWM): `ru_maxrss` of a child started by a large driver process
reports the driver's high-water mark. On a GPU the GPU's peak allocation is measured too, and every row says
which device ran it (`--device`, default auto).

Needs about 3x the largest checkpoint (2.4 GB for 1.2b) of free RAM and 10 GB of disk.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# TinyLlama-like shapes; with SmolLM2's 49152-token vocabulary and an untied head: 0.33e9 and 1.17e9 parameters.
SHAPES = {
    "0.3b": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=20, num_attention_heads=16),
    "1.2b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32),
}
SHARDS = 3
STAGES = ("nxdi", "nxd-math", "quantize", "autoround", "emulate")
ANCHORS = ("nxdi", "nxd-math")  # what quantize's time is compared with; the target is on the first
TARGETED = ("quantize", "emulate")  # the stages issue 14 sets memory targets for
TIME_TARGET = 1.0  # quantize / nxdi time, quiet or loaded (issue 31; issue 14 had 1.5)
FLAT_WITHIN = 0.15  # bytes/param above imports may change this much between the sizes (the issue names no bound)
CALIBRATION = dict(nsamples=2, calib_seq_len=32)  # the measurement settings
# Host RAM of common GPU instances (AWS instance-type pages), and what is left to the process.
HOSTS = {"g6e.xlarge": 32, "g6e.2xlarge": 64, "g5.12xlarge": 192, "p4d.24xlarge": 1152}
USABLE_RAM = 0.85  # OS, page cache and the CUDA context take the rest
GB = 1e9


def checkpoint(size: str) -> Path:
    """The random-init checkpoint for `size`, built once (tensor by tensor, never the whole model in memory)."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from neuronforge.assets.models import fetch_or_resolve
    from neuronforge.core.cache import cache_dir

    folder = cache_dir() / "bench" / f"llama-{size}-random"
    if (folder / "config.json").exists():
        return folder
    tokenizer_dir = fetch_or_resolve("smollm2")  # its tokenizer
    config = LlamaConfig(
        vocab_size=49152, num_key_value_heads=4, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        max_position_embeddings=2048, **SHAPES[size],
    )  # fmt: skip
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in LlamaForCausalLM(config).state_dict().items()}
    total = sum(torch.Size(s).numel() * 2 for s in shapes.values())
    generator = torch.Generator().manual_seed(0)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None))
    shards: list[dict[str, torch.Tensor]] = [{}]
    for key, shape in shapes.items():
        if sum(t.numel() * 2 for t in shards[-1].values()) >= total / SHARDS:
            shards.append({})
        if key.endswith("norm.weight"):
            shards[-1][key] = torch.ones(shape, dtype=torch.bfloat16)
        else:
            shards[-1][key] = torch.empty(shape).normal_(0.0, 0.02, generator=generator).to(torch.bfloat16)
    weight_map = {}
    for index, tensors in enumerate(shards, start=1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, tmp / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    del shards
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config.dtype = torch.bfloat16
    config.save_pretrained(tmp)
    for item in tokenizer_dir.iterdir():
        if item.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy2(item, tmp / item.name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
    return folder


def parameters(folder: Path) -> int:
    import math

    from safetensors import safe_open

    count = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as handle:
            count += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return count


def nxdi_quantized_state_dict(folder: Path) -> dict:
    """The int8 per-channel state dict NxDI's `save_quantized_state_dict` builds from `folder`, by NxD's own steps.

    NxD is not on PyPI, but what it runs on the host is torch (aws-neuron/neuronx-distributed-inference
    src/neuronx_distributed_inference/models/application_base.py:747-792 and models/model_base.py:3193-3201;
    aws-neuron/neuronx-distributed src/neuronx_distributed/quantization/quantization_utils.py:92-124 and 210-235,
    quantization/observer.py): `load_hf_model` (LlamaForCausalLM.from_pretrained without a dtype: fp32 under the
    transformers 4.57 NxDI pins), `quantize_pytorch_model_per_channel_symmetric` (torch's `quantize_dynamic`
    turning every nn.Linear, lm_head included, into a dynamic-quantized Linear with NxD's abs-max observer), then
    the model's and lm_head's state dicts with each packed weight unpacked into int8 codes and fp32 scales.
    """
    import warnings

    import torch
    import torch.ao.nn.quantized.dynamic as nnqd
    from torch.ao.quantization import QConfig, default_observer, quantize_dynamic
    from torch.ao.quantization.observer import UniformQuantizationObserverBase
    from transformers import AutoModelForCausalLM

    class PerChannelAbsMaxObserver(UniformQuantizationObserverBase):  # NxD's quantization/observer.py, condensed
        def __init__(self, ch_axis: int = 0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, **kwargs):
            super().__init__(dtype=dtype, qscheme=qscheme, eps=torch.finfo(torch.float32).eps, **kwargs)
            self.ch_axis = ch_axis
            self.register_buffer("max_val", torch.tensor([]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.detach().transpose(0, self.ch_axis).to(self.max_val.dtype).flatten(start_dim=1)
            self.max_val.resize_(rows.shape[0], 1).copy_(torch.amax(torch.abs(rows), dim=1, keepdim=True))
            return x

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            scale = torch.max(self.max_val / float(self.quant_max), self.eps)
            return scale.squeeze(1), torch.zeros(scale.shape, dtype=torch.int64).squeeze(1)

    def unpack(state: dict) -> dict:  # NxD's convert_qint8_to_int8_state_dict (no Linear here has a bias)
        for prefix in [k.removesuffix("_packed_params.dtype") for k in state if k.endswith("_packed_params.dtype")]:
            packed = state.pop(prefix + "_packed_params._packed_params")[0]
            state[prefix + "weight"] = torch.int_repr(packed)
            state[prefix + "scale"] = packed.q_per_channel_scales().to(torch.float32).view(-1, 1)
            for key in ("_packed_params.dtype", "zero_point"):
                state.pop(prefix + key)
        return state

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    weight = PerChannelAbsMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated (moving to torchao); NxD still calls it
        warnings.simplefilter("ignore")
        quantize_dynamic(
            model,
            qconfig_spec={torch.nn.Linear: QConfig(activation=default_observer, weight=weight)},
            mapping={torch.nn.Linear: nnqd.Linear},
            dtype=torch.qint8,
            inplace=True,
        )
        state = unpack(model.model.state_dict())
        state.update({f"lm_head.{k}": v for k, v in unpack(model.lm_head.state_dict()).items()})
    return {k: v for k, v in state.items() if v is not None}  # NxDI's prune_state_dict


def run_stage(stage: str, folder: Path, work: Path, device: str = "auto") -> None:
    """One stage, in this (fresh) process."""
    if stage == "nxdi":  # saved as NxDI does (modules/checkpoint.py:171-183: HF's sharded safetensors, 10 GB shards)
        from huggingface_hub import save_torch_state_dict

        (work / "nxdi").mkdir()
        save_torch_state_dict(
            nxdi_quantized_state_dict(folder), work / "nxdi", filename_pattern="model{suffix}.safetensors",
            max_shard_size="10GB",
        )  # fmt: skip
    elif stage == "nxd-math":
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM

        from neuronforge.neuron.numerics.grid import quantize_weight
        from neuronforge.neuron.numerics.qlinear import quantizable_linears

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)  # NxDI's load_hf_model
        state = {}
        for name, linear in quantizable_linears(model).items():  # NxD's codes and scales, module by module
            state[f"{name}.weight"], state[f"{name}.scale"] = quantize_weight(linear.weight.detach())
            linear.weight = None
        state.update({k: v for k, v in model.state_dict().items() if k not in state and v is not None})
        save_file({k: v.contiguous() for k, v in state.items()}, work / "nxd-math.safetensors")
    elif stage in ("quantize", "autoround"):
        from neuronforge.pipeline.quantize.api import options_from, quantize

        extra = dict(iters=1) if stage == "autoround" else dict(autoround=False)
        quantize(options_from(model=str(folder), out=work / stage, device=device, **CALIBRATION, **extra))
    elif stage == "emulate":
        from neuronforge.assets.texts import embedded_splits, evaluation_windows
        from neuronforge.hf.folders import load_tokenizer
        from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated, perplexity

        text = next(iter(embedded_splits().evaluation.values()))
        windows = evaluation_windows(load_tokenizer(folder), text, 64, 256)
        emulated = load_emulated(folder, EmulationSpec(dtype="int8", kv="fp8"), device)  # type: ignore[arg-type]
        perplexity(emulated, windows)
    else:
        raise SystemExit(f"unknown stage {stage}")


def peak_rss() -> int:
    """This process's own peak RSS. (`ru_maxrss` is not: a child keeps its parent's high-water mark through
    fork and exec, so a stage run from a driver that built a checkpoint would report the driver's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(stage: str, folder: Path, work: Path, device: str = "auto") -> dict[str, float]:
    os.sync()  # the previous stage's dirty pages are written back on its account, not this one's
    start = time.perf_counter()
    command = [sys.executable, __file__, "--run-stage", stage, "--model", str(folder), "--work", str(work)]
    command += ["--device", device]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "wall_s": time.perf_counter() - start}


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(fixed bytes, bytes per parameter) through the two (params, peak) points."""
    (p0, m0), (p1, m1) = points[0], points[-1]
    slope = (m1 - m0) / (p1 - p0) if p1 != p0 else m1 / p1
    return m0 - slope * p0, slope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0.3b,1.2b")
    parser.add_argument("--stages", default="nxdi,nxd-math,quantize,emulate", help=f"any of {','.join(STAGES)}")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all stages (medians are reported)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument(
        "--load", default="0", help="busy background processes to measure beside, one pass per value (e.g. 0,2)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="quantize/emulate device")
    parser.add_argument("--run-stage", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_stage:
        import torch  # (what every stage imports before it holds any weight)
        from transformers import LlamaForCausalLM  # noqa: F401

        from neuronforge.core.devices import resolve_device

        imports_rss = peak_rss()
        device = resolve_device(args.device)
        run_stage(args.run_stage, args.model, args.work, args.device)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result = {
            "peak_rss": peak_rss(),
            "imports_rss": imports_rss,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "device": str(device) if args.run_stage not in ANCHORS else "cpu",
            "gpu_peak": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        }
        print(json.dumps(result))
        return

    stages = args.stages.split(",")
    everything = []
    for load in [int(n) for n in args.load.split(",")]:
        with busy_processes(load):
            runs = measure_rounds(args.sizes.split(","), stages, args.repeat, args.device, load)
        print(f"\n## background load: {load} busy process(es)")
        report(runs, stages)
        everything += runs
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


def measure_rounds(sizes: list[str], stages: list[str], repeat: int, device: str, load: int) -> list[dict]:
    """Every stage of every size, `repeat` rounds, each stage in a fresh process (printed as they finish)."""
    runs = []
    for size in sizes:
        folder = checkpoint(size)
        params = parameters(folder)
        for round_ in range(1, repeat + 1):
            with tempfile.TemporaryDirectory() as work:
                for stage in stages:
                    result = measure(stage, folder, Path(work), device)
                    runs.append({"size": size, "params": params, "stage": stage, "round": round_, "load": load})
                    runs[-1].update(result)
                    r = runs[-1]
                    print(
                        f"load {load} {size:>5} {params / 1e9:5.2f}e9 round {round_} {stage:<10} "
                        f"peak {r['peak_rss'] / GB:6.2f} GB "
                        f"{r['peak_rss'] / params:5.2f} B/param ({above_imports(r):4.2f} above imports) "
                        f"{r['wall_s']:7.1f} s "
                        f"{r['wall_s'] / params * 1e9:7.1f} s/1e9 cpu {r['cpu_s']:7.1f} s",
                        flush=True,
                    )
    return runs


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    """`count` processes spinning on a CPU each while the stages run: "other work on the machine", reproducibly
    (issue 31's target holds quiet or loaded)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def above_imports(run: dict) -> float:
    """Bytes per parameter of the peak above the process with torch and transformers imported (0.4 GB that no
    model size changes): the per-parameter cost, which the peak over all would hide at small sizes."""
    return (run["peak_rss"] - run["imports_rss"]) / run["params"]


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (size, stage): median wall and CPU time over the rounds, the largest peak RSS (and the imports'
    RSS of that round)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["size"], run["stage"]), []).append(run)
    rows = []
    for (size, stage), group in groups.items():
        top = max(group, key=lambda r: r["peak_rss"])
        rows.append(
            {
                "size": size,
                "stage": stage,
                "params": top["params"],
                "rounds": len(group),
                "peak_rss": top["peak_rss"],
                "imports_rss": top["imports_rss"],
                "wall_s": statistics.median(r["wall_s"] for r in group),
                "cpu_s": statistics.median(r["cpu_s"] for r in group),
                "device": top.get("device", "cpu"),
                "gpu_peak": max((r.get("gpu_peak") or 0 for r in group), default=0) or None,
            }
        )
    return rows


def time_ratios(runs: list[dict], size: str, clock: str, anchor: str = "nxdi") -> list[float]:
    """quantize / `anchor` time of each round at `size` (the stages of a round ran back to back)."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run["size"] == size:
            by_round.setdefault(run["round"], {})[run["stage"]] = run[clock]
    return [r["quantize"] / r[anchor] for r in by_round.values() if {"quantize", anchor} <= set(r)]


def report(runs: list[dict], stages: list[str]) -> None:
    rows = summarize(runs)
    print(
        "\n| size | params | stage | device | peak RSS | bytes/param | above imports | wall | s per 1e9 params | "
        "CPU time | GPU peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gpu_peak = f"{r['gpu_peak'] / GB:.2f} GB" if r["gpu_peak"] else "n/a"
        print(
            f"| {r['size']} | {r['params'] / 1e9:.2f}e9 | {r['stage']} | {r['device']} | {r['peak_rss'] / GB:.2f} GB | "
            f"{r['peak_rss'] / r['params']:.2f} | {above_imports(r):.2f} | {r['wall_s']:.1f} s | "
            f"{r['wall_s'] / r['params'] * 1e9:.0f} | "
            f"{r['cpu_s']:.1f} s | {gpu_peak} |"
        )
    print(f"(median time and largest peak over {max(r['rounds'] for r in rows)} round(s))")
    by = {(r["size"], r["stage"]): r for r in rows}
    largest = max(rows, key=lambda r: r["params"])["size"]
    print("\ntargets (largest size):")
    for stage in TARGETED:
        if (largest, stage) in by:
            r = by[(largest, stage)]
            limit = 2.5 * r["params"] + 1.5 * GB
            verdict = "ok" if r["peak_rss"] <= limit else "MISSED"
            print(
                f"  {stage} peak {r['peak_rss'] / GB:.2f} GB <= 2.5 B/param + 1.5 GB = {limit / GB:.2f} GB: {verdict}"
            )
    for anchor in ANCHORS:
        for clock in ("wall_s", "cpu_s"):  # CPU time is the fairer ratio on a shared machine
            ratios = time_ratios(runs, largest, clock, anchor)
            if ratios:
                ratio = statistics.median(ratios)
                verdict = (
                    f"target <= {TIME_TARGET}): {'ok' if ratio <= TIME_TARGET else 'MISSED'}"
                    if anchor == "nxdi"
                    else "its floor)"
                )
                print(
                    f"  quantize / {anchor} {clock[:-2]} time = {ratio:.2f} "
                    f"(median of {', '.join(f'{r:.2f}' for r in ratios)}; {verdict}"
                )
    sizes = sorted({r["size"] for r in rows}, key=lambda s: by[(s, stages[0])]["params"])
    for stage in stages:
        measured = [by[(s, stage)] for s in sizes if (s, stage) in by]
        if len(measured) > 1:
            overall = " -> ".join(f"{r['peak_rss'] / r['params']:.2f}" for r in measured)
            above = [above_imports(r) for r in measured]
            change = above[-1] / above[0] - 1
            verdict = ""
            if stage in TARGETED:
                verdict = f"; flat within {FLAT_WITHIN:.0%}: {'ok' if abs(change) <= FLAT_WITHIN else 'MISSED'}"
            print(
                f"  {stage} bytes/param {overall}; above imports {' -> '.join(f'{b:.2f}' for b in above)} "
                f"({change:+.0%}{verdict})"
            )

    if len(sizes) < 2:
        return
    print("\nlargest model by host RAM (linear fit of peak RSS over the two sizes; GPU memory is not the limit:")
    print("quantize keeps one decoder block on the GPU; emulate falls back to the CPU when the model does not fit)")
    print("| stage | fixed | bytes/param | " + " | ".join(f"{h} ({ram} GiB)" for h, ram in HOSTS.items()) + " |")
    print("|---|---|---|" + "---|" * len(HOSTS))
    for stage in stages:
        points = [(by[(s, stage)]["params"], by[(s, stage)]["peak_rss"]) for s in sizes]
        fixed, slope = fit(points)
        cells = [f"{max(0.0, (ram * 2**30 * USABLE_RAM - fixed) / slope) / 1e9:.0f}B" for ram in HOSTS.values()]
        print(f"| {stage} | {fixed / GB:.2f} GB | {slope:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
