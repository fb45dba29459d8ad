"""Named budgets for stage 1's calibration knobs, the one place their defaults live.

`quantize`, `evaluate` and `run` take the same `iters` / `nsamples` / `calib_seq_len`; each command starts
from a named preset (quantize: gpu, run: cpu-demo, evaluate: cpu-fast) and any knob given explicitly wins.
AutoRound's cost grows with iters x nsamples x calib_seq_len per block, so the CPU presets are the GPU one
cut until the default model finishes on 2 CPU cores (timings in docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

PresetName = Literal["gpu", "cpu-demo", "cpu-fast"]
# Calibration windows the sensitivity analysis runs through a layer at once (its host memory grows with it).
SENSITIVITY_BATCH = 4
# Calibration tokens the first-order sensitivity scores at most (the gpu preset's 32 x 256). It holds every decoder
# layer's input for all of them on the host for its backward pass, (layers + 1) x tokens x hidden x 4 bytes:
# 4.4 GB for an 8B model at this cap, 142 GB at 128 x 2048 tokens. A ranking of blocks needs no more; AutoRound
# still tunes on every window.
FIRST_ORDER_MAX_TOKENS = 32 * 256


def first_order_windows(nsamples: int, calib_seq_len: int) -> int:
    """How many of `nsamples` calibration windows the first-order sensitivity scores (one at least)."""
    return max(1, min(nsamples, FIRST_ORDER_MAX_TOKENS // calib_seq_len))


class Preset(NamedTuple):
    iters: int  # AutoRound tuning steps per block
    nsamples: int  # calibration windows
    calib_seq_len: int  # tokens per calibration window
    about: str


PRESETS: dict[str, Preset] = {
    "gpu": Preset(50, 32, 256, "AutoRound's budget on a GPU host; quantize's default"),
    "cpu-demo": Preset(10, 8, 128, "the CPU demo, about 3 min for SmolLM2-135M on 2 cores; run's default"),
    "cpu-fast": Preset(5, 8, 64, "evaluate's default: it quantizes four variants on the CPU"),
}
KNOBS = ("iters", "nsamples", "calib_seq_len")


def apply_preset(values: Any, default: PresetName) -> Any:
    """Pydantic before-validator body: pop `preset` and fill the knobs the caller left out (or None) from it."""
    if not isinstance(values, dict):
        return values
    values = dict(values)
    name = values.pop("preset", None) or default
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    for knob in KNOBS:
        if values.get(knob) is None:
            values[knob] = getattr(preset, knob)
    return values


def presets_help() -> str:
    """One line per preset for --help and error messages."""
    return "; ".join(
        f"{name}: iters {p.iters}, nsamples {p.nsamples}, calib_seq_len {p.calib_seq_len}"
        for name, p in PRESETS.items()
    )
