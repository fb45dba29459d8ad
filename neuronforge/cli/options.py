"""Options shared by several commands, declared once (as huggingface_hub's CLI does in `_cli_utils.py`).

A flag that feeds an options model is built by `model_option`: it defaults to None ("not given", so the model's
own default applies), and its help and shown default come from the model field; its choices come from the
field's Literal type (neuron/dtypes.py), its bounds are the model's. tests/test_cli/test_knobs.py fails where a
flag and the field it feeds disagree.

One spelling per concept: `--tp-degree`, `--overwrite`, `--seq-len` (the compiled Neuron sequence length),
`--calib-seq-len` (tokens per calibration window), `--eval-seq-len` (tokens per evaluation window),
`--eval-tokens` (held-out tokens scored per text).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from rich.markup import escape

from neuronforge.core.knobs import not_empty_path
from neuronforge.core.presets import presets_help


def parse_path_text(value: str) -> str:
    """Every path flag's parser: refuses '' (`core.knobs.not_empty_path`) before typer would turn it into '.'."""
    try:
        return str(not_empty_path(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_path(value: str) -> Path:
    """`parse_path_text` for a flag typed Path."""
    return Path(parse_path_text(value))


def _is_path(annotation: Any) -> bool:
    """A field typed Path, `Path | None` or `core.knobs.LocalPath` (an Annotated Path)."""
    return annotation is Path or any(_is_path(arg) for arg in get_args(annotation))


def _is_path_text(info: FieldInfo) -> bool:
    """A field typed `core.knobs.PathText`: a path kept as text (a model name or s3:// URI may stand for it)."""
    return any(getattr(item, "func", None) is not_empty_path for item in info.metadata)


def model_option(
    model: type[BaseModel], field: str, *decls: str, text: str | None = None, default_text: str | None = None
) -> Any:
    """A flag feeding `model.field`: None unless given; help and the default shown come from the field."""
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if default_text is None and default not in (None, []):
        default_text = str(default).lower() if isinstance(default, bool) else str(default)
    return typer.Option(
        None,
        *(decls or (f"--{field.replace('_', '-')}",)),
        help=escape(text if text is not None else (info.description or "")),  # rich would eat "[eval]"
        show_default=default_text or False,
        parser=parse_path if _is_path(info.annotation) else parse_path_text if _is_path_text(info) else None,
    )


ModelOpt = Annotated[
    str,
    typer.Option("--model", help="Embedded model name ('smollm2') or a Hugging Face folder.", parser=parse_path_text),
]
NotConvertOpt = Annotated[
    Path | None,
    typer.Option(
        "--not-convert",
        help='JSON file of blocks kept in bf16: {"modules_to_not_convert": [...]} or a plain list.',
        parser=parse_path,
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")]


def preset_option(model: Any) -> Any:
    """--preset for a command whose model fills unset calibration knobs from `model.default_preset`."""
    return typer.Option(
        None,
        "--preset",
        help=f"Calibration budget; explicit --iters/--nsamples/--calib-seq-len win. {presets_help()}.",
        show_default=model.default_preset,
    )


TextOpt = Annotated[
    Path | None,
    typer.Option(
        "--text", help="Your .txt/.jsonl (calibration and held-out text); default: embedded.", parser=parse_path
    ),
]
RegionOpt = Annotated[
    str | None, typer.Option("--region", help="AWS region (default: $AWS_REGION / $AWS_DEFAULT_REGION).")
]
RoleOpt = Annotated[
    str | None,
    typer.Option("--role", help="SageMaker execution role ARN (default: $NEURONFORGE_SAGEMAKER_ROLE)."),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the exact boto3 requests as JSON; call nothing.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Job/endpoint name (default: nf-<stage>-<UTC timestamp>).")]
ImageOpt = Annotated[str | None, typer.Option("--image", help="Override the pinned image URI (images.json).")]
JobVolumeOpt = Annotated[
    int | None,
    typer.Option(
        "--volume-gb",
        help="EBS volume of the job's instance, GB (default 200). GPU and trn1 instances have NVMe storage instead "
        "and refuse it.",
    ),
]
MaxRuntimeOpt = Annotated[int, typer.Option("--max-runtime", help="Seconds after which SageMaker stops the job.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Block until the job finishes / the endpoint is InService.")]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose", help="Also print third-party log lines (auto-round, transformers); always in <out>/logs/."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def given(values: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """The flags a command got (not None) that are fields of `model`: pass `locals()` first thing in the body."""
    return {name: value for name, value in values.items() if name in model.model_fields and value is not None}
