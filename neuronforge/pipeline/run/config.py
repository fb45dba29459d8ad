"""The `neuronforge run` configuration: one flat model, loadable from YAML or TOML, every CLI flag a key.

Precedence: field defaults < config file < flags given on the command line; iters/nsamples/calib_seq_len not
given in either come from the `preset` (file key or --preset; default cpu-demo). `default_config_yaml`
renders the defaults with each field's description as a comment, so `neuronforge config init`
always writes exactly the keys this model accepts.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from neuronforge.assets.models import EMBEDDED_MODELS
from neuronforge.core.devices import DeviceField
from neuronforge.core.knobs import (
    BatchSize,
    BudgetInstance,
    CalibSeqLen,
    EvalTokens,
    Iters,
    MaxExtraMemory,
    Nsamples,
    PathText,
    SeqLen,
    Threshold,
    Topk,
    TpDegree,
)
from neuronforge.core.presets import KNOBS, PRESETS, PresetName, apply_preset, presets_help
from neuronforge.core.s3uri import is_s3
from neuronforge.core.utf8 import read_utf8, require_file
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.numerics.dtypes import ExportDtypeOption, KvOption
from neuronforge.pipeline.quantize.api import TargetKl, check_target
from neuronforge.pipeline.quantize.selection import SELECTION_HELP, Selection, missing_selection_value
from neuronforge.pipeline.quantize.sensitivity import SENSITIVITY_HELP, Sensitivity

DEFAULT_PRESET: PresetName = "cpu-demo"  # `make demo`'s budget

# Stage order; `evaluate` (the full accuracy report) is opt-in, `emulate` is the quick CPU check.
ALL_STAGES = ("model", "quantize", "emulate", "evaluate", "compile", "package")
DEFAULT_STAGES = ("model", "quantize", "emulate", "compile", "package")

# The commented default is grouped under these headings, each starting at the named field.
SECTIONS = {
    "model": "What to run and where",
    "dtype": "Stage 1: sensitivity analysis + AutoRound on NxD's grid (the 'quantize' stage)",
    "kv": "CPU emulation of Neuron numerics (the 'emulate' stage)",
    "instance": "Stage 2: Neuron config and compile (the 'compile' stage; skipped without a Neuron device)",
}


def _split_list(value: Any) -> Any:
    """Accept `a,b,c` (a CLI flag) as well as a YAML/TOML list."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class RunConfig(BaseModel):
    """Every setting of `neuronforge run`. Paths may be local or s3:// URIs."""

    # strict: a YAML `iters: yes` or `nsamples: 2.0` is a type error, not 1 or 2.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: PathText = Field(
        "smollm2", description="embedded model name, Hugging Face model folder, or s3:// prefix of one"
    )
    out: PathText | None = Field(
        None, description="run directory (local or s3://); default: runs/<model>-<dtype> in the current directory"
    )
    stages: list[str] = Field(
        list(DEFAULT_STAGES), description=f"stages to run, in this order: {', '.join(ALL_STAGES)}"
    )
    text: PathText | None = Field(
        None,
        description="your own .txt/.jsonl (local or s3://) for calibration and evaluation; default: embedded texts",
    )
    dtype: ExportDtypeOption = "int8"
    iters: Iters = PRESETS[DEFAULT_PRESET].iters
    nsamples: Nsamples = PRESETS[DEFAULT_PRESET].nsamples
    calib_seq_len: CalibSeqLen = Field(
        PRESETS[DEFAULT_PRESET].calib_seq_len,
        description="tokens per calibration window (the emulate check scores windows of this length too)",
    )
    sensitivity: Sensitivity = Field("first_order", description=SENSITIVITY_HELP)
    selection: Selection = Field("budget", description=SELECTION_HELP)
    max_extra_memory: MaxExtraMemory = 0.10
    budget_instance: BudgetInstance = None
    topk: Topk = None
    threshold: Threshold = None
    modules_to_not_convert: list[str] | None = Field(
        None, description="explicit blocks kept bf16 (e.g. lm_head, layers.0.mlp); skips the selection"
    )
    target_kl: TargetKl = None
    autoround: bool = Field(True, description="false: round-to-nearest on NxD's grid, no tuning")
    minmax_tuning: bool = Field(False, description="also tune AutoRound's per-row range shrink (clips outliers)")
    kv: KvOption = "fp8"
    eval_tokens: EvalTokens = Field(4096, description="held-out tokens per text scored by the emulation check")
    instance: str | None = Field(None, description="target ml.inf2/ml.trn1 instance; default: the compile step's")
    tp_degree: TpDegree = None
    batch_size: BatchSize = 1
    seq_len: SeqLen | None = Field(None, description="compiled sequence length; default: the compile step's")
    sdk: str | None = Field(None, description="Neuron SDK release to target; default: the compile step's")
    device: DeviceField = "auto"  # quantize, emulate and evaluate (not in any stage's inputs: same bits anywhere)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, values: Any) -> Any:
        return apply_preset(values, DEFAULT_PRESET)

    @field_validator("stages", "modules_to_not_convert", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in ALL_STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(ALL_STAGES)}")
        if not value:
            raise ValueError("at least one stage is needed")
        return [name for name in ALL_STAGES if name in value]

    @field_validator("model", "text", "out")
    @classmethod
    def _from_here(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A local path is relative to the current directory (never to the run directory): made absolute here."""
        if value is None or is_s3(value) or (info.field_name == "model" and value in EMBEDDED_MODELS):
            return value
        return os.path.abspath(Path(value).expanduser())

    @model_validator(mode="after")
    def _target_chooses_the_blocks(self) -> RunConfig:
        check_target(self.target_kl, self.selection, self.modules_to_not_convert, self.budget_instance)
        return self

    @model_validator(mode="after")
    def _selection_has_its_value(self) -> RunConfig:
        problem = missing_selection_value(self.selection, self.topk, self.threshold)
        if problem and self.modules_to_not_convert is None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _tuning_steps(self) -> RunConfig:
        if self.autoround and self.iters < 1:
            raise ValueError(
                f"iters must be >= 1 for AutoRound (got {self.iters}); use --no-autoround for plain rounding"
            )
        if "evaluate" in self.stages and self.iters < 1:
            raise ValueError(f"iters must be >= 1 (got {self.iters}): the evaluate stage tunes AutoRound variants")
        return self

    def run_dir(self) -> str:
        """`out`, or runs/<model name>-<dtype> in the current directory (absolute unless s3://)."""
        if self.out:
            return self.out
        name = self.model.rstrip("/").rsplit("/", 1)[-1] or "model"
        return os.path.abspath(f"runs/{name}-{self.dtype}")


def _format_problems(exc: ValidationError, source: str) -> NeuronforgeError:
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, RunConfig.model_fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{key}'{hint}")
        else:
            problems.append(f"{key}: {error['msg'].removeprefix('Value error, ')}")
    return NeuronforgeError(
        f"invalid run configuration from {source}: " + "; ".join(problems),
        "fix those keys; `neuronforge config init` writes every valid key with its default",
    )


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: PyYAML keeps the last value
    silently, so `iters: 1` ... `iters: 7` ran with 7 (report C08). TOML refuses duplicates itself."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: Path) -> dict[str, Any]:
    """Raw key/values of a .yaml/.yml or .toml config file."""
    path = require_file(Path(path), "config file", "create one with: neuronforge config init")
    text = read_utf8(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise NeuronforgeError(f"unsupported config file type '{path.suffix}' ({path})", "use .yaml, .yml or .toml")
    except _DuplicateKey as exc:
        raise NeuronforgeError(
            f"{path} gives the key '{exc.key}' twice (again on line {exc.line}); which value is meant is unclear",
            f"keep one '{exc.key}:' line in {path}",
        ) from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise NeuronforgeError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}", "fix the syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NeuronforgeError(f"{path} must hold key: value pairs at the top level", "see `neuronforge config init`")
    return data


def build_config(file_values: dict[str, Any], overrides: dict[str, Any], source: str = "the command line") -> RunConfig:
    """Defaults, then the file's values, then the flags that were actually given (None = not given)."""
    merged = {**file_values, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return RunConfig(**merged)
    except ValidationError as exc:
        raise _format_problems(exc, source) from None


def default_config_yaml() -> str:
    """The defaults as YAML, one commented key per field, grouped into sections."""
    lines = [
        "# neuronforge run configuration. Use it with: neuronforge run --config <this file>",
        "# Flags given on the command line override these values. Paths may be local or s3:// URIs.",
    ]
    for name, field in RunConfig.model_fields.items():
        if name in SECTIONS:
            lines += ["", f"# --- {SECTIONS[name]} ---"]
        if name == KNOBS[0]:
            lines.append(f"# calibration budget preset ({presets_help()}); a knob set below wins over it")
            lines.append(f"preset: {DEFAULT_PRESET}")
        lines.append(f"# {field.description}")
        line = yaml.safe_dump(
            {name: field.get_default(call_default_factory=True)}, default_flow_style=True, width=1000
        ).strip()[1:-1]
        lines.append(f"# {line}" if name in KNOBS else line)  # from the preset unless uncommented
    return "\n".join(lines) + "\n"
