"""The numeric knobs several options models share, each declared once: its bounds and its help text.

An options model gives each knob its own default (quantize starts from the gpu preset, run from cpu-demo), but
the type below, with its bounds and description, is the same everywhere; the CLI takes its help from the model
field (cli/options.py `model_option`), so a knob's rules cannot drift between commands. The dtype vocabularies
live in neuron/dtypes.py. The path types are here too: every path option refuses an empty string once, in
`not_empty_path` (the CLI's path flags parse with it: cli/options.py `parse_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

EMPTY_PATH = "an empty path ('') is not a path: it would silently mean the current directory"


def not_empty_path(value: Any) -> Any:
    """Refuse '' (and blanks) as a path: Path('') is the current directory, so an empty YAML value or a `--text ''`
    quietly pointed at the folder the user stood in and failed later about something else (report B15, C09, C20)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{EMPTY_PATH} (write . for that)")
    return value


# A local path (a folder or file the command reads or writes).
LocalPath = Annotated[Path, BeforeValidator(not_empty_path)]
# A local path or an s3:// URI, or (for `model`) an embedded model name: kept as text.
PathText = Annotated[str, BeforeValidator(not_empty_path)]

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
