"""The numeric knobs several options models share, each declared once: its bounds and its help text.

An options model gives each knob its own default (quantize starts from the gpu preset, run from cpu-demo), but
the type below, with its bounds and description, is the same everywhere; the CLI takes its help from the model
field (cli/options.py `model_option`), so a knob's rules cannot drift between commands. The dtype vocabularies
live in neuron/dtypes.py.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# Stage 1: calibration budget (core/presets.py holds the values a preset fills in).
Iters = Annotated[int, Field(ge=0, description="AutoRound tuning steps per block (>= 1 with AutoRound)")]
Nsamples = Annotated[int, Field(ge=1, description="calibration windows")]
CalibSeqLen = Annotated[int, Field(ge=8, description="tokens per calibration window")]

# Stage 1: which blocks stay bf16.
MaxExtraMemory = Annotated[
    float,
    Field(
        ge=0.0,
        le=1.0,
        description="budget selection: extra weight memory allowed for bf16 blocks (a fraction: 0.05 = 5%)",
    ),
]
Topk = Annotated[int | None, Field(ge=0, description="topk selection: how many blocks stay bf16")]
Threshold = Annotated[
    float | None,
    Field(ge=0.0, le=1.0, description="threshold selection: blocks whose share of the total sensitivity is >= this"),
]
BudgetInstance = Annotated[
    str | None,
    Field(
        description="budget selection by instance: keep as many blocks bf16 as still fit this ml.inf2/ml.trn1 "
        "instance at kv, tp_degree, batch_size and seq_len (replaces max_extra_memory)"
    ),
]

# Held-out evaluation.
EvalTokens = Annotated[int, Field(ge=16, description="held-out tokens scored per text")]
EvalSeqLen = Annotated[int, Field(ge=2, description="tokens per evaluation window")]

# The deployment on Neuron.
SeqLen = Annotated[int, Field(ge=1, description="compiled sequence length: longest prompt + generation")]
BatchSize = Annotated[int, Field(ge=1, description="compiled batch size")]
TpDegree = Annotated[
    int | None, Field(ge=1, description="tensor-parallel degree; default: the largest that divides the heads and fits")
]
