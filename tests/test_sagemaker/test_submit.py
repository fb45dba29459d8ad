"""Every submitter against moto (real boto3 calls, in-process `mock_aws`).

moto 5.2.5 needs one documented adjustment (research/sagemaker.md §4.4, patch 1): its CreateEndpointConfig checks
InstanceType against a stale list without ml.inf2, so that check is switched off here. neuronforge validates
instance types itself against botocore's current enums before any call.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest
from testkit.fakes import make_compiled, push_neuron_image
from testkit.golden import ROLE
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.invoke import completion_body, invoke
from neuronforge.sagemaker.packaging import package_model, s3_sha256, upload_package, verify_remote_package
from neuronforge.sagemaker.requests import (
    JobSettings,
    compile_processing_request,
    deployment_requests,
    quantize_job_request,
)
from neuronforge.sagemaker.submit import delete_endpoint, deploy, status, submit_job, wait_for_job

REGION = "us-east-1"
BUCKET = "nf-test-bucket"
RELEASE = "neuronforge==0.1.0"  # an explicit --install spec where shipping the code is not under test


@pytest.fixture
def aws(aws_env: str) -> tuple[Any, Any]:
    s3 = boto3.client("s3", region_name=aws_env)
    s3.create_bucket(Bucket=BUCKET)
    return boto3.client("sagemaker", region_name=aws_env), s3


@pytest.fixture
def package(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    compiled = make_compiled(tmp_path)
    # Over the 8 MiB multipart threshold: exercises the managed multipart upload and the composite checksum.
    (compiled / "weights" / "tp1_sharded_checkpoint.safetensors").write_bytes(os.urandom(9 * 1024 * 1024))
    return package_model(tmp_path / "pkg", compiled=compiled, checkpoint=tiny_llama_dir)


def test_upload_is_multipart_and_verified(aws: tuple[Any, Any], package: Path) -> None:
    _, s3 = aws
    keys = upload_package(package, f"s3://{BUCKET}/pkg", s3)
    assert keys[-1] == "pkg/manifest.json"
    big = "pkg/compiled/weights/tp1_sharded_checkpoint.safetensors"
    head = s3.head_object(Bucket=BUCKET, Key=big, ChecksumMode="ENABLED")
    expected = s3_sha256(package / "compiled/weights/tp1_sharded_checkpoint.safetensors")
    assert expected.endswith("-2") and head["ChecksumSHA256"] == expected.removesuffix("-2")
    manifest = verify_remote_package(f"s3://{BUCKET}/pkg/", s3, "2.28")
    assert manifest["serving"]["tp_degree"] == 2


@pytest.fixture
def kms_bucket(aws: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    """The stack's bucket: SSE-KMS by default. S3 documents that such objects' ETags are not MD5 digests of the data;
    moto still returns the MD5, so its ETag is made opaque for KMS objects as real S3's is."""
    import hashlib

    import moto.s3.models as moto_s3

    real_etag = moto_s3.FakeKey.etag

    def kms_etag(key: Any) -> str:
        if key.encryption == "aws:kms":
            return '"' + hashlib.md5(f"kms:{key.name}:{key.size}".encode()).hexdigest() + '"'
        return real_etag.fget(key)

    monkeypatch.setattr(moto_s3.FakeKey, "etag", property(kms_etag))
    _, s3 = aws
    s3.create_bucket(Bucket="nf-kms-bucket")
    rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}, "BucketKeyEnabled": True}
    s3.put_bucket_encryption(Bucket="nf-kms-bucket", ServerSideEncryptionConfiguration={"Rules": [rule]})
    return "nf-kms-bucket"


def test_upload_verifies_sha256_on_an_sse_kms_bucket(aws: tuple[Any, Any], kms_bucket: str, package: Path) -> None:
    _, s3 = aws
    keys = upload_package(package, f"s3://{kms_bucket}/pkg/", s3)
    head = s3.head_object(Bucket=kms_bucket, Key=keys[0], ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "aws:kms" and head["ChecksumSHA256"]
    assert verify_remote_package(f"s3://{kms_bucket}/pkg/", s3, "2.28")["serving"]["tp_degree"] == 2


def test_upload_refuses_an_object_whose_checksum_differs(
    aws: tuple[Any, Any], package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neuronforge.sagemaker import packaging

    _, s3 = aws
    real = packaging.s3_sha256
    monkeypatch.setattr(packaging, "s3_sha256", lambda path: real(path) if path.name != "serving.json" else "AAAA")
    with pytest.raises(NeuronforgeError, match="uploaded objects differ from the local files: serving.json"):
        upload_package(package, f"s3://{BUCKET}/pkg", s3)


def test_remote_verification_catches_missing_and_stray_objects(aws: tuple[Any, Any], package: Path) -> None:
    _, s3 = aws
    with pytest.raises(NeuronforgeError, match="GetObject failed: NoSuchKey") as info:
        verify_remote_package(f"s3://{BUCKET}/pkg/", s3, "2.28")
    assert info.value.fix and "neuronforge package DIR --upload s3://nf-test-bucket/pkg/" in info.value.fix
    upload_package(package, f"s3://{BUCKET}/pkg", s3)
    s3.put_object(Bucket=BUCKET, Key="pkg/stray.txt", Body=b"x")
    with pytest.raises(NeuronforgeError, match="not in manifest: stray.txt"):
        verify_remote_package(f"s3://{BUCKET}/pkg/", s3, "2.28")
    s3.delete_object(Bucket=BUCKET, Key="pkg/stray.txt")
    s3.delete_object(Bucket=BUCKET, Key="pkg/compiled/model.pt")
    with pytest.raises(NeuronforgeError, match="missing: compiled/model.pt"):
        verify_remote_package(f"s3://{BUCKET}/pkg/", s3, "2.28")


def test_upload_refuses_a_tampered_package(aws: tuple[Any, Any], package: Path) -> None:
    _, s3 = aws
    (package / "serving.json").write_text("{}")
    with pytest.raises(NeuronforgeError, match="checksum mismatch: serving.json"):
        upload_package(package, f"s3://{BUCKET}/pkg", s3)
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_missing_bucket_fails_clearly(aws: tuple[Any, Any], package: Path) -> None:
    sm, s3 = aws
    with pytest.raises(NeuronforgeError, match="S3 upload failed") as info:
        upload_package(package, "s3://no-such-bucket-nf/pkg/", s3)
    assert "no-such-bucket-nf" in str(info.value.fix)
    job = JobSettings(name="nf-q", role_arn=ROLE, region=REGION, instance_type="ml.g6e.2xlarge")
    request = quantize_job_request(
        job, model_s3="s3://no-such-bucket-nf/m/", output_s3=f"s3://{BUCKET}/o/", install=RELEASE
    )
    with pytest.raises(NeuronforgeError, match="ListObjectsV2 failed: NoSuchBucket"):
        submit_job(request, sm, s3)
    s3.put_object(Bucket=BUCKET, Key="m/config.json", Body=b"{}")
    request = quantize_job_request(
        job, model_s3=f"s3://{BUCKET}/m/", output_s3="s3://no-such-bucket-nf/o/", install=RELEASE
    )
    with pytest.raises(NeuronforgeError, match="HeadBucket failed") as info:
        submit_job(request, sm, s3)
    assert "no-such-bucket-nf" in str(info.value.fix) and sm.list_training_jobs()["TrainingJobSummaries"] == []


def test_training_and_processing_jobs(aws: tuple[Any, Any], tiny_llama_dir: Path) -> None:
    sm, s3 = aws
    job = JobSettings(name="nf-quantize-1", role_arn=ROLE, region=REGION, instance_type="ml.g6e.2xlarge")
    request = quantize_job_request(
        job, model_s3=f"s3://{BUCKET}/models/tiny", output_s3=f"s3://{BUCKET}/runs", install=RELEASE
    )
    with pytest.raises(NeuronforgeError, match="no S3 object under s3://nf-test-bucket/models/tiny/"):
        submit_job(request, sm, s3)
    assert sm.list_training_jobs()["TrainingJobSummaries"] == []
    for item in tiny_llama_dir.iterdir():
        s3.upload_file(str(item), BUCKET, f"models/tiny/{item.name}")
    arn = submit_job(request, sm, s3)
    assert arn.endswith(":training-job/nf-quantize-1")
    described = sm.describe_training_job(TrainingJobName="nf-quantize-1")
    assert described["ResourceConfig"]["InstanceType"] == "ml.g6e.2xlarge"
    assert described["OutputDataConfig"] == request["OutputDataConfig"]
    assert described["AlgorithmSpecification"]["TrainingImage"] == request["AlgorithmSpecification"]["TrainingImage"]
    assert wait_for_job(request, sm) == "Completed"
    assert status("nf-quantize-1", sm)["kind"] == "training job"

    processing = compile_processing_request(
        JobSettings(name="nf-compile-cpu", role_arn=ROLE, region=REGION, instance_type="ml.r7i.8xlarge"),
        checkpoint_s3=f"s3://{BUCKET}/models/tiny",
        output_s3=f"s3://{BUCKET}/runs",
        tp_degree=2,
        install=RELEASE,
    )
    submit_job(processing, sm, s3)
    assert wait_for_job(processing, sm) == "Completed"
    assert status("nf-compile-cpu", sm) == {"name": "nf-compile-cpu", "kind": "processing job", "status": "Completed"}


def test_deploy_status_invoke_delete(aws: tuple[Any, Any], package: Path) -> None:
    sm, s3 = aws
    upload_package(package, f"s3://{BUCKET}/pkg", s3)
    requests = deployment_requests(
        "nf-ep", role_arn=ROLE, region=REGION, model_data_s3=f"s3://{BUCKET}/pkg", instance_type="ml.inf2.xlarge"
    )
    arn = deploy(requests, sm, s3, wait=True)
    assert arn.endswith(":endpoint/nf-ep")
    model = sm.describe_model(ModelName="nf-ep")
    assert (
        model["PrimaryContainer"]["ModelDataSource"] == requests["create_model"]["PrimaryContainer"]["ModelDataSource"]
    )
    assert model["PrimaryContainer"]["Environment"]["VLLM_NEURON_FRAMEWORK"] == "neuronx-distributed-inference"
    variant = sm.describe_endpoint_config(EndpointConfigName="nf-ep")["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.inf2.xlarge"
    assert status("nf-ep", sm) == {"name": "nf-ep", "kind": "endpoint", "status": "InService"}

    import requests as http

    canned = {"choices": [{"index": 0, "text": " Paris.", "finish_reason": "stop"}]}
    http.post(
        "http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results",
        json={"results": [{"Body": json.dumps(canned), "ContentType": "application/json"}]},
        timeout=5,
    )
    runtime = boto3.client("sagemaker-runtime", region_name=REGION)
    assert invoke("nf-ep", completion_body("The capital of France is", 8), runtime) == " Paris."

    assert delete_endpoint("nf-ep", sm) == ["endpoint nf-ep", "endpoint config nf-ep", "model nf-ep"]
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    with pytest.raises(NeuronforgeError, match="no training job, processing job or endpoint named 'nf-ep'"):
        status("nf-ep", sm)
    with pytest.raises(NeuronforgeError, match="nothing named 'nf-ep'"):
        delete_endpoint("nf-ep", sm)


def test_deploy_refuses_before_creating_anything(aws: tuple[Any, Any], tmp_path: Path, tiny_llama_dir: Path) -> None:
    sm, s3 = aws
    requests = deployment_requests(
        "nf-ep", role_arn=ROLE, region=REGION, model_data_s3=f"s3://{BUCKET}/pkg4", instance_type="ml.inf2.xlarge"
    )
    with pytest.raises(NeuronforgeError, match="NoSuchKey"):
        deploy(requests, sm, s3)
    wide = package_model(tmp_path / "pkg4", compiled=make_compiled(tmp_path, tp_degree=4), checkpoint=tiny_llama_dir)
    upload_package(wide, f"s3://{BUCKET}/pkg4", s3)
    with pytest.raises(NeuronforgeError, match=r"tp_degree 4 does not fit ml.inf2.xlarge \(2 NeuronCores\)"):
        deploy(requests, sm, s3)
    assert sm.list_models()["Models"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []


def test_deploy_rolls_back_what_it_created(
    aws: tuple[Any, Any], package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real AWS refuses a second CreateModel with the same name, so a failed deploy must not leave its model behind."""
    import moto.sagemaker.models as moto_models

    sm, s3 = aws
    upload_package(package, f"s3://{BUCKET}/pkg", s3)
    requests = deployment_requests(
        "nf-ep", role_arn=ROLE, region=REGION, model_data_s3=f"s3://{BUCKET}/pkg", instance_type="ml.inf2.xlarge"
    )
    monkeypatch.undo()  # moto's own (stale) instance list: CreateEndpointConfig now fails after CreateModel
    assert moto_models.FakeEndpointConfig.validate_instance_type is not None
    with pytest.raises(NeuronforgeError, match=r"CreateEndpointConfig failed.*rolled back: model nf-ep"):
        deploy(requests, sm, s3)
    assert sm.list_models()["Models"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []


def test_status_and_delete_tell_not_found_from_access_denied(aws: tuple[Any, Any]) -> None:
    from botocore.stub import Stubber

    sm, _ = aws
    with pytest.raises(NeuronforgeError, match="no training job, processing job or endpoint named 'nf-x'"):
        status("nf-x", sm)
    for code in ("AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException"):
        with Stubber(sm) as stub:
            stub.add_client_error("describe_training_job", service_error_code=code, service_message="no")
            with pytest.raises(NeuronforgeError, match=f"DescribeTrainingJob failed: {code}") as info:
                status("nf-x", sm)
            assert "credentials" in str(info.value.fix)
        with Stubber(sm) as stub:
            stub.add_client_error("describe_endpoint", service_error_code=code, service_message="no")
            with pytest.raises(NeuronforgeError, match=f"DescribeEndpoint failed: {code}"):
                delete_endpoint("nf-x", sm)


def test_cli_aws_failures_are_errors_not_tracebacks(aws: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: a connection error
    for args in (["sagemaker", "status", "nf-x"], ["sagemaker", "delete", "nf-x"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "could not reach AWS" in result.output, result.output
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for args in (["sagemaker", "status", "nf-x"], ["sagemaker", "delete", "nf-x"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "no usable AWS credentials" in result.output, result.output


def test_deploy_refuses_a_package_compiled_for_another_sdk(aws: tuple[Any, Any], package: Path) -> None:
    """R5/NEW-4: the endpoint's image must be the package's compile SDK's; a pre-R5 manifest names none."""
    sm, s3 = aws
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["compile_sdk"] == "2.28"
    upload_package(package, f"s3://{BUCKET}/pkg228", s3)
    requests = deployment_requests(
        "nf-ep", role_arn=ROLE, region=REGION, model_data_s3=f"s3://{BUCKET}/pkg228", instance_type="ml.inf2.xlarge",
        sdk="2.31",
    )  # fmt: skip
    with pytest.raises(
        NeuronforgeError, match=r"compiled with Neuron SDK 2\.28, but the endpoint would run the SDK 2\.31"
    ) as info:
        deploy(requests, sm, s3)
    assert info.value.fix == "deploy with --sdk 2.28"
    manifest.pop("compile_sdk")
    (package / "manifest.json").write_text(json.dumps(manifest))
    upload_package(package, f"s3://{BUCKET}/old", s3)
    requests = deployment_requests(
        "nf-ep", role_arn=ROLE, region=REGION, model_data_s3=f"s3://{BUCKET}/old", instance_type="ml.inf2.xlarge"
    )
    with pytest.raises(
        NeuronforgeError, match=r"compiled with Neuron SDK unknown, but the endpoint would run the SDK 2\.28"
    ):
        deploy(requests, sm, s3)
    assert sm.list_models()["Models"] == []


def test_cli_package_upload_deploy_status_delete(aws: tuple[Any, Any], tmp_path: Path, tiny_llama_dir: Path) -> None:
    sm, _ = aws
    runner = CliRunner()
    push_neuron_image()
    out = tmp_path / "pkg"
    compiled = make_compiled(tmp_path)
    result = runner.invoke(
        app,
        [
            "package",
            str(out),
            "--compiled",
            str(compiled),
            "--checkpoint",
            str(tiny_llama_dir),
            "--upload",
            f"s3://{BUCKET}/cli-pkg/",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "left out compiled/quantized_checkpoint 7.00 kB" in " ".join(result.output.split())
    deploy_args = ["sagemaker", "deploy", "--model-data", f"s3://{BUCKET}/cli-pkg/", "--name", "nf-cli", "--role", ROLE]
    dry = runner.invoke(app, [*deploy_args, "--dry-run"])
    assert dry.exit_code == 0 and json.loads(dry.stdout)["create_endpoint"]["EndpointName"] == "nf-cli"
    assert sm.list_models()["Models"] == []  # --dry-run calls nothing
    assert runner.invoke(app, deploy_args).exit_code == 0
    shown = runner.invoke(app, ["sagemaker", "status", "nf-cli"])
    assert json.loads(shown.stdout)["status"] == "InService"
    assert runner.invoke(app, ["sagemaker", "delete", "nf-cli"]).exit_code == 0
    assert sm.list_endpoints()["Endpoints"] == []
    bad = runner.invoke(app, [*deploy_args[:-2], "--role", ROLE, "--instance-type", "ml.trn1.2xlarge"])
    assert bad.exit_code == 2 and "cannot run an inf2 endpoint" in bad.output


def test_cli_refuses_a_neuron_image_that_was_never_pushed(aws: tuple[Any, Any], tiny_llama_dir: Path) -> None:
    sm, s3 = aws
    s3.put_object(Bucket=BUCKET, Key="ckpt/config.json", Body=b"{}")
    args = ["sagemaker", "compile", "--checkpoint-s3", f"s3://{BUCKET}/ckpt/", "--output-s3", f"s3://{BUCKET}/runs/"]
    result = CliRunner().invoke(app, [*args, "--tp-degree", "2", "--role", ROLE, "--install", RELEASE])
    assert result.exit_code == 2 and "RepositoryNotFoundException" in result.output, result.output
    assert "push" in " ".join(result.output.split()) and sm.list_training_jobs()["TrainingJobSummaries"] == []


def test_cli_quantize_and_compile_jobs(aws: tuple[Any, Any], tiny_llama_dir: Path) -> None:
    sm, s3 = aws
    push_neuron_image()
    for item in tiny_llama_dir.iterdir():
        s3.upload_file(str(item), BUCKET, f"models/tiny/{item.name}")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "sagemaker",
            "quantize",
            "--model-s3",
            f"s3://{BUCKET}/models/tiny/",
            "--output-s3",
            f"s3://{BUCKET}/runs/",
            "--name",
            "nf-q-cli",
            "--role",
            ROLE,
            "--wait",
        ],
    )
    assert result.exit_code == 0, result.output
    # The running neuronforge went up as a wheel next to the job's output, and the job installs that file.
    job = sm.describe_training_job(TrainingJobName="nf-q-cli")
    wheel = next(o for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/code/")["Contents"])
    digest = wheel["Key"].split("/")[2]
    assert wheel["Key"].endswith(".whl") and f"sha256 {digest}" in " ".join(result.output.split())
    body = s3.get_object(Bucket=BUCKET, Key=wheel["Key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == digest
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels["wheel"] == f"s3://{BUCKET}/runs/code/{digest}/"
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]}
    assert tags["neuronforge:wheel-sha256"] == digest
    assert f"s3://{BUCKET}/runs/nf-q-cli/output/model/checkpoint/" in result.output
    assert "finished: Completed" in result.output
    assert sm.describe_training_job(TrainingJobName="nf-q-cli")["ResourceConfig"]["InstanceType"] == "ml.g6e.2xlarge"
    result = runner.invoke(
        app,
        [
            "sagemaker",
            "compile",
            "--checkpoint-s3",
            f"s3://{BUCKET}/models/tiny/",
            "--output-s3",
            f"s3://{BUCKET}/runs/",
            "--tp-degree",
            "2",
            "--name",
            "nf-c-cli",
            "--role",
            ROLE,
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"s3://{BUCKET}/runs/nf-c-cli/output/model/package/" in result.output
    assert sm.describe_training_job(TrainingJobName="nf-c-cli")["ResourceConfig"]["InstanceType"] == "ml.trn1.2xlarge"
