"""SageMaker Python SDK v3 objects built from the same validated requests the boto3 path sends.

`model_trainer` turns a quantize or compile CreateTrainingJob request (requests.py) into a
`sagemaker.train.ModelTrainer`: same image, instance, volume, spot and stopping settings, channels (the shipped
wheel included), environment, tags and output. The job script runs through the SDK's own driver: ModelTrainer with
SourceCode(command=...) uploads `source_dir` as channel `code` and runs the command there
(sagemaker/train/model_trainer.py `_prepare_train_script`). `deploy_resources` creates the model, endpoint config
and endpoint with `sagemaker.core.resources`. The SDK (`neuronforge[sagemaker]`) is imported lazily, here only.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronforge.core import s3uri
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.limits import to_snake, to_snake_kwargs
from neuronforge.sagemaker.requests import Request
from neuronforge.sagemaker.submit import check_package

if TYPE_CHECKING:
    import boto3

JOB_SCRIPT = "nf-job.sh"
# ModelTrainer names each job `<base_job_name>-<YYYYmmddHHMMSS>` cut to 63 characters (sagemaker 3.27
# train/utils.py `_get_unique_name`): a longer base loses the timestamp or ends in "-", an invalid job name.
SDK_SUFFIX = len("-20260101000000")


def sdk_base_name(job_name: str) -> str:
    """The base name ModelTrainer gets, so that its job name is valid and unique: `--name` cut to 48 characters."""
    return job_name[: 63 - SDK_SUFFIX].rstrip("-")


def _require_sdk() -> None:
    try:
        import sagemaker.train  # noqa: F401
    except ImportError:
        raise NeuronforgeError(
            "the SageMaker Python SDK v3 is not installed", "pip install 'neuronforge[sagemaker]' (sagemaker>=3.27)"
        ) from None


def model_trainer(request: Request, *, region: str, boto_session: boto3.Session | None = None) -> Any:
    """A ModelTrainer for one of our training job requests; `trainer.train(wait=False)` submits it."""
    _require_sdk()
    import boto3
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import Tag
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import (
        Compute,
        InputData,
        OutputDataConfig,
        S3DataSource,
        SourceCode,
        StoppingCondition,
    )

    spec = request["AlgorithmSpecification"]
    entrypoint = spec["ContainerEntrypoint"]
    if entrypoint[:2] != ["/bin/bash", "-c"]:
        raise NeuronforgeError("this request does not run a neuronforge job script", "build it with requests.py")
    source_dir = Path(tempfile.mkdtemp(prefix="nf-sdk-code-"))  # uploaded by train() as the `code` channel
    (source_dir / JOB_SCRIPT).write_text("#!/bin/bash\n" + entrypoint[2] + "\n")
    resources = request["ResourceConfig"]
    stopping = request["StoppingCondition"]
    output = request["OutputDataConfig"]
    session = boto_session or boto3.session.Session(region_name=region)
    trainer = ModelTrainer(
        training_image=spec["TrainingImage"],
        role=request["RoleArn"],
        base_job_name=sdk_base_name(request["TrainingJobName"]),
        sagemaker_session=Session(boto_session=session, default_bucket=s3uri.split(output["S3OutputPath"])[0]),
        source_code=SourceCode(
            source_dir=str(source_dir), command=f"bash {JOB_SCRIPT}", args=spec["ContainerArguments"]
        ),
        compute=Compute(
            instance_type=resources["InstanceType"],
            instance_count=resources["InstanceCount"],
            volume_size_in_gb=resources["VolumeSizeInGB"],
            enable_managed_spot_training=request["EnableManagedSpotTraining"],
        ),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=stopping["MaxRuntimeInSeconds"],
            max_wait_time_in_seconds=stopping.get("MaxWaitTimeInSeconds"),
        ),
        output_data_config=OutputDataConfig(
            s3_output_path=output["S3OutputPath"], compression_type=output["CompressionType"]
        ),
        input_data_config=[
            InputData(
                channel_name=channel["ChannelName"],
                data_source=S3DataSource(
                    **to_snake("sagemaker", "S3DataSource", channel["DataSource"]["S3DataSource"])
                ),
            )
            for channel in request["InputDataConfig"]
        ],
        environment=request["Environment"],
        tags=[Tag(key=tag["Key"], value=tag["Value"]) for tag in request["Tags"]],
    )
    weakref.finalize(trainer, shutil.rmtree, source_dir, ignore_errors=True)  # train() reads it; nothing after
    return trainer


def deploy_resources(requests: dict[str, Request], *, region: str, boto_session: boto3.Session | None = None) -> Any:
    """Check the package in S3 as `deploy` does, then Model -> EndpointConfig -> Endpoint with
    sagemaker.core.resources; returns the Endpoint resource."""
    _require_sdk()
    import boto3
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model

    session = boto_session or boto3.session.Session(region_name=region)
    check_package(requests, session.client("s3"))
    for resource, operation, key in (
        (Model, "CreateModel", "create_model"),
        (EndpointConfig, "CreateEndpointConfig", "create_endpoint_config"),
    ):
        resource.create(session=session, region=region, **to_snake_kwargs("sagemaker", operation, requests[key]))
    kwargs = to_snake_kwargs("sagemaker", "CreateEndpoint", requests["create_endpoint"])
    return Endpoint.create(session=session, region=region, **kwargs)
