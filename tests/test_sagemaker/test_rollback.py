"""Failures and interrupts during deploy, upload and `--wait`, against moto (real boto3 calls, in-process).

moto answers every call successfully, so the faults are injected where botocore lets a caller see a call: a
`before-call` hook answers with an AWS error, an `after-call` hook rewrites a Describe* answer (an endpoint that
fails, a job that is stopped), and a patched `_make_api_call` sends SIGINT at a given call, as Ctrl-C would.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.client import BaseClient
from testkit.fakes import make_compiled, push_neuron_image
from testkit.golden import ROLE
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.packaging import package_model, upload_package
from neuronforge.sagemaker.requests import JobSettings, compile_processing_request, deployment_requests
from neuronforge.sagemaker.submit import deploy, submit_job, wait_for_job

REGION = "us-east-1"
BUCKET = "nf-test-bucket"


@pytest.fixture
def aws(aws_env: str) -> tuple[Any, Any]:
    s3 = boto3.client("s3", region_name=aws_env)
    s3.create_bucket(Bucket=BUCKET)
    return boto3.client("sagemaker", region_name=aws_env), s3


@pytest.fixture
def package(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    return package_model(tmp_path / "pkg", compiled=make_compiled(tmp_path), checkpoint=tiny_llama_dir)


def _deploy_requests() -> dict[str, Any]:
    return deployment_requests(
        "nf-ep", role_arn=ROLE, region=REGION, model_data_s3=f"s3://{BUCKET}/pkg", instance_type="ml.inf2.xlarge"
    )


def _nothing_left(sm: Any) -> bool:
    return not (sm.list_models()["Models"] or sm.list_endpoint_configs()["EndpointConfigs"] or _endpoints(sm))


def _endpoints(sm: Any) -> list[Any]:
    return sm.list_endpoints()["Endpoints"]


def _denied(operation: str) -> Any:
    """A before-call hook that answers `operation` with AccessDeniedException, as IAM would."""

    def hook(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
        error = {"Error": {"Code": "AccessDeniedException", "Message": f"not allowed: {operation}"}}
        return AWSResponse("https://sagemaker", 400, {}, None), error | {"ResponseMetadata": {"HTTPStatusCode": 400}}

    return hook


def _sigint_at(monkeypatch: pytest.MonkeyPatch, operation: str, nth: int = 1) -> None:
    """Ctrl-C arrives just as the `nth` call of `operation` starts (on any client, in any thread)."""
    real = BaseClient._make_api_call
    seen = {"n": 0}

    def interrupted(self: BaseClient, name: str, params: dict[str, Any]) -> Any:
        if name == operation:
            seen["n"] += 1
            if seen["n"] == nth:
                signal.raise_signal(signal.SIGINT)
        return real(self, name, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", interrupted)


def test_deploy_wait_rolls_back_an_endpoint_that_fails(aws: tuple[Any, Any], package: Path) -> None:
    """N3: the endpoint ends Failed during --wait; model, config and endpoint are all deleted, the reason kept."""
    sm, s3 = aws
    upload_package(package, f"s3://{BUCKET}/pkg", s3)

    def failed(parsed: dict[str, Any], **kwargs: Any) -> None:
        parsed |= {"EndpointStatus": "Failed", "FailureReason": "health check did not pass in time"}

    sm.meta.events.register("after-call.sagemaker.DescribeEndpoint", failed)
    with pytest.raises(NeuronforgeError) as info:
        deploy(_deploy_requests(), sm, s3, wait=True)
    assert "health check did not pass in time" in info.value.what
    assert "rolled back: endpoint nf-ep, endpoint config nf-ep, model nf-ep" in info.value.what
    assert _nothing_left(sm)


def test_a_failing_rollback_keeps_the_original_error_and_deletes_the_rest(aws: tuple[Any, Any], package: Path) -> None:
    """N5: CreateEndpoint and then DeleteEndpointConfig are denied: the model is still deleted, the CreateEndpoint
    error is the one reported, and the config left behind is named with the command that removes it."""
    sm, s3 = aws
    upload_package(package, f"s3://{BUCKET}/pkg", s3)
    sm.meta.events.register("before-call.sagemaker.CreateEndpoint", _denied("CreateEndpoint"))
    sm.meta.events.register("before-call.sagemaker.DeleteEndpointConfig", _denied("DeleteEndpointConfig"))
    with pytest.raises(NeuronforgeError) as info:
        deploy(_deploy_requests(), sm, s3, region=REGION)
    what = info.value.what
    assert what.startswith("CreateEndpoint failed: AccessDeniedException") and "rolled back: model nf-ep" in what
    assert "left behind: endpoint config nf-ep (DeleteEndpointConfig failed: AccessDeniedException" in what
    assert "neuronforge sagemaker delete nf-ep --region us-east-1" in info.value.fix
    assert sm.list_models()["Models"] == []
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == ["nf-ep"]


def test_ctrl_c_during_deploy_rolls_back_and_says_so(
    aws: tuple[Any, Any], package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N3, N6: Ctrl-C while CreateEndpoint is in flight. The call completes (the interrupt is held), then all three
    are deleted, and the message says what happened in AWS instead of 'left no partial output'."""
    sm, s3 = aws
    upload_package(package, f"s3://{BUCKET}/pkg", s3)
    push_neuron_image()
    _sigint_at(monkeypatch, "CreateEndpoint")
    args = ["sagemaker", "deploy", "--model-data", f"s3://{BUCKET}/pkg", "--name", "nf-ep", "--role", ROLE]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert "rolled back: endpoint nf-ep, endpoint config nf-ep, model nf-ep" in text
    assert "left no partial output" not in text
    assert _nothing_left(sm)


def test_ctrl_c_during_upload_removes_what_it_wrote(
    aws: tuple[Any, Any], tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N6: `package --upload` interrupted halfway leaves no objects (and no manifest) under the prefix."""
    _, s3 = aws
    _sigint_at(monkeypatch, "PutObject", nth=3)
    args = ["package", str(tmp_path / "pkg"), "--compiled", str(make_compiled(tmp_path))]
    result = CliRunner().invoke(app, [*args, "--checkpoint", str(tiny_llama_dir), "--upload", f"s3://{BUCKET}/up/"])
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert f"removed the objects this upload had written under s3://{BUCKET}/up/" in text
    assert "left no partial output" not in text
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="up/")["KeyCount"] == 0


def test_ctrl_c_during_a_job_submit_says_the_job_exists(aws: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """N6: a job created while Ctrl-C was held keeps running; the message says so and how to stop it."""
    sm, s3 = aws
    s3.put_object(Bucket=BUCKET, Key="ckpt/config.json", Body=b"{}")
    push_neuron_image()
    _sigint_at(monkeypatch, "CreateTrainingJob")
    args = ["sagemaker", "compile", "--checkpoint-s3", f"s3://{BUCKET}/ckpt/", "--output-s3", f"s3://{BUCKET}/runs/"]
    result = CliRunner().invoke(app, [*args, "--tp-degree", "2", "--role", ROLE, "--install", "neuronforge==0.1.0"])
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert "was created and keeps running" in text and "aws sagemaker stop-training-job --training-job-name" in text
    assert "left no partial output" not in text
    assert len(sm.list_training_jobs()["TrainingJobSummaries"]) == 1


def _processing_request() -> dict[str, Any]:
    return compile_processing_request(
        JobSettings(name="nf-cpu", role_arn=ROLE, region=REGION, instance_type="ml.r7i.8xlarge"),
        checkpoint_s3=f"s3://{BUCKET}/ckpt/",
        output_s3=f"s3://{BUCKET}/runs/",
        tp_degree=2,
        install="neuronforge==0.1.0",
    )


def test_wait_lasts_as_long_as_the_job_may_run(aws: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """N8: a processing job with the default 4 h --max-runtime still runs after botocore's 1 h (60 polls of 60 s)."""
    sm, s3 = aws
    s3.put_object(Bucket=BUCKET, Key="ckpt/config.json", Body=b"{}")
    request = _processing_request()
    submit_job(request, sm, s3)
    polls = {"n": 0}

    def in_progress(parsed: dict[str, Any], **kwargs: Any) -> None:
        polls["n"] += 1
        if polls["n"] <= 90:  # 1.5 h of polls
            parsed["ProcessingJobStatus"] = "InProgress"

    sm.meta.events.register("after-call.sagemaker.DescribeProcessingJob", in_progress)
    monkeypatch.setattr("botocore.waiter.time.sleep", lambda seconds: None)
    assert wait_for_job(request, sm) == "Completed" and polls["n"] > 90


def test_wait_fails_for_a_stopped_job(aws: tuple[Any, Any]) -> None:
    """N8: a job stopped at its MaxRuntime did not produce its output: --wait exits non-zero with the reason."""
    sm, s3 = aws
    s3.put_object(Bucket=BUCKET, Key="ckpt/config.json", Body=b"{}")
    request = _processing_request()
    submit_job(request, sm, s3)

    def stopped(parsed: dict[str, Any], **kwargs: Any) -> None:
        parsed |= {"ProcessingJobStatus": "Stopped", "ExitMessage": "MaxRuntimeInSeconds exceeded"}

    sm.meta.events.register("after-call.sagemaker.DescribeProcessingJob", stopped)
    with pytest.raises(NeuronforgeError, match="processing job nf-cpu ended Stopped: MaxRuntimeInSeconds exceeded"):
        wait_for_job(request, sm)


def test_delete_removes_what_pipeline_runs_left(aws: tuple[Any, Any]) -> None:
    """N10: each pipeline execution leaves a model `pipelines-<exec>-Model-...` and a config `<endpoint>-<exec>`;
    `delete NAME` removed only the endpoint. Unrelated resources with similar names stay."""
    sm, _ = aws
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/neuronforge:x"

    def model(name: str) -> None:
        sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": image})

    def config(name: str, model_name: str) -> None:
        variant = {"VariantName": "AllTraffic", "ModelName": model_name, "InstanceType": "ml.inf2.xlarge"}
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{**variant, "InitialInstanceCount": 1}])

    for execution in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        model(f"pipelines-{execution}-Model-x1")
        config(f"nf-pipe-{execution}", f"pipelines-{execution}-Model-x1")
    sm.create_endpoint(EndpointName="nf-pipe", EndpointConfigName="nf-pipe-bbbbbbbbbbbb")
    model("other")
    config("nf-pipe2", "other")
    result = CliRunner().invoke(app, ["sagemaker", "delete", "nf-pipe"])
    assert result.exit_code == 0, result.output
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["other"]
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == ["nf-pipe2"]
    assert _endpoints(sm) == []
    assert "model pipelines-aaaaaaaaaaaa-Model-x1" in " ".join(result.output.split())
