"""SDK v3 objects from our requests (ModelTrainer, core.resources), and the SDK example of docs/sagemaker-guide.md, against moto."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from testkit.fakes import deploy_stack, make_compiled
from testkit.golden import ROLE

from neuronforge.sagemaker.code import CodeBundle
from neuronforge.sagemaker.packaging import package_model, upload_package
from neuronforge.sagemaker.requests import JobSettings, compile_job_request

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "sagemaker-guide.md"
TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "neuronforge.yaml"
BUCKET = "nf-sdk-bucket"


@pytest.fixture
def sdk_moto(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """moto returns `{}` for unset VpcConfig/DataCaptureConfig, which the SDK's resource models cannot hydrate;
    drop those keys from moto's Describe answers (research note, SDK v3 against moto, patch 2)."""
    import moto.sagemaker.responses as responses
    from moto.core.responses import ActionResult

    def clean(found: dict[str, Any]) -> ActionResult:
        return ActionResult({k: v for k, v in found.items() if v != {}})

    backend = responses.SageMakerResponse
    monkeypatch.setattr(
        backend,
        "describe_model",
        lambda self: clean(self.sagemaker_backend.describe_model(self._get_param("ModelName")).response_object),
    )
    monkeypatch.setattr(
        backend,
        "describe_endpoint_config",
        lambda self: clean(self.sagemaker_backend.describe_endpoint_config(self._get_param("EndpointConfigName"))),
    )
    monkeypatch.setattr(
        backend,
        "describe_endpoint",
        lambda self: clean(self.sagemaker_backend.describe_endpoint(self._get_param("EndpointName"))),
    )
    s3 = boto3.client("s3", region_name=aws_env)
    s3.create_bucket(Bucket=BUCKET)
    return s3


def test_model_trainer_carries_the_request(sdk_moto: Any) -> None:
    from neuronforge.sagemaker import sdk

    code = CodeBundle(f"s3://{BUCKET}/runs/code/{'ab' * 32}/", "neuronforge-0.1.0-py3-none-any.whl", "ab" * 32)
    request = compile_job_request(
        JobSettings(name="nf-c", role_arn=ROLE, region="us-east-1", instance_type="ml.trn1.32xlarge", spot=True),
        checkpoint_s3=f"s3://{BUCKET}/ckpt/",
        output_s3=f"s3://{BUCKET}/runs/",
        tp_degree=12,
        target_instance="ml.inf2.24xlarge",
        code=code,
    )
    trainer = sdk.model_trainer(request, region="us-east-1")
    trainer.train(wait=False, logs=False)
    sm = boto3.client("sagemaker", region_name="us-east-1")
    name = sm.list_training_jobs()["TrainingJobSummaries"][0]["TrainingJobName"]
    job = sm.describe_training_job(TrainingJobName=name)
    assert job["AlgorithmSpecification"]["TrainingImage"] == request["AlgorithmSpecification"]["TrainingImage"]
    assert job["ResourceConfig"] == {**request["ResourceConfig"], **job["ResourceConfig"]}
    assert job["OutputDataConfig"] == request["OutputDataConfig"] and job["EnableManagedSpotTraining"] is True
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels["wheel"] == code.s3_prefix and channels["checkpoint"] == f"s3://{BUCKET}/ckpt/"
    assert {"code", "sm_drivers"} <= set(channels)  # the SDK's driver runs our script from the code channel
    uploaded = sdk_moto.list_objects_v2(Bucket=BUCKET, Prefix="nf-c/")["Contents"]
    script = next(o["Key"] for o in uploaded if o["Key"].endswith(f"/code/{sdk.JOB_SCRIPT}"))
    body = sdk_moto.get_object(Bucket=BUCKET, Key=script)["Body"].read().decode()
    assert request["AlgorithmSpecification"]["ContainerEntrypoint"][2] in body
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]}
    assert tags["neuronforge:wheel-sha256"] == "ab" * 32


def test_guide_sdk_example_runs(sdk_moto: Any, tmp_path: Path, tiny_llama_dir: Path) -> None:
    block = re.search(r"## Python: SageMaker SDK v3\n.*?```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert block, "docs/sagemaker-guide.md lost its SDK v3 example"
    package = package_model(tmp_path / "pkg", compiled=make_compiled(tmp_path), checkpoint=tiny_llama_dir)
    upload_package(package, f"s3://{BUCKET}/pkg/llama/", sdk_moto)
    namespace: dict[str, Any] = {}
    exec(compile(block.group(1).replace("BUCKET", BUCKET), str(GUIDE), "exec"), namespace)
    assert namespace["endpoint"].endpoint_name == "nf-llama"
    sm = boto3.client("sagemaker", region_name="us-east-1")
    assert sm.describe_endpoint(EndpointName="nf-llama")["EndpointStatus"] == "InService"
    wheel = sdk_moto.list_objects_v2(Bucket=BUCKET, Prefix="runs/code/")["Contents"][0]["Key"]
    job = sm.list_training_jobs()["TrainingJobSummaries"][0]["TrainingJobName"]
    channels = sm.describe_training_job(TrainingJobName=job)["InputDataConfig"]
    assert f"s3://{BUCKET}/{wheel.rsplit('/', 1)[0]}/" in [c["DataSource"]["S3DataSource"]["S3Uri"] for c in channels]


def test_model_trainer_leaves_no_temporary_files(
    sdk_moto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job script's folder lives as long as the trainer that uploads it, then goes (it piled up in /tmp)."""
    import gc
    import tempfile

    from neuronforge.sagemaker import sdk

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    request = compile_job_request(
        JobSettings(name="nf-c", role_arn=ROLE, region="us-east-1", instance_type="ml.trn1.32xlarge"),
        checkpoint_s3=f"s3://{BUCKET}/ckpt/",
        output_s3=f"s3://{BUCKET}/runs/",
        tp_degree=2,
        install="neuronforge==0.1.0",
    )
    trainer = sdk.model_trainer(request, region="us-east-1")
    (source_dir,) = tmp_path.iterdir()
    assert (source_dir / sdk.JOB_SCRIPT).is_file()  # there while the trainer can still upload it
    trainer.train(wait=False, logs=False)
    del trainer
    gc.collect()
    assert not any(tmp_path.iterdir())


def _document(document: str | dict[str, Any]) -> dict[str, Any]:
    """IAM returns policy documents URL-encoded JSON; moto keeps a CloudFormation-made one as a Python repr."""
    if isinstance(document, dict):
        return document
    text = urllib.parse.unquote(document)
    return json.loads(text) if text.startswith('{"') else ast.literal_eval(text)


def _simulate_from_moto(params: dict[str, Any], **kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
    """iam:SimulatePrincipalPolicy as IAM answers it without resource ARNs or context (the way the SDK calls it):
    an action is allowed only by an Allow statement on Resource "*" without a Condition. moto lacks this operation,
    so it is evaluated here from the role's real inline policies in moto."""
    body = params["body"]  # the query-protocol form: PolicySourceArn, ActionNames.member.N
    members = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in body.items() if k.startswith("ActionNames.member."))
    actions = [action for _, action in members]
    iam = boto3.client("iam", region_name="us-east-1")
    role = body["PolicySourceArn"].rsplit("/", 1)[1]
    documents = [
        iam.get_role_policy(RoleName=role, PolicyName=n) for n in iam.list_role_policies(RoleName=role)["PolicyNames"]
    ]
    statements = [statement for found in documents for statement in _document(found["PolicyDocument"])["Statement"]]

    def allowed(action: str) -> bool:
        return any(
            s["Effect"] == "Allow"
            and "Condition" not in s
            and "*" in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
            and any(
                fnmatch.fnmatch(action.lower(), a.lower())
                for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
            )
            for s in statements
        )

    results = [
        {"EvalActionName": a, "EvalResourceName": "*", "EvalDecision": "allowed" if allowed(a) else "implicitDeny"}
        for a in actions
    ]
    return AWSResponse("https://iam", 200, {}, None), {"EvaluationResults": results, "IsTruncated": False}


def test_model_trainer_accepts_the_stacks_own_role_with_role_validation_on(
    sdk_moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """N2: for a caller allowed to simulate IAM policies, ModelTrainer checks the role's permissions and raised
    RoleValidationError for the stack's execution role (no ec2 network-interface actions, conditional metrics)."""
    from neuronforge.sagemaker import sdk

    role = deploy_stack("neuronforge", "us-east-1", TEMPLATE)["ExecutionRoleArn"]
    iam = boto3.client("iam", region_name="us-east-1")
    name = role.rsplit("/", 1)[1]
    trust = _document(iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"])
    iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))  # JSON, as IAM stores it
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "true")
    session = boto3.session.Session(region_name="us-east-1")
    simulated: list[str] = []
    session.events.register("before-call.iam.SimulatePrincipalPolicy", _simulate_from_moto)
    session.events.register("after-call.iam.SimulatePrincipalPolicy", lambda **kw: simulated.append("called"))
    request = compile_job_request(
        JobSettings(name="nf-c", role_arn=role, region="us-east-1", instance_type="ml.trn1.32xlarge"),
        checkpoint_s3=f"s3://{BUCKET}/ckpt/",
        output_s3=f"s3://{BUCKET}/runs/",
        tp_degree=2,
        install="neuronforge==0.1.0",
    )
    trainer = sdk.model_trainer(request, region="us-east-1", boto_session=session)
    assert trainer.role == role and simulated


def test_model_trainer_job_names_stay_valid_and_unique(sdk_moto: Any) -> None:
    """N11: ModelTrainer appends '-<timestamp>' and cuts at 63: a 62-character --name became '<name>-' (invalid)."""
    from neuronforge.sagemaker import sdk
    from neuronforge.sagemaker.requests import validate_name

    name = "q" * 62
    request = compile_job_request(
        JobSettings(name=name, role_arn=ROLE, region="us-east-1", instance_type="ml.trn1.32xlarge"),
        checkpoint_s3=f"s3://{BUCKET}/ckpt/",
        output_s3=f"s3://{BUCKET}/runs/",
        tp_degree=2,
        install="neuronforge==0.1.0",
    )
    sdk.model_trainer(request, region="us-east-1").train(wait=False, logs=False)
    sm = boto3.client("sagemaker", region_name="us-east-1")
    created = sm.list_training_jobs()["TrainingJobSummaries"][0]["TrainingJobName"]
    assert validate_name(created) and re.fullmatch("q{48}-\\d{14}", created), created
