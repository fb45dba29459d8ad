"""Pure builders of the boto3 request dicts for every SageMaker call neuronforge makes.

Nothing here touches AWS: each function validates its input (instance types against botocore's enums,
tp_degree against NeuronCores, names, S3 URIs, argument lengths) and returns the exact kwargs for one boto3
call, so `--dry-run` can print them and golden tests can pin them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, get_args

from neuronforge.core import s3uri
from neuronforge.errors import NeuronforgeError, one_of
from neuronforge.neuron.numerics.dtypes import ExportDtype, KvDtype
from neuronforge.neuron.nxdi.compile import FP8_ENV, PLATFORM_TARGET
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK
from neuronforge.sagemaker import limits
from neuronforge.sagemaker.code import CHANNEL, CHANNEL_DIR, PROCESSING_DIR, CodeBundle
from neuronforge.sagemaker.images import account_of_role, image_uri
from neuronforge.sagemaker.instances import NVME_FAMILIES, Role, family, validate_instance, validate_tp_degree
from neuronforge.version import __version__

Request = dict[str, Any]

INFERENCE_AMI = "al2-ami-sagemaker-inference-neuron-2"
SDK_TAG = "neuronforge:neuron-sdk"  # the model's tag naming the Neuron SDK whose image serves it
MODEL_DIR = "/opt/ml/model"
DEFAULT_VOLUME_GB = 200
PACKAGE_SUBDIR = "package"  # the compile job writes the endpoint's model directory to /opt/ml/model/package
COMPILED_SUBDIR = "compiled"  # inside a package: NxDI compiled artifacts (model.pt, neuron_config.json, ...)
CHECKPOINT_SUBDIR = "checkpoint"  # inside a package: the quantized HF checkpoint + tokenizer

# bash -c SCRIPT $0 "$@": one script string (SageMaker caps each entrypoint string at 256 characters), the stage
# and its flags travel as separate ContainerArguments. The script checks the shipped wheel's sha256, installs it
# (or an explicit --install spec) and hands over to neuronforge.sagemaker.job, which proves the imported neuronforge
# is the shipped one before running the stage (-P: the working directory cannot shadow it). Compile jobs reinstall without dependencies (NF_PIP): the Neuron
# image has them, and it has a neuronforge of its own that a plain install of the same version would keep.
# The entrypoint replaces the image's own, so the script first sources the DLC's CUDA forward-compat set-up where
# the image has one (as the DLC's and HF's entrypoints do: it may export LD_LIBRARY_PATH for an older host driver).
JOB_SCRIPT = (
    "set -e;C=/usr/local/bin/start_cuda_compat.sh;[ ! -f $C ]||. $C||:;"
    '[ -z "$NF_SHA256" ]||echo "$NF_SHA256  $NF_INSTALL"|sha256sum -c --status;'
    'pip install -q $NF_PIP "$NF_INSTALL";exec python -P -m neuronforge.sagemaker.job "$@"'
)
COMPILE_PIP = "--force-reinstall --no-deps"

# NEW-6: the compile's work folders (its output before packaging, NxD's quantized checkpoint, NxDI's compiler workdir,
# default /tmp/nxd_model/: application_base.py:150 at cd3abf3) go on the job's ML storage volume, which VolumeSizeInGB
# sizes, instead of the container's root filesystem. A training job keeps its File-mode channels on that volume
# under /opt/ml/input/data; a processing job its inputs under /opt/ml/processing.
COMPILE_WORK_DIRS = {"compile": "/opt/ml/input/data/nf-work", "compile-cpu": "/opt/ml/processing/nf-work"}
DTYPES: tuple[str, ...] = get_args(ExportDtype)
KV_DTYPES: tuple[str, ...] = get_args(KvDtype)
_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
PIPELINE_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,255}")  # botocore's PipelineName pattern


def validate_name(name: str, what: str = "job", pattern: re.Pattern[str] = _NAME) -> str:
    if not pattern.fullmatch(name):
        limit = 256 if pattern is PIPELINE_NAME else 63
        raise NeuronforgeError(
            f"'{name}' is not a valid SageMaker {what} name",
            f"use 1-{limit} letters, digits and hyphens, starting and ending with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class JobSettings:
    """What every job shares: who runs it, where, on what, and for how long."""

    name: str
    role_arn: str
    region: str
    instance_type: str
    volume_gb: int | None = None  # EBS GB; None: DEFAULT_VOLUME_GB (ignored by SageMaker on NVME_FAMILIES)
    max_runtime_s: int = 4 * 3600
    spot: bool = False
    max_wait_s: int | None = None  # spot only: total time including waiting for capacity
    image: str | None = None  # override the pinned image


def _checked_settings(job: JobSettings, role: Role) -> None:
    """What the API limits cannot see: the name, the role's account and partition, instance family, spot timing."""
    validate_name(job.name)
    validate_instance(role, job.instance_type)
    account_of_role(job.role_arn, job.region)
    if job.spot and job.max_wait_s is not None and job.max_wait_s < job.max_runtime_s:
        raise NeuronforgeError(
            f"spot max wait {job.max_wait_s}s is shorter than max runtime {job.max_runtime_s}s",
            "SageMaker requires MaxWaitTimeInSeconds >= MaxRuntimeInSeconds; raise --max-wait",
        )
    if job.volume_gb is None:
        return
    if job.volume_gb < 1:  # the training model's OptionalVolumeSizeInGB allows 0 (instance groups); a job needs disk
        raise NeuronforgeError(
            f"volume size {job.volume_gb} GB is too small", "pass --volume-gb of at least the model size x3"
        )
    if role != "compile-cpu" and family(job.instance_type) in NVME_FAMILIES:
        raise NeuronforgeError(
            f"--volume-gb does nothing on {job.instance_type}: SageMaker gives it no EBS volume, only the "
            "instance's own NVMe storage",
            "drop --volume-gb; for more local disk pick a larger instance of the family (its NVMe storage grows "
            "with the size)",
        )


def install_environment(
    code: CodeBundle | None, install: str | None, directory: str, reinstall: bool
) -> dict[str, str]:
    """How a job gets neuronforge: the shipped wheel (checked against its sha256) or an explicit pip spec;
    `reinstall` (Neuron image jobs) replaces the image's own neuronforge without touching its dependencies."""
    if (code is None) == (install is None):
        raise NeuronforgeError(
            "a job needs exactly one source of neuronforge", "ship the running code (default) or pass --install SPEC"
        )
    if code is None:
        assert install is not None  # (exactly one of the two, checked above)
        env = {"NF_INSTALL": install}
    else:
        env = {"NF_INSTALL": f"{directory}/{code.filename}", "NF_SHA256": code.sha256}
    return env | ({"NF_PIP": COMPILE_PIP} if reinstall else {})


def _flags(options: dict[str, Any]) -> list[str]:
    """{"iters": 50, "autoround": False} -> ["--iters", "50", "--no-autoround"]; None is dropped."""
    out: list[str] = []
    for key, value in options.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            out += [f"--{flag}", str(value)]
    return out


def _tags(stage: str, code: CodeBundle | None = None) -> list[dict[str, str]]:
    tags = {"neuronforge:stage": stage, "neuronforge:version": __version__}
    if code:
        tags["neuronforge:wheel-sha256"] = code.sha256
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _stopping(job: JobSettings) -> dict[str, int]:
    cond = {"MaxRuntimeInSeconds": job.max_runtime_s}
    if job.spot:
        cond["MaxWaitTimeInSeconds"] = job.max_wait_s or 2 * job.max_runtime_s
    return cond


def _training_job(
    job: JobSettings,
    stage: str,
    image: str,
    args: list[str],
    channels: dict[str, str],
    output_s3: str,
    env: dict[str, str],
    code: CodeBundle | None,
) -> Request:
    if code:
        channels = {**channels, CHANNEL: code.s3_prefix}
    request: Request = {
        "TrainingJobName": job.name,
        "RoleArn": job.role_arn,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["/bin/bash", "-c", JOB_SCRIPT, "neuronforge-job"],
            "ContainerArguments": args,
        },
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": s3uri.prefix(uri),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
                "InputMode": "File",
            }
            for channel, uri in channels.items()
        ],
        "OutputDataConfig": {"S3OutputPath": s3uri.prefix(output_s3), "CompressionType": "NONE"},
        "ResourceConfig": {
            "InstanceType": job.instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": job.volume_gb or DEFAULT_VOLUME_GB,
        },
        "StoppingCondition": _stopping(job),
        "Environment": env,
        "EnableManagedSpotTraining": job.spot,
        "Tags": _tags(stage, code),
    }
    return limits.check("sagemaker", "CreateTrainingJob", request)


def training_output_prefix(output_s3: str, job_name: str, subdir: str = "") -> str:
    """Where an uncompressed training job's /opt/ml/model/<subdir> lands in S3."""
    return s3uri.join(output_s3, job_name, "output", "model", subdir) + ("/" if subdir else "")


def quantize_job_request(
    job: JobSettings,
    *,
    model_s3: str,
    output_s3: str,
    dtype: str = "int8",
    options: dict[str, Any] | None = None,
    code: CodeBundle | None = None,
    install: str | None = None,
) -> Request:
    """GPU training job: `neuronforge quantize` from the model channel to /opt/ml/model/checkpoint (uncompressed).

    neuronforge comes from `code` (the shipped wheel, see code.py) or, explicitly, a pip spec `install`.
    """
    _checked_settings(job, "quantize")
    one_of(dtype, DTYPES, "--dtype")
    args = [
        "quantize",
        "--model",
        "/opt/ml/input/data/model",
        "--out",
        f"{MODEL_DIR}/{CHECKPOINT_SUBDIR}",
        "--dtype",
        dtype,
        *_flags(options or {}),
    ]
    image = job.image or image_uri("quantize", job.region, account_of_role(job.role_arn))
    env = install_environment(code, install, CHANNEL_DIR, reinstall=False) | {"HF_HUB_OFFLINE": "1"}
    return _training_job(job, "quantize", image, args, {"model": model_s3}, output_s3, env, code)


def _compile_args(
    checkpoint: str, dtype: str, tp_degree: int, kv: str, target_instance: str, seq_len: int, sdk: str
) -> list[str]:
    """`neuronforge compile` flags; --sdk is the Neuron SDK of the pinned image the job runs in."""
    one_of(dtype, DTYPES, "--dtype")
    one_of(kv, KV_DTYPES, "--kv")
    return [
        "--model",
        checkpoint,
        "--dtype",
        dtype,
        "--tp-degree",
        str(tp_degree),
        "--kv",
        kv,
        "--seq-len",
        str(seq_len),
        "--instance",
        target_instance,
        "--sdk",
        sdk,
    ]


def _compile_env(kind: Role, checkpoint: str, package_out: str) -> dict[str, str]:
    # inf2 and trn1 are the same NeuronCore-v2 target, which NxD/NxDI only recognise as "trn1" (neuron/compile.py);
    # set before NxD is imported, "inf2" would make NxD's hardware enum CUSTOM instead of TRN1.
    work = COMPILE_WORK_DIRS[kind]
    return {
        "NEURON_PLATFORM_TARGET_OVERRIDE": PLATFORM_TARGET,
        "TMPDIR": work,
        "BASE_COMPILE_WORK_DIR": f"{work}/nxd_model/",
        "NF_CKPT": checkpoint,
        "NF_OUT": package_out,
        "HF_HUB_OFFLINE": "1",
    }


def _compile_image(job: JobSettings, kind: Role, target_instance: str, tp_degree: int, sdk: str) -> str:
    """Validate a compile job (its instance, the inf2 target, tp for that target) and pick its SDK's Neuron image."""
    _checked_settings(job, kind)
    validate_instance("serve", target_instance)
    validate_tp_degree(target_instance, tp_degree)
    return job.image or image_uri("neuron", job.region, account_of_role(job.role_arn), sdk)


def compile_job_request(
    job: JobSettings,
    *,
    checkpoint_s3: str,
    output_s3: str,
    tp_degree: int,
    target_instance: str = "ml.inf2.xlarge",
    dtype: str = "int8",
    kv: str = "fp8",
    seq_len: int = 1024,
    sdk: str = DEFAULT_SDK,
    code: CodeBundle | None = None,
    install: str | None = None,
) -> Request:
    """trn1 training job: `neuronforge compile` for the inf2 target, then `neuronforge package` into /opt/ml/model.

    The compile loads and smoke-tests the model on the trn1 host itself, so tp_degree must fit its NeuronCores too.
    """
    image = _compile_image(job, "compile", target_instance, tp_degree, sdk)
    try:
        validate_tp_degree(job.instance_type, tp_degree)
    except NeuronforgeError as exc:
        raise NeuronforgeError(
            f"{exc.what}: the compile job loads the model on its own host",
            "use --instance-type ml.trn1.32xlarge (32 NeuronCores), or --processing to cross-compile without loading",
        ) from None
    checkpoint = "/opt/ml/input/data/checkpoint"
    env = _compile_env("compile", checkpoint, f"{MODEL_DIR}/{PACKAGE_SUBDIR}")
    env |= install_environment(code, install, CHANNEL_DIR, reinstall=True)
    args = _compile_args(checkpoint, dtype, tp_degree, kv, target_instance, seq_len, sdk)
    channels = {"checkpoint": checkpoint_s3}
    return _training_job(job, "compile", image, ["compile", *args], channels, output_s3, env, code)


def compile_processing_request(
    job: JobSettings,
    *,
    checkpoint_s3: str,
    output_s3: str,
    tp_degree: int,
    target_instance: str = "ml.inf2.xlarge",
    dtype: str = "int8",
    kv: str = "fp8",
    seq_len: int = 1024,
    sdk: str = DEFAULT_SDK,
    code: CodeBundle | None = None,
    install: str | None = None,
) -> Request:
    """CPU processing job that cross-compiles for inf2 (processing jobs cannot use trn1/inf2 instances).

    A CPU host has no NeuronCores, so the compile runs with --compile-only (no load, no smoke test), and the
    package goes into the output directory SageMaker creates before the entrypoint runs.
    """
    image = _compile_image(job, "compile-cpu", target_instance, tp_degree, sdk)
    checkpoint, out = "/opt/ml/processing/input/checkpoint", "/opt/ml/processing/output"
    args = [*_compile_args(checkpoint, dtype, tp_degree, kv, target_instance, seq_len, sdk), "--compile-only"]
    inputs = [("checkpoint", checkpoint_s3, checkpoint)] + ([(CHANNEL, code.s3_prefix, PROCESSING_DIR)] if code else [])
    env = _compile_env("compile-cpu", checkpoint, f"{out}/{PACKAGE_SUBDIR}")
    env |= install_environment(code, install, PROCESSING_DIR, reinstall=True)
    request = {
        "ProcessingJobName": job.name,
        "RoleArn": job.role_arn,
        "AppSpecification": {
            "ImageUri": image,
            "ContainerEntrypoint": ["/bin/bash", "-c", JOB_SCRIPT, "neuronforge-job"],
            "ContainerArguments": ["compile", *args],
        },
        "ProcessingInputs": [
            {
                "InputName": name,
                "S3Input": {
                    "S3Uri": s3uri.prefix(uri),
                    "LocalPath": local,
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
            for name, uri, local in inputs
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "package",
                    "S3Output": {
                        "S3Uri": s3uri.join(output_s3, job.name, PACKAGE_SUBDIR) + "/",
                        "LocalPath": f"{out}/{PACKAGE_SUBDIR}",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": job.instance_type,
                "VolumeSizeInGB": job.volume_gb or DEFAULT_VOLUME_GB,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": job.max_runtime_s},
        "Environment": env,
        "Tags": _tags("compile", code),
    }
    return limits.check("sagemaker", "CreateProcessingJob", request)


def serving_environment(fp8: bool = False) -> dict[str, str]:
    """The serving container's env: vLLM on NxDI, loading the packaged precompiled artifacts."""
    env = {
        "VLLM_NEURON_FRAMEWORK": "neuronx-distributed-inference",
        "NEURON_COMPILED_ARTIFACTS": f"{MODEL_DIR}/{COMPILED_SUBDIR}",
        "NEURONFORGE_MODEL_DIR": MODEL_DIR,
    }
    if fp8:
        env |= FP8_ENV
    return env


def model_request(
    name: str, *, role_arn: str, region: str, model_data_s3: str, sdk: str = DEFAULT_SDK, image: str | None = None
) -> Request:
    """A model whose data is the uncompressed package prefix, copied as-is to /opt/ml/model, served by the image of
    Neuron SDK `sdk` (the package's compile SDK, which `deploy` checks against its manifest through the SDK tag).

    fp8-specific variables come from the package's serving.json, which the `serve` wrapper applies.
    """
    validate_name(name, "model")
    account = account_of_role(role_arn, region)
    request = {
        "ModelName": name,
        "ExecutionRoleArn": role_arn,
        "PrimaryContainer": {
            "Image": image or image_uri("neuron", region, account, sdk),
            "Environment": serving_environment(),
            "ModelDataSource": {
                "S3DataSource": {
                    "S3Uri": s3uri.prefix(model_data_s3),
                    "S3DataType": "S3Prefix",
                    "CompressionType": "None",
                }
            },
        },
        "Tags": [{"Key": "neuronforge:version", "Value": __version__}, {"Key": SDK_TAG, "Value": sdk}],
    }
    return limits.check("sagemaker", "CreateModel", request)


def endpoint_config_request(
    name: str,
    *,
    model_name: str,
    instance_type: str,
    tp_degree: int | None = None,
    volume_gb: int = 64,
    startup_timeout_s: int = 3600,
    download_timeout_s: int = 3600,
    instance_count: int = 1,
) -> Request:
    """One inf2 production variant with a long startup health check (NxDI loads take minutes)."""
    validate_name(name, "endpoint config")
    validate_instance("serve", instance_type)
    if tp_degree is not None:
        validate_tp_degree(instance_type, tp_degree)
    request = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": "AllTraffic",
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": instance_count,
                "VolumeSizeInGB": volume_gb,
                "ContainerStartupHealthCheckTimeoutInSeconds": startup_timeout_s,
                "ModelDataDownloadTimeoutInSeconds": download_timeout_s,
                "InferenceAmiVersion": INFERENCE_AMI,
            }
        ],
    }
    return limits.check("sagemaker", "CreateEndpointConfig", request)


def endpoint_request(name: str, *, config_name: str) -> Request:
    validate_name(name, "endpoint")
    return limits.check("sagemaker", "CreateEndpoint", {"EndpointName": name, "EndpointConfigName": config_name})


def deployment_requests(
    name: str,
    *,
    role_arn: str,
    region: str,
    model_data_s3: str,
    instance_type: str,
    tp_degree: int | None = None,
    sdk: str = DEFAULT_SDK,
    image: str | None = None,
    volume_gb: int = 64,
    startup_timeout_s: int = 3600,
) -> dict[str, Request]:
    """Model, endpoint config and endpoint for one package (compiled with Neuron SDK `sdk`), all named after `name`."""
    model = model_request(name, role_arn=role_arn, region=region, model_data_s3=model_data_s3, sdk=sdk, image=image)
    return {
        "create_model": model,
        "create_endpoint_config": endpoint_config_request(
            name,
            model_name=name,
            instance_type=instance_type,
            tp_degree=tp_degree,
            volume_gb=volume_gb,
            startup_timeout_s=startup_timeout_s,
        ),
        "create_endpoint": endpoint_request(name, config_name=name),
    }


def status_requests(name: str) -> dict[str, Request]:
    """The describe calls `status` tries, in order, for a job or endpoint called `name`."""
    validate_name(name)
    return {
        "describe_training_job": {"TrainingJobName": name},
        "describe_processing_job": {"ProcessingJobName": name},
        "describe_endpoint": {"EndpointName": name},
    }


def delete_requests(name: str) -> dict[str, Request]:
    """Endpoint, endpoint config and model: `deploy` gives all three the same name."""
    validate_name(name, "endpoint")
    return {
        "delete_endpoint": {"EndpointName": name},
        "delete_endpoint_config": {"EndpointConfigName": name},
        "delete_model": {"ModelName": name},
    }
