"""Options shared by several commands, declared once (as huggingface_hub's CLI does in `_cli_utils.py`).

One spelling per concept: `--tp-degree`, `--overwrite`, `--seq-len` (the compiled Neuron sequence length),
`--calib-seq-len` (tokens per calibration window), `--eval-seq-len` (tokens per evaluation window).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neuronforge.core.devices import DEVICE_HELP
from neuronforge.core.presets import presets_help

ModelOpt = Annotated[str, typer.Option("--model", help="Embedded model name ('smollm2') or a Hugging Face folder.")]
KvOpt = Annotated[str, typer.Option("--kv", help="KV cache on Neuron: fp8 (NxDI's direct-cast e4m3) or bf16.")]
QtypeOpt = Annotated[str, typer.Option("--qtype", help="per_channel_symmetric (recommended) or per_tensor_symmetric.")]
NotConvertOpt = Annotated[
    Path | None,
    typer.Option(
        "--not-convert",
        help='JSON file of blocks kept in bf16: {"modules_to_not_convert": [...]} or a plain list.',
    ),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the output if it exists.")]
TpDegreeOpt = Annotated[
    int | None,
    typer.Option("--tp-degree", help="Tensor-parallel degree; default: the largest that divides the heads and fits."),
]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Compiled sequence length: longest prompt + generation.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Compiled batch size.")]
InstanceOpt = Annotated[
    str, typer.Option("--instance", help="Target instance: ml.inf2.{xlarge,8xlarge,24xlarge,48xlarge} or ml.trn1.*")
]
BudgetInstanceOpt = Annotated[
    str | None,
    typer.Option(
        "--budget-instance",
        help="Budget selection by instance: keep as many blocks bf16 as still fit this ml.inf2/ml.trn1 instance "
        "(replaces --max-extra-memory; `neuronforge plan` shows the memory model).",
    ),
]
SdkOpt = Annotated[str, typer.Option("--sdk", help="Neuron SDK release to target (2.28 or 2.31).")]
CalibSeqLenOpt = Annotated[int, typer.Option("--calib-seq-len", help="Tokens per calibration window.")]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        "--preset", help=f"Calibration budget; explicit --iters/--nsamples/--calib-seq-len win. {presets_help()}."
    ),
]
# The three knobs a preset fills: unset (None) means "from --preset".
PresetIterOpt = Annotated[
    int | None, typer.Option("--iters", help="AutoRound tuning steps per block (default: from --preset)")
]
PresetNsamplesOpt = Annotated[
    int | None, typer.Option("--nsamples", help="Calibration windows (default: from --preset)")
]
PresetCalibSeqLenOpt = Annotated[
    int | None, typer.Option("--calib-seq-len", help="Tokens per calibration window (default: from --preset)")
]
EvalSeqLenOpt = Annotated[int, typer.Option("--eval-seq-len", help="Tokens per evaluation window.")]
TextOpt = Annotated[
    Path | None, typer.Option("--text", help="Your .txt/.jsonl (calibration and held-out text); default: embedded.")
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
JobVolumeOpt = Annotated[int, typer.Option("--volume-gb", help="EBS volume of the job's instance, GB.")]
MaxRuntimeOpt = Annotated[int, typer.Option("--max-runtime", help="Seconds after which SageMaker stops the job.")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Block until the job finishes / the endpoint is InService.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
# Declared once in core/devices.py (the `device` field of every options model that computes).
DeviceOpt = Annotated[str, typer.Option("--device", help=DEVICE_HELP)]  # (pydantic checks the choice)
