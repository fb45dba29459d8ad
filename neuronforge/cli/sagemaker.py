"""CLI: `neuronforge sagemaker quantize|compile|deploy|status|delete|pipeline`, `package`, `invoke`.

Every command that creates something takes --dry-run, which prints the exact boto3 requests as JSON and makes
no AWS call. Validation (instance types, tp_degree, names, S3 URIs) runs before any AWS call either way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from neuronforge.cli.app import App, checked_out, console
from neuronforge.cli.options import (
    DryRunOpt,
    ImageOpt,
    JobVolumeOpt,
    MaxRuntimeOpt,
    NameOpt,
    RegionOpt,
    RoleOpt,
    WaitOpt,
    given,
    model_option,
    parse_path,
)
from neuronforge.core.aws import call, client
from neuronforge.core.s3uri import S3Uri
from neuronforge.errors import NeuronforgeError, validated
from neuronforge.neuron.numerics.dtypes import ExportDtype, KvDtype, QuantDtype
from neuronforge.neuron.nxdi.config import NeuronConfigOptions
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK, SDKS
from neuronforge.neuron.planner.weight_memory import format_bytes
from neuronforge.pipeline.quantize.api import QuantizeSettings
from neuronforge.sagemaker.code import prepared, upload
from neuronforge.sagemaker.images import partition_of
from neuronforge.sagemaker.invoke import completion_body, invoke, invoke_request
from neuronforge.sagemaker.packaging import (
    PackageOptions,
    load_manifest,
    package,
    remote_compile_sdk,
    upload_package,
    verify_package,
)
from neuronforge.sagemaker.requests import (
    CHECKPOINT_SUBDIR,
    PACKAGE_SUBDIR,
    JobSettings,
    compile_job_request,
    compile_processing_request,
    delete_requests,
    deployment_requests,
    quantize_job_request,
    status_requests,
    training_output_prefix,
)
from neuronforge.sagemaker.submit import (
    clients,
    delete_endpoint,
    deploy,
    job_left_running,
    status,
    stop_job_fix,
    submit_job,
    wait_for_job,
)
from neuronforge.sagemaker.workflow import PipelineSettings, build_pipeline, sdk_errors

# The job runs `neuronforge quantize`, whose calibration budget is the gpu preset unless a knob is given.
GPU_PRESET = "from the gpu preset"
N = NeuronConfigOptions
P = PackageOptions

if TYPE_CHECKING:
    from neuronforge.sagemaker.code import CodeBundle
    from neuronforge.sagemaker.requests import JobSettings

sagemaker_cli = App(
    help="Run the stages as SageMaker jobs and serve the result on an ml.inf2 endpoint (boto3).",
    interrupt=(
        "AWS may already hold what this command created or changed",
        "check with `neuronforge sagemaker status NAME` (or the console) before running it again",
    ),
)


WheelOpt = typer.Option(
    None,
    "--wheel",
    parser=parse_path,
    help="neuronforge wheel to ship to the job (default: build one from the running source).",
)
InstallOpt = typer.Option(
    None, "--install", help="Install this pip spec in the job instead of shipping the running code (a release)."
)


def _region(region: str | None) -> str:
    """The region, which must be one SageMaker runs in (botocore's endpoint data) and neuronforge has images for."""
    found = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not found:
        raise NeuronforgeError("no AWS region given", "pass --region us-east-1 or set AWS_DEFAULT_REGION")
    partition_of(found)
    return found


@contextmanager
def _shipped(wheel: Path | None, install: str | None, output_s3: str) -> Iterator[tuple[Path, CodeBundle] | None]:
    """The wheel the job installs (built from the running source unless --wheel), or None with --install."""
    if install is not None:
        if wheel is not None:
            raise NeuronforgeError("--wheel and --install both say where neuronforge comes from", "pass only one")
        yield None
        return

    with prepared(wheel, output_s3) as found:
        yield found


def _role(role: str | None) -> str:
    found = role or os.environ.get("NEURONFORGE_SAGEMAKER_ROLE")
    if not found:
        raise NeuronforgeError(
            "no SageMaker execution role given",
            "pass --role arn:aws:iam::<account>:role/<name> (the infra stack's ExecutionRoleArn)",
        )
    return found


def _name(name: str | None, stage: str) -> str:
    return name or f"nf-{stage}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _job_settings(
    stage: str,
    name: str | None,
    role: str | None,
    region: str | None,
    instance_type: str,
    volume_gb: int | None,
    max_runtime: int,
    image: str | None,
    spot: bool = False,
    max_wait: int | None = None,
) -> JobSettings:
    """The settings every job command shares, with the role, region and name defaults filled in."""
    return JobSettings(
        name=_name(name, stage),
        role_arn=_role(role),
        region=_region(region),
        instance_type=instance_type,
        volume_gb=volume_gb,
        max_runtime_s=max_runtime,
        spot=spot,
        max_wait_s=max_wait,
        image=image,
    )


def _print_requests(requests: dict[str, Any]) -> None:
    typer.echo(json.dumps(requests, indent=2, sort_keys=True))


def _run_job(
    call_name: str,
    request: dict[str, Any],
    region: str,
    dry_run: bool,
    wait: bool,
    result: str,
    shipped: tuple[Path, CodeBundle] | None,
) -> None:
    """Print (--dry-run) or upload the shipped wheel and submit the job; `result` says where its output will land."""
    if dry_run:
        _print_requests({call_name: request})
        return
    sm, s3 = clients(region)
    try:
        if shipped:
            upload(*shipped, s3)
            console.print(f"shipped: {shipped[1].s3_uri} (sha256 {shipped[1].sha256})")
        arn = submit_job(request, sm, s3, client("ecr", region))
    except KeyboardInterrupt as exc:
        if not getattr(exc, "__notes__", None):
            exc.add_note("no job was created (a shipped wheel already uploaded is reused by the next run)")
            exc.add_note("run the same command again")
        raise
    console.print(f"[green]created:[/] {arn}\noutput: {result}")
    if wait:
        try:
            console.print(f"finished: {wait_for_job(request, sm)}")
        except KeyboardInterrupt as exc:
            exc.add_note("stopped waiting; " + job_left_running(request, region, "exists"))
            exc.add_note(stop_job_fix(request, region))
            raise


@sagemaker_cli.command("quantize")
def quantize_command(
    model_s3: str = typer.Option(..., "--model-s3", help="s3:// prefix of the HF model folder."),
    output_s3: str = typer.Option(..., "--output-s3", help="s3:// prefix for job output (uncompressed)."),
    instance_type: str = typer.Option("ml.g6e.2xlarge", "--instance-type", help="GPU training instance."),
    dtype: ExportDtype | None = model_option(QuantizeSettings, "dtype"),
    iters: int | None = model_option(QuantizeSettings, "iters", default_text=GPU_PRESET),
    nsamples: int | None = model_option(QuantizeSettings, "nsamples", default_text=GPU_PRESET),
    calib_seq_len: int | None = model_option(QuantizeSettings, "calib_seq_len", default_text=GPU_PRESET),
    autoround: bool | None = model_option(QuantizeSettings, "autoround", "--autoround/--no-autoround"),
    volume_gb: JobVolumeOpt = None,
    max_runtime: MaxRuntimeOpt = 4 * 3600,
    spot: bool = typer.Option(False, "--spot", help="Managed spot training."),
    max_wait: int | None = typer.Option(None, "--max-wait", help="Spot: max seconds incl. waiting (>= --max-runtime)."),
    wheel: Path | None = WheelOpt,
    install: str | None = InstallOpt,
    name: NameOpt = None,
    role: RoleOpt = None,
    region: RegionOpt = None,
    image: ImageOpt = None,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = False,
) -> None:
    """GPU training job running `neuronforge quantize`; output lands in <output-s3>/<name>/output/model/checkpoint/."""
    settings = validated(QuantizeSettings, "sagemaker quantize", **given(locals(), QuantizeSettings))

    job = _job_settings("quantize", name, role, region, instance_type, volume_gb, max_runtime, image, spot, max_wait)
    dtype = settings.dtype
    options = {
        "iters": settings.iters,
        "nsamples": settings.nsamples,
        "calib_seq_len": settings.calib_seq_len,
        **({} if settings.autoround else {"autoround": False}),
    }
    with _shipped(wheel, install, output_s3) as shipped:
        code = shipped[1] if shipped else None
        request = quantize_job_request(
            job, model_s3=model_s3, output_s3=output_s3, dtype=dtype, options=options, code=code, install=install
        )
        output = training_output_prefix(output_s3, job.name, CHECKPOINT_SUBDIR)
        _run_job("create_training_job", request, job.region, dry_run, wait, output, shipped)


@sagemaker_cli.command("compile")
def compile_command(
    checkpoint_s3: str = typer.Option(..., "--checkpoint-s3", help="s3:// prefix of the quantized checkpoint."),
    output_s3: str = typer.Option(..., "--output-s3", help="s3:// prefix for the packaged model."),
    tp_degree: int = typer.Option(..., "--tp-degree", help="Tensor-parallel degree (<= target NeuronCores)."),
    target: str | None = model_option(N, "instance", "--target", text="Endpoint instance the artifacts are for."),
    instance_type: str | None = typer.Option(
        None,
        "--instance-type",
        help="ml.trn1.* (default ml.trn1.2xlarge); with --processing a CPU type (default ml.r7i.8xlarge).",
    ),
    processing: bool = typer.Option(False, "--processing", help="Cross-compile in a CPU processing job instead."),
    dtype: QuantDtype | None = model_option(N, "dtype"),
    kv: KvDtype | None = model_option(N, "kv"),
    seq_len: int | None = model_option(N, "seq_len"),
    sdk: str | None = model_option(
        N, "sdk", text=(N.model_fields["sdk"].description or "") + "; the job runs that SDK's pinned image"
    ),
    volume_gb: JobVolumeOpt = None,
    max_runtime: MaxRuntimeOpt = 4 * 3600,
    wheel: Path | None = WheelOpt,
    install: str | None = InstallOpt,
    name: NameOpt = None,
    role: RoleOpt = None,
    region: RegionOpt = None,
    image: ImageOpt = None,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Neuron compile job (`neuronforge compile` + `neuronforge package`) with the pinned Neuron image."""
    flags = given(locals(), N)
    deployment = validated(N, "sagemaker compile", **{**flags, **({"instance": target} if target else {})})

    instance_type = instance_type or ("ml.r7i.8xlarge" if processing else "ml.trn1.2xlarge")
    job = _job_settings("compile", name, role, region, instance_type, volume_gb, max_runtime, image)
    build = compile_processing_request if processing else compile_job_request
    with _shipped(wheel, install, output_s3) as shipped:
        request = build(
            job,
            checkpoint_s3=checkpoint_s3,
            output_s3=output_s3,
            tp_degree=tp_degree,
            target_instance=deployment.instance,
            dtype=deployment.dtype,
            kv=deployment.kv,
            seq_len=deployment.seq_len,
            sdk=sdk or DEFAULT_SDK,
            code=shipped[1] if shipped else None,
            install=install,
        )
        if processing:
            output = request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
            _run_job("create_processing_job", request, job.region, dry_run, wait, output, shipped)
        else:
            output = training_output_prefix(output_s3, job.name, PACKAGE_SUBDIR)
            _run_job("create_training_job", request, job.region, dry_run, wait, output, shipped)


@sagemaker_cli.command("upload-code")
def upload_code_command(
    output_s3: str = typer.Option(..., "--output-s3", help="s3:// prefix; the wheel goes to <prefix>/code/<sha256>/."),
    wheel: Path | None = WheelOpt,
    region: RegionOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Upload a wheel of the running neuronforge and print its s3:// URI (the stack's NeuronforgeSource)."""
    with prepared(wheel, output_s3) as (path, bundle):
        if not dry_run:
            upload(path, bundle, clients(_region(region))[1])
    typer.echo(json.dumps({"s3_uri": bundle.s3_uri, "sha256": bundle.sha256}, indent=2))


@sagemaker_cli.command("deploy")
def deploy_command(
    model_data: str = typer.Option(..., "--model-data", help="s3:// prefix of an uploaded package."),
    instance_type: str = typer.Option("ml.inf2.xlarge", "--instance-type", help="ml.inf2.* endpoint instance."),
    volume_gb: int = typer.Option(64, "--volume-gb", help="Endpoint EBS volume (>= package size)."),
    startup_timeout: int = typer.Option(3600, "--startup-timeout", help="Container startup health check, 60..3600 s."),
    sdk: str | None = typer.Option(
        None,
        "--sdk",
        help="Serving image's Neuron SDK; default: the package's compile SDK (its S3 manifest; 2.28 with --dry-run).",
    ),
    name: NameOpt = None,
    role: RoleOpt = None,
    region: RegionOpt = None,
    image: ImageOpt = None,
    dry_run: DryRunOpt = False,
    wait: WaitOpt = False,
) -> None:
    """Model (uncompressed S3 prefix) -> endpoint config (inf2) -> endpoint, after verifying the package in S3."""
    endpoint = _name(name, "endpoint")

    def requests_for(serving_sdk: str) -> dict[str, Any]:
        return deployment_requests(
            endpoint,
            role_arn=_role(role),
            region=_region(region),
            model_data_s3=model_data,
            instance_type=instance_type,
            sdk=serving_sdk,
            image=image,
            volume_gb=volume_gb,
            startup_timeout_s=startup_timeout,
        )

    requests = requests_for(sdk or DEFAULT_SDK)  # every input checked before any AWS call
    if dry_run:
        _print_requests(requests)
        return

    sm, s3 = clients(_region(region))
    ecr = client("ecr", _region(region))
    if sdk is None:
        requests = requests_for(remote_compile_sdk(model_data, s3))
    console.print(f"[green]created:[/] {deploy(requests, sm, s3, wait=wait, ecr=ecr, region=_region(region))}")


@sagemaker_cli.command("status")
def status_command(
    name: str = typer.Argument(..., help="Job or endpoint name."), region: RegionOpt = None, dry_run: DryRunOpt = False
) -> None:
    """Status of a training job, processing job or endpoint."""
    if dry_run:
        _print_requests(status_requests(name))
        return
    typer.echo(json.dumps(status(name, clients(_region(region))[0]), indent=2))


@sagemaker_cli.command("delete")
def delete_command(
    name: str = typer.Argument(..., help="Endpoint name used at deploy."),
    region: RegionOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Delete an endpoint with its endpoint config and model."""
    if dry_run:
        _print_requests(delete_requests(name))
        return

    for item in delete_endpoint(name, clients(_region(region))[0]):
        console.print(f"deleted {item}")


@sagemaker_cli.command("pipeline")
def pipeline_command(
    model_s3: str = typer.Option(..., "--model-s3", help="Default of the ModelS3Uri pipeline parameter."),
    output_s3: str = typer.Option(..., "--output-s3", help="s3:// prefix for both jobs' output."),
    endpoint_name: str = typer.Option(..., "--endpoint-name"),
    tp_degree: int = typer.Option(2, "--tp-degree", help="Tensor-parallel degree of the compile step."),
    dtype: ExportDtype | None = model_option(QuantizeSettings, "dtype"),
    kv: KvDtype | None = model_option(QuantizeSettings, "kv"),
    seq_len: int | None = model_option(QuantizeSettings, "seq_len"),
    sdk: str | None = typer.Option(
        None,
        "--sdk",
        help=f"Neuron SDK of the compile (its pinned serving image runs the job): {' or '.join(SDKS)}; default {DEFAULT_SDK}.",
    ),
    quantize_instance: str = typer.Option("ml.g6e.2xlarge", "--quantize-instance"),
    compile_instance: str = typer.Option("ml.trn1.2xlarge", "--compile-instance"),
    endpoint_instance: str = typer.Option("ml.inf2.xlarge", "--endpoint-instance"),
    name: str = typer.Option("neuronforge", "--name", help="Pipeline name."),
    wheel: Path | None = WheelOpt,
    install: str | None = InstallOpt,
    role: RoleOpt = None,
    pipeline_role: str | None = typer.Option(
        None,
        "--pipeline-role",
        help="The pipeline's own role (the stack's PipelineRoleArn; env NEURONFORGE_PIPELINE_ROLE). Default: --role.",
    ),
    region: RegionOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """SDK v3 Pipeline quantize -> compile -> model -> endpoint; --dry-run prints its definition() JSON."""
    deployment = validated(QuantizeSettings, "sagemaker pipeline", **given(locals(), QuantizeSettings))

    with _shipped(wheel, install, output_s3) as shipped:
        settings = PipelineSettings(
            name=name,
            role_arn=_role(role),
            region=_region(region),
            model_s3=model_s3,
            output_s3=output_s3,
            endpoint_name=endpoint_name,
            tp_degree=tp_degree,
            dtype=deployment.dtype,
            kv=deployment.kv,
            seq_len=deployment.seq_len,
            sdk=sdk or DEFAULT_SDK,
            quantize_instance=quantize_instance,
            compile_instance=compile_instance,
            endpoint_instance=endpoint_instance,
            code=shipped[1] if shipped else None,
            install=install,
            pipeline_role_arn=pipeline_role or os.environ.get("NEURONFORGE_PIPELINE_ROLE"),
        )
        with sdk_errors():
            pipeline = build_pipeline(settings)
            if dry_run:
                typer.echo(json.dumps(json.loads(pipeline.definition()), indent=2, sort_keys=True))
                return
            if shipped:
                upload(*shipped, clients(settings.region)[1])
            arn = call(pipeline.upsert, role_arn=settings.upsert_role)["PipelineArn"]
            console.print(f"[green]upserted:[/] {arn}")
            console.print(f"started: {call(pipeline.start).arn}")


def package_command(
    out: Path = typer.Argument(
        ..., parser=parse_path, help="Package directory to write (or an existing one to upload)."
    ),
    compiled: Path | None = model_option(P, "compiled"),
    checkpoint: Path | None = model_option(P, "checkpoint"),
    tokenizer: Path | None = model_option(P, "tokenizer"),
    tp_degree: int | None = model_option(P, "tp_degree"),
    overwrite: bool | None = model_option(P, "overwrite", "--overwrite"),
    upload: str | None = typer.Option(None, "--upload", help="s3:// prefix to upload to (multipart, verified)."),
    region: RegionOpt = None,
) -> None:
    """Lay out the endpoint's model directory with manifest.json; optionally upload it to S3 and verify."""
    flags = given(locals(), P)

    if upload:  # the destination and the region before the package is written, not after (report E28)
        S3Uri.parse(upload)
        region = _region(region)
    if compiled is None and checkpoint is None:
        verify_package(out)
        console.print(f"[green]verified:[/] {out} matches its manifest")
    elif compiled is None or checkpoint is None:
        raise NeuronforgeError("--compiled and --checkpoint go together", "pass both, or neither to re-upload OUT")
    else:
        checked_out(out, bool(overwrite), compiled=compiled, checkpoint=checkpoint, tokenizer=tokenizer)
        package(validated(P, "package", **flags))
        sizes = load_manifest(out)["sizes"]
        left_out = ", ".join(f"{name} {format_bytes(n)}" for name, n in sizes["left_out"].items() if n)
        console.print(
            f"[green]packaged:[/] {out} ({format_bytes(sizes['package'])}: checkpoint "
            f"{format_bytes(sizes['checkpoint'])}, compiled {format_bytes(sizes['compiled'])}"
            + (f"; left out {left_out})" if left_out else ")")
        )
    if upload:
        keys = upload_package(out, upload, clients(_region(region))[1])
        console.print(f"[green]uploaded and verified:[/] {len(keys)} objects under {upload}")


def invoke_command(
    endpoint: str = typer.Argument(..., help="Endpoint name."),
    prompt: str = typer.Argument("The capital of France is", help="Prompt text."),
    max_tokens: int = typer.Option(32, "--max-tokens"),
    region: RegionOpt = None,
    dry_run: DryRunOpt = False,
) -> None:
    """Send one completion request to the endpoint and print the generated text."""
    body = completion_body(prompt, max_tokens)
    if dry_run:
        _print_requests({"invoke_endpoint": invoke_request(endpoint, body)})
        return

    typer.echo(invoke(endpoint, body, client("sagemaker-runtime", _region(region))))
