"""Thin boto3 submitters: check inputs in S3, then make the call a request builder prepared.

All validation of the request itself already happened in `requests.py`; this module only talks to AWS and turns
botocore failures into NeuronforgeError.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from neuronforge.core import s3uri
from neuronforge.core.aws import call, call_or_none, client, translate, uninterrupted
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.images import pinned
from neuronforge.sagemaker.instances import validate_tp_degree
from neuronforge.sagemaker.packaging import verify_remote_package
from neuronforge.sagemaker.requests import SDK_TAG, Request, status_requests, validate_name

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
        fix=f"build and push {image} (docs/sagemaker-guide.md, 'Images'), set NEURONFORGE_IMAGE_REPOSITORY, or pass --image",
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
    its private image; return its ARN. An interrupt during the create call is held until it returns, then
    raised with a note saying the job exists and how to stop it."""
    check_inputs_exist(request, s3)
    check_output_buckets(request, s3)
    if ecr is not None:
        spec = request.get("AlgorithmSpecification") or request["AppSpecification"]
        check_private_image(spec.get("TrainingImage") or spec["ImageUri"], ecr)
    kind, _, key = _job_kind(request)
    arn = ""
    try:
        with uninterrupted():
            arn = call(getattr(sm, f"create_{kind}"), **request)[f"{kind.title().replace('_', '')}Arn"]
    except KeyboardInterrupt as exc:
        if arn:
            exc.add_note(job_left_running(request, sm.meta.region_name, "was created"))
            exc.add_note(stop_job_fix(request, sm.meta.region_name))
        raise
    return str(arn)


def job_left_running(request: Request, region: str, how: str) -> str:
    name = request.get("TrainingJobName") or request["ProcessingJobName"]
    return f"job {name} {how} and keeps running in {region} (its name stays taken there)"


def stop_job_fix(request: Request, region: str) -> str:
    kind, _, key = _job_kind(request)
    name = next(iter(key.values()))
    flag = kind.replace("_", "-")
    return (
        f"follow it with `neuronforge sagemaker status {name} --region {region}`, or stop it with "
        f"`aws sagemaker stop-{flag} --{flag}-name {name} --region {region}`"
    )


# Beyond a job's own limits: provisioning, image pull and the model upload happen outside MaxRuntime.
WAIT_MARGIN_S = 3600


def _job_kind(request: Request) -> tuple[str, str, dict[str, str]]:
    """(kind, status key, describe key) of a training or processing job request."""
    if "TrainingJobName" in request:
        return "training_job", "TrainingJobStatus", {"TrainingJobName": request["TrainingJobName"]}
    return "processing_job", "ProcessingJobStatus", {"ProcessingJobName": request["ProcessingJobName"]}


def wait_limit_s(request: Request) -> int:
    """How long `--wait` waits: as long as the job itself may run (spot: MaxWaitTime), plus WAIT_MARGIN_S."""
    stop = request["StoppingCondition"]
    return int(stop.get("MaxWaitTimeInSeconds") or stop["MaxRuntimeInSeconds"]) + WAIT_MARGIN_S


def _wait(sm: BaseClient, waiter_name: str, seconds: int, key: dict[str, str]) -> None:
    """botocore's waiter, polling for `seconds` instead of its fixed default (1 h for processing jobs and
    endpoints); a terminal failure state returns, so the caller can report the resource's own reason."""
    from botocore.exceptions import WaiterError

    waiter = sm.get_waiter(waiter_name)
    attempts = -(-seconds // waiter.config.delay)
    try:
        waiter.wait(**key, WaiterConfig={"Delay": waiter.config.delay, "MaxAttempts": attempts})
    except WaiterError as exc:
        if "terminal failure state" not in str(exc):
            raise NeuronforgeError(
                f"stopped waiting after {seconds} s: {exc}",
                "the resource is still going: see `neuronforge sagemaker status NAME`",
            ) from None
    except Exception as exc:
        raise translate(exc) or exc from None


def wait_for_job(request: Request, sm: BaseClient) -> str:
    """Wait as long as the job may run; Completed returns, Stopped or Failed is an error with the job's reason."""
    kind, status_key, key = _job_kind(request)
    _wait(sm, f"{kind}_completed_or_stopped", wait_limit_s(request), key)
    found = call(getattr(sm, f"describe_{kind}"), **key)
    status = found[status_key]
    if status != "Completed":
        name = next(iter(key.values()))
        reason = found.get("FailureReason") or found.get("ExitMessage") or "no reason given"
        raise NeuronforgeError(
            f"{kind.replace('_', ' ')} {name} ended {status}: {reason}",
            "see `neuronforge sagemaker status "
            + name
            + "` and the job's CloudWatch logs (/aws/sagemaker/"
            + ("TrainingJobs" if kind == "training_job" else "ProcessingJobs")
            + "); a Stopped job hit --max-runtime (raise it) or was stopped",
        )
    return str(status)


def endpoint_wait_s(requests: dict[str, Request]) -> int:
    """The endpoint may take its model download plus its container startup timeouts, plus WAIT_MARGIN_S."""
    variant = requests["create_endpoint_config"]["ProductionVariants"][0]
    timeouts = variant.get("ModelDataDownloadTimeoutInSeconds", 3600) + variant.get(
        "ContainerStartupHealthCheckTimeoutInSeconds", 3600
    )
    return int(timeouts) + WAIT_MARGIN_S


def wait_for_endpoint(requests: dict[str, Request], sm: BaseClient) -> None:
    """Wait until InService; an endpoint that ends Failed (or anything else) is an error with its FailureReason."""
    name = requests["create_endpoint"]["EndpointName"]
    _wait(sm, "endpoint_in_service", endpoint_wait_s(requests), {"EndpointName": name})
    found = call(sm.describe_endpoint, EndpointName=name)
    if found["EndpointStatus"] != "InService":
        raise NeuronforgeError(
            f"endpoint {name} is {found['EndpointStatus']}: {found.get('FailureReason') or 'no reason given'}",
            f"see the endpoint's CloudWatch logs (/aws/sagemaker/Endpoints/{name})",
        )


def check_package(requests: dict[str, Request], s3: BaseClient) -> None:
    """Before anything is created: the package in S3 matches its manifest and its tp_degree fits the instance."""
    model_data = requests["create_model"]["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"]
    tags = {tag["Key"]: tag["Value"] for tag in requests["create_model"].get("Tags", [])}
    manifest = verify_remote_package(model_data, s3, tags[SDK_TAG])
    variant = requests["create_endpoint_config"]["ProductionVariants"][0]
    validate_tp_degree(variant["InstanceType"], manifest["serving"]["tp_degree"])


def deploy(
    requests: dict[str, Request],
    sm: BaseClient,
    s3: BaseClient,
    wait: bool = False,
    ecr: BaseClient | None = None,
    region: str | None = None,
) -> str:
    """Verify the package in S3 (manifest, sizes, tp vs NeuronCores), then model -> endpoint config -> endpoint.

    If a step fails, `--wait` sees the endpoint fail, or the user interrupts (Ctrl-C, SIGTERM), what this call
    created is deleted again (newest first), so a re-run with the same name starts clean. Interrupts are held while
    a create call is in flight, so the list of what exists is exact. A delete that fails does not stop the others;
    the error keeps the original failure and names what is left and the command that removes it.
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
            with uninterrupted():
                answer = call(getattr(sm, create), **requests[create])
                created.append((delete, key))
        if wait:
            wait_for_endpoint(requests, sm)
    except NeuronforgeError as exc:
        raise NeuronforgeError(*_rolled_back(sm, created, exc.what, exc.fix or "", region)) from None
    except KeyboardInterrupt as exc:
        what, fix = _rolled_back(sm, created, "", "", region)
        exc.add_note(what.removeprefix(" ").strip("()") or "nothing was created yet")
        if fix:
            exc.add_note(fix.removeprefix("; "))
        raise
    return str(answer["EndpointArn"])


def _rolled_back(
    sm: BaseClient, created: list[tuple[str, dict[str, str]]], what: str, fix: str, region: str | None
) -> tuple[str, str]:
    """Delete what deploy created, newest first, going on past failures; (what, fix) extended with the outcome."""
    undone, left = [], []
    with uninterrupted():
        for delete, key in reversed(created):
            label = f"{delete.removeprefix('delete_').replace('_', ' ')} {next(iter(key.values()))}"
            try:
                call_or_none(getattr(sm, delete), **key)
                undone.append(label)
            except NeuronforgeError as exc:
                left.append(f"{label} ({exc.what})")
    if undone:
        what += f" (rolled back: {', '.join(undone)})"
    if left:
        name = next(iter(created[0][1].values()))
        where = f" --region {region}" if region else ""
        what += f"; left behind: {'; '.join(left)}"
        fix += f"; then remove what is left: neuronforge sagemaker delete {name}{where}"
    return what, fix


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
    """Delete the endpoint `name`, its endpoint configs and their models; return what was deleted.

    `deploy` names all three `name`. A pipeline names each execution's config `<name>-<execution id>` and its model
    itself (`pipelines-<execution id>-Model-...`), and every execution leaves one of each: those configs (found by
    name) and the models they reference go too. Only missing ones are skipped.
    """
    validate_name(name, "endpoint")
    endpoint = call_or_none(sm.describe_endpoint, EndpointName=name)
    configs = [name, *_pipeline_configs(name, sm)]
    if endpoint and endpoint["EndpointConfigName"] not in configs:
        configs.append(endpoint["EndpointConfigName"])
    models = [name]
    for config in configs:
        found = call_or_none(sm.describe_endpoint_config, EndpointConfigName=config)
        models += [v["ModelName"] for v in (found or {}).get("ProductionVariants", []) if v["ModelName"] not in models]
    deleted = []
    if endpoint and call_or_none(sm.delete_endpoint, EndpointName=name) is not None:
        deleted.append(f"endpoint {name}")
    for config in configs:
        if call_or_none(sm.delete_endpoint_config, EndpointConfigName=config) is not None:
            deleted.append(f"endpoint config {config}")
    for model in models:
        if call_or_none(sm.delete_model, ModelName=model) is not None:
            deleted.append(f"model {model}")
    if not deleted:
        raise NeuronforgeError(f"nothing named '{name}' to delete", "check the name and --region")
    return deleted


def _pipeline_configs(name: str, sm: BaseClient) -> list[str]:
    """Endpoint configs a pipeline made for endpoint `name`: `<name>-<12-character execution id>`."""
    pattern = re.compile(re.escape(name) + r"-[a-z0-9]{12}")
    pages = call(lambda: list(sm.get_paginator("list_endpoint_configs").paginate(NameContains=name)))
    names = [c["EndpointConfigName"] for page in pages for c in page["EndpointConfigs"]]
    return sorted(n for n in names if pattern.fullmatch(n))
