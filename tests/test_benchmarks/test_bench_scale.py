"""benchmarks/bench_scale.py's verdicts: medians over rounds, the time ratio taken round by round."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(stage: str, round_: int, wall: float, peak: float, imports: float = 0.4e9) -> dict:
    return {"size": "1.2b", "params": 10**9, "stage": stage, "round": round_, "wall_s": wall, "cpu_s": 2 * wall,
            "peak_rss": peak, "imports_rss": imports}  # fmt: skip


def test_medians_over_rounds_and_the_largest_peak() -> None:
    runs = [_run("nxdi", 1, 10.0, 7e9), _run("nxdi", 2, 30.0, 7.2e9, 0.5e9), _run("nxdi", 3, 12.0, 7.1e9)]
    [row] = _bench().summarize(runs)
    assert (row["wall_s"], row["cpu_s"], row["peak_rss"], row["rounds"]) == (12.0, 24.0, 7.2e9, 3)
    assert row["imports_rss"] == 0.5e9 and _bench().above_imports(row) == 6.7  # the largest peak's own round


def test_time_ratio_pairs_the_stages_of_each_round() -> None:
    """A slow round slows both stages: each round's ratio is its own quantize over its own nxdi."""
    runs = [_run("nxdi", 1, 10.0, 0), _run("quantize", 1, 14.0, 0), _run("nxdi", 2, 20.0, 0)]
    runs += [_run("quantize", 2, 26.0, 0), _run("emulate", 2, 5.0, 0)]
    assert _bench().time_ratios(runs, "1.2b", "wall_s") == [1.4, 1.3]
    assert _bench().time_ratios(runs, "0.3b", "wall_s") == []


def test_the_time_ratio_is_taken_against_either_anchor() -> None:
    runs = [_run("nxdi", 1, 40.0, 0), _run("nxd-math", 1, 10.0, 0), _run("quantize", 1, 20.0, 0)]
    assert _bench().time_ratios(runs, "1.2b", "wall_s") == [0.5]
    assert _bench().time_ratios(runs, "1.2b", "wall_s", "nxd-math") == [2.0]


def test_the_nxdi_anchor_writes_nxd_s_codes_and_scales(make_tiny_llama, tmp_path: Path) -> None:
    """The anchor replays NxDI's save_quantized_state_dict through torch's quantized modules: every Linear, lm_head
    included, comes out as the int8 codes and fp32 scales our grid (NxD bit for bit) derives from the fp32 weight."""
    import torch
    from safetensors.torch import load_file

    from neuronforge.neuron.numerics.grid import quantize_weight

    src = make_tiny_llama("anchor-src", tie_word_embeddings=False)
    _bench().run_stage("nxdi", src, tmp_path)
    saved = load_file(tmp_path / "nxdi" / "model.safetensors")
    source = {key.removeprefix("model."): value for key, value in load_file(src / "model.safetensors").items()}
    assert set(saved) == set(source) | {k.replace(".weight", ".scale") for k in source if k.endswith("proj.weight")} | {
        "lm_head.scale"
    }  # NxDI's keys: the decoder's without "model.", lm_head's prefixed, a scale per Linear, nothing packed
    for key in [k for k in source if k.endswith("proj.weight") or k == "lm_head.weight"]:
        codes, scale = quantize_weight(source[key].float(), "int8")
        assert saved[key].dtype == torch.int8 and torch.equal(saved[key], codes), key
        assert torch.equal(saved[key.replace("weight", "scale")].flatten(), scale.flatten()), key
    for key in [k for k in source if "norm" in k or "embed" in k]:
        assert torch.equal(saved[key], source[key].float()), key  # left in fp32, as loaded


def test_flatness_is_judged_above_the_imports(capsys) -> None:
    """A fixed 0.4 GB of imports makes every peak/param fall with size; the verdict looks past it."""
    runs = []
    for size, params in (("0.3b", 3 * 10**8), ("1.2b", 12 * 10**8)):
        runs.append({**_run("quantize", 1, 1.0, 0.4e9 + 2.5 * params), "size": size, "params": params})
        runs.append({**_run("emulate", 1, 1.0, 0.4e9 + (3.0 if size == "0.3b" else 2.0) * params), "size": size,
                     "params": params})  # fmt: skip
    _bench().report(runs, ["quantize", "emulate"])
    out = capsys.readouterr().out
    assert "quantize bytes/param 3.83 -> 2.83; above imports 2.50 -> 2.50 (+0%; flat within 15%: ok)" in out
    assert "emulate bytes/param 4.33 -> 2.33; above imports 3.00 -> 2.00 (-33%; flat within 15%: MISSED)" in out


def test_a_stage_reports_its_own_peak_not_its_drivers(tmp_path: Path) -> None:
    """A child started from a large process inherits its `ru_maxrss` high-water mark (the first GPU-host run builds
    its checkpoints in the driver): each stage's peak is read from its own VmHWM instead."""
    import json
    import subprocess
    import sys

    held = bytearray(600_000_000)
    held[::4096] = b"\1" * len(held[::4096])  # resident
    code = (
        "import importlib.util, json, resource, sys\n"
        f"spec = importlib.util.spec_from_file_location('bench_scale', {str(SCRIPT)!r})\n"
        "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)\n"
        "print(json.dumps([bench.peak_rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))\n"
    )
    own, inherited = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout)  # fmt: skip
    del held
    assert inherited > 500e6 and own < 300e6
