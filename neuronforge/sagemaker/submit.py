"""Thin boto3 submitters: check inputs in S3, then make the call a request builder prepared.

All validation of the request itself already happened in `requests.py`; this module only talks to AWS and turns
botocore failures into NeuronforgeError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neuronforge.core import s3uri
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.aws import call, client
from neuronforge.sagemaker.instances import validate_tp_degree
from neuronforge.sagemaker.packaging import verify_remote_package
from neuronforge.sagemaker.requests import Request, delete_requests, status_requests

if TYPE_CHECKING:
    from botocore.client import BaseClient


def clients(region: str) -> tuple[BaseClient, BaseClient]:
    """(sagemaker, s3) clients for `region`."""
    return client("sagemaker", region), client("s3", region)


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


def submit_job(request: Request, sm: BaseClient, s3: BaseClient) -> str:
    """Create the training or processing job in `request`; return its ARN."""
    check_inputs_exist(request, s3)
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


def deploy(requests: dict[str, Request], sm: BaseClient, s3: BaseClient, wait: bool = False) -> str:
    """Verify the package in S3 (manifest, sizes, tp vs NeuronCores), then model -> endpoint config -> endpoint."""
    model_data = requests["create_model"]["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"]
    manifest = verify_remote_package(model_data, s3)
    variant = requests["create_endpoint_config"]["ProductionVariants"][0]
    validate_tp_degree(variant["InstanceType"], manifest["serving"]["tp_degree"])
    call(sm.create_model, **requests["create_model"])
    call(sm.create_endpoint_config, **requests["create_endpoint_config"])
    arn = call(sm.create_endpoint, **requests["create_endpoint"])["EndpointArn"]
    if wait:
        call(sm.get_waiter("endpoint_in_service").wait, EndpointName=requests["create_endpoint"]["EndpointName"])
    return arn


def status(name: str, sm: BaseClient) -> dict[str, str]:
    """Status of whatever is called `name`: a training job, a processing job or an endpoint."""
    from botocore.exceptions import ClientError

    status_keys = {
        "describe_training_job": ("training job", "TrainingJobStatus"),
        "describe_processing_job": ("processing job", "ProcessingJobStatus"),
        "describe_endpoint": ("endpoint", "EndpointStatus"),
    }
    for operation, request in status_requests(name).items():
        try:
            found = getattr(sm, operation)(**request)
        except ClientError:
            continue
        kind, key = status_keys[operation]
        reason = found.get("FailureReason", "")
        return {"name": name, "kind": kind, "status": found[key], **({"failure_reason": reason} if reason else {})}
    raise NeuronforgeError(
        f"no training job, processing job or endpoint named '{name}'",
        "check the name and --region (`aws sagemaker list-endpoints`)",
    )


def delete_endpoint(name: str, sm: BaseClient) -> list[str]:
    """Delete the endpoint, its config and its model; return what was deleted (missing ones are skipped)."""
    from botocore.exceptions import ClientError

    deleted = []
    for operation, request in delete_requests(name).items():
        try:
            getattr(sm, operation)(**request)
        except ClientError:
            continue
        deleted.append(f"{operation.removeprefix('delete_').replace('_', ' ')} {name}")
    if not deleted:
        raise NeuronforgeError(f"nothing named '{name}' to delete", "check the name and --region")
    return deleted
