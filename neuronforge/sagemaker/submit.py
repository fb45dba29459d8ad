"""Thin boto3 submitters: check inputs in S3, then make the call a request builder prepared.

All validation of the request itself already happened in `requests.py`; this module only talks to AWS and turns
botocore failures into NeuronforgeError.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from neuronforge.core import s3uri
from neuronforge.core.aws import call, call_or_none, client
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.images import pinned
from neuronforge.sagemaker.instances import validate_tp_degree
from neuronforge.sagemaker.packaging import verify_remote_package
from neuronforge.sagemaker.requests import SDK_TAG, Request, delete_requests, status_requests

if TYPE_CHECKING:
    from botocore.client import BaseClient


def clients(region: str) -> tuple[BaseClient, BaseClient]:
    """(sagemaker, s3) clients for `region`."""
    return client("sagemaker", region), client("s3", region)


_ECR_IMAGE = re.compile(r"(\d{12})\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/([^:@]+):(.+)")


def check_private_image(image: str, ecr: BaseClient) -> None:
    """A private ECR image (the Neuron image) must be pushed before a job or model names it: SageMaker would only
    fail when the job starts. AWS's own DLC registries are not ours to list and are skipped."""
    match = _ECR_IMAGE.fullmatch(image)
    if not match or match.group(1) in pinned()["dlc_registry_accounts"].values():
        return
    account, repository, tag = match.groups()
    call(
        ecr.describe_images,
        registryId=account,
        repositoryName=repository,
        imageIds=[{"imageTag": tag}],
        fix=f"build and push {image} (README, 'Images'), set NEURONFORGE_IMAGE_REPOSITORY, or pass --image",
    )


def input_uris(request: Request) -> list[str]:
    """S3 inputs a training or processing job will read."""
    uris = [c["DataSource"]["S3DataSource"]["S3Uri"] for c in request.get("InputDataConfig", [])]
    return uris + [i["S3Input"]["S3Uri"] for i in request.get("ProcessingInputs", [])]


def check_inputs_exist(request: Request, s3: BaseClient) -> None:
    """Fail before creating a job whose input prefix is empty or whose bucket is missing."""
    for uri in input_uris(request):
        bucket, key = s3uri.split(uri)
        listing = call(
            s3.list_objects_v2,
            Bucket=bucket,
            Prefix=key,
            MaxKeys=1,
            fix=f"check that bucket {bucket} exists and the credentials can list it",
        )
        if not listing.get("KeyCount"):
            raise NeuronforgeError(f"no S3 object under {uri}", "upload the input first (e.g. `aws s3 sync DIR URI`)")


def output_uris(request: Request) -> list[str]:
    """S3 prefixes a training or processing job will write."""
    uris = [request["OutputDataConfig"]["S3OutputPath"]] if "OutputDataConfig" in request else []
    outputs = request.get("ProcessingOutputConfig", {}).get("Outputs", [])
    return uris + [o["S3Output"]["S3Uri"] for o in outputs]


def check_output_buckets(request: Request, s3: BaseClient) -> None:
    """A job whose output bucket is missing would run for hours and then fail to upload: refuse it up front."""
    for bucket in sorted({s3uri.split(uri)[0] for uri in output_uris(request)}):
        call(
            s3.head_bucket,
            Bucket=bucket,
            fix=f"create bucket {bucket} (the infra stack's BucketName) or fix --output-s3",
        )


def submit_job(request: Request, sm: BaseClient, s3: BaseClient, ecr: BaseClient | None = None) -> str:
    """Create the training or processing job in `request` after checking its S3 inputs, outputs and (with `ecr`)
    its private image; return its ARN."""
    check_inputs_exist(request, s3)
    check_output_buckets(request, s3)
    if ecr is not None:
        spec = request.get("AlgorithmSpecification") or request["AppSpecification"]
        check_private_image(spec.get("TrainingImage") or spec["ImageUri"], ecr)
    if "TrainingJobName" in request:
        return call(sm.create_training_job, **request)["TrainingJobArn"]
    return call(sm.create_processing_job, **request)["ProcessingJobArn"]


def wait_for_job(request: Request, sm: BaseClient) -> str:
    if "TrainingJobName" in request:
        name = request["TrainingJobName"]
        call(sm.get_waiter("training_job_completed_or_stopped").wait, TrainingJobName=name)
        return call(sm.describe_training_job, TrainingJobName=name)["TrainingJobStatus"]
    name = request["ProcessingJobName"]
    call(sm.get_waiter("processing_job_completed_or_stopped").wait, ProcessingJobName=name)
    return call(sm.describe_processing_job, ProcessingJobName=name)["ProcessingJobStatus"]


def check_package(requests: dict[str, Request], s3: BaseClient) -> None:
    """Before anything is created: the package in S3 matches its manifest and its tp_degree fits the instance."""
    model_data = requests["create_model"]["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"]
    tags = {tag["Key"]: tag["Value"] for tag in requests["create_model"].get("Tags", [])}
    manifest = verify_remote_package(model_data, s3, tags[SDK_TAG])
    variant = requests["create_endpoint_config"]["ProductionVariants"][0]
    validate_tp_degree(variant["InstanceType"], manifest["serving"]["tp_degree"])


def deploy(
    requests: dict[str, Request], sm: BaseClient, s3: BaseClient, wait: bool = False, ecr: BaseClient | None = None
) -> str:
    """Verify the package in S3 (manifest, sizes, tp vs NeuronCores), then model -> endpoint config -> endpoint.

    If a later step fails, what this call created is deleted again (newest first), so a re-run with the same name
    starts clean instead of failing on "Cannot create already existing model".
    """
    check_package(requests, s3)
    if ecr is not None:
        check_private_image(requests["create_model"]["PrimaryContainer"]["Image"], ecr)
    steps = [
        ("create_model", "delete_model", {"ModelName": requests["create_model"]["ModelName"]}),
        (
            "create_endpoint_config",
            "delete_endpoint_config",
            {"EndpointConfigName": requests["create_endpoint_config"]["EndpointConfigName"]},
        ),
        ("create_endpoint", "delete_endpoint", {"EndpointName": requests["create_endpoint"]["EndpointName"]}),
    ]
    created: list[tuple[str, dict[str, str]]] = []
    try:
        for create, delete, key in steps:
            answer = call(getattr(sm, create), **requests[create])
            created.append((delete, key))
        if wait:
            call(sm.get_waiter("endpoint_in_service").wait, EndpointName=requests["create_endpoint"]["EndpointName"])
    except NeuronforgeError as exc:
        if wait and len(created) == len(steps):
            raise  # the endpoint exists; `status`/`delete` handle it, rolling back would hide the failure reason
        undone = [_undo(sm, delete, key) for delete, key in reversed(created)]
        note = f" (rolled back: {', '.join(undone)})" if undone else ""
        raise NeuronforgeError(exc.what + note, exc.fix) from None
    return str(answer["EndpointArn"])


def _undo(sm: BaseClient, delete: str, key: dict[str, str]) -> str:
    call_or_none(getattr(sm, delete), **key)
    return f"{delete.removeprefix('delete_').replace('_', ' ')} {next(iter(key.values()))}"


def status(name: str, sm: BaseClient) -> dict[str, str]:
    """Status of whatever is called `name`: a training job, a processing job or an endpoint.

    Only a not-found answer moves on to the next kind; bad credentials or a denied Describe* are errors.
    """
    status_keys = {
        "describe_training_job": ("training job", "TrainingJobStatus"),
        "describe_processing_job": ("processing job", "ProcessingJobStatus"),
        "describe_endpoint": ("endpoint", "EndpointStatus"),
    }
    for operation, request in status_requests(name).items():
        found = call_or_none(getattr(sm, operation), **request)
        if found is None:
            continue
        kind, key = status_keys[operation]
        reason = found.get("FailureReason", "")
        return {"name": name, "kind": kind, "status": found[key], **({"failure_reason": reason} if reason else {})}
    raise NeuronforgeError(
        f"no training job, processing job or endpoint named '{name}'",
        "check the name and --region (`aws sagemaker list-endpoints`)",
    )


def delete_endpoint(name: str, sm: BaseClient) -> list[str]:
    """Delete the endpoint, its config and its model; return what was deleted (only missing ones are skipped)."""
    deleted = []
    for operation, request in delete_requests(name).items():
        if call_or_none(getattr(sm, operation), **request) is None:
            continue
        deleted.append(f"{operation.removeprefix('delete_').replace('_', ' ')} {name}")
    if not deleted:
        raise NeuronforgeError(f"nothing named '{name}' to delete", "check the name and --region")
    return deleted
