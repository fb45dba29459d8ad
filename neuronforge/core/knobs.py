"""The knobs several options models share, each declared once: its bounds and its help text.

An options model gives each knob its own default (quantize starts from the gpu preset, run from cpu-demo), but
the type below, with its bounds and description, is the same everywhere; the CLI takes its help from the model
field (cli/options.py `model_option`), so a knob's rules cannot drift between commands. The dtype vocabularies
live in neuron/dtypes.py. Every float knob carries `FINITE` and every path given as text `PathText`
(tests/test_cli/test_knobs.py walks every options model to check it). Every path option refuses an empty
string, once, in `not_empty_path` (`LocalPath`, `PathText`; the CLI's path flags parse with it:
cli/options.py `parse_path`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidatorFunctionWrapHandler, WrapValidator
from pydantic_core import PydanticCustomError


def _finite(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """NaN and infinities are named as such, before the bounds would call NaN "greater than 1" (report C14, E03)."""
    number = value
    if isinstance(value, str):  # pydantic would read "nan" as a float too
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, float) and math.isnan(number):
        raise PydanticCustomError("not_a_number", "not a number (nan); give a finite number")
    if isinstance(number, float) and math.isinf(number):
        raise PydanticCustomError(
            "not_finite", "not a finite number ({value}); give a finite number", {"value": number}
        )
    return handler(value)


# A float knob's marker: NaN and +-inf are refused with their name, whatever the knob's bounds.
FINITE = WrapValidator(_finite)


def _as_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


EMPTY_PATH = "an empty path ('') is not a path: it would silently mean the current directory"


def not_empty_path(value: Any) -> Any:
    """Refuse '' (and blanks) as a path: Path('') is the current directory, so an empty YAML value or a `--text ''`
    quietly pointed at the folder the user stood in and failed later about something else (report B15, C09, C20)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{EMPTY_PATH} (write . for that)")
    return value


# A local path (a folder or file the command reads or writes).
LocalPath = Annotated[Path, BeforeValidator(not_empty_path)]
# A field that takes a name, an s3:// URI or a local path, as text: a pathlib.Path (what nf.fetch_model returns)
# is accepted too (report J04). (Annotated before-validators run last first: _as_text, then not_empty_path.)
PathText = Annotated[str, BeforeValidator(not_empty_path), BeforeValidator(_as_text)]

# Stage 1: calibration budget (core/presets.py holds the values a preset fills in).
# At most 10,000 steps: 10x auto-round's own "best" recipe (1000; default 200, light 50: auto-round 0.16.1
# auto_round/cli/main.py RECIPES) and 200x our gpu preset. Each step is a forward and backward pass of one block
# over the calibration batch, so 10,000 is already hours per block of a 7B model; more is a typo (report D13).
MAX_ITERS = 10_000
Iters = Annotated[
    int,
    Field(ge=0, le=MAX_ITERS, description=f"AutoRound tuning steps per block (>= 1 with AutoRound, <= {MAX_ITERS})"),
]
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
    FINITE,
]
Topk = Annotated[
    int | None, Field(ge=0, description="topk selection: how many blocks stay bf16 (required with selection topk)")
]
Threshold = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=1.0,
        description="threshold selection (required with it): blocks whose share of the total sensitivity is >= this",
    ),
    FINITE,
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
