"""The stack's OperatorPolicy allows every AWS call the CLI makes in the flow of docs/sagemaker-guide.md (recorded against moto)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode.cfn_yaml import load
from testkit.fakes import make_compiled, push_neuron_image
from testkit.golden import ROLE
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.sagemaker.code import build_wheel

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "neuronforge.yaml"
BUCKET = "nf-perm-bucket"
# IAM action of each S3/STS operation whose name differs from its action (S3 API reference, "Permissions").
S3_ACTIONS = {
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "HeadObject": "s3:GetObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
}


def _action(service: str, operation: str) -> str:
    if service == "s3":
        return S3_ACTIONS.get(operation, f"s3:{operation}")
    prefix = {"sagemaker-runtime": "sagemaker", "sagemaker": "sagemaker", "iam": "iam", "ecr": "ecr"}[service]
    return f"{prefix}:{operation}"


@pytest.fixture
def recorded(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    import botocore.client

    calls: list[tuple[str, str]] = []
    real = botocore.client.BaseClient._make_api_call

    def record(self: Any, operation: str, params: dict[str, Any]) -> Any:
        calls.append((self.meta.service_model.service_name, operation))
        return real(self, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    boto3.client("s3", region_name=aws_env).create_bucket(Bucket=BUCKET)
    return calls


def _readme_commands(tmp_path: Path, tiny_llama_dir: Path, round_: str) -> list[list[str]]:
    """The README's CLI flow; job names carry `round_` (a job name stays taken), the endpoint name is reused."""
    out = f"s3://{BUCKET}/runs/"
    package = tmp_path / f"pkg{round_}"
    return [
        ["sagemaker", "quantize", "--model-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out]
        + ["--name", f"nf-q{round_}"],
        ["sagemaker", "compile", "--checkpoint-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out]
        + ["--tp-degree", "2", "--name", f"nf-c{round_}"],
        ["sagemaker", "compile", "--checkpoint-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out]
        + ["--tp-degree", "2", "--name", f"nf-cpu{round_}", "--processing"],
        ["package", str(package), "--compiled", str(make_compiled(tmp_path / f"c{round_}"))]
        + ["--checkpoint", str(tiny_llama_dir), "--upload", f"s3://{BUCKET}/pkg/"],
        ["sagemaker", "deploy", "--model-data", f"s3://{BUCKET}/pkg/", "--name", "nf-ep", "--wait"],
        ["sagemaker", "status", "nf-ep"],
        ["sagemaker", "status", f"nf-q{round_}"],
        ["invoke", "nf-ep", "Hi"],
        ["sagemaker", "delete", "nf-ep"],
        ["sagemaker", "pipeline", "--model-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out]
        + ["--endpoint-name", "nf-ep"],
    ]


def _run_readme_flow(
    runner: CliRunner, tmp_path: Path, tiny_llama_dir: Path, round_: str, ship: list[str] | None = None
) -> None:
    """Run the flow; `ship` (e.g. ["--wheel", PATH]) goes to the commands that ship code."""
    (tmp_path / f"c{round_}").mkdir(exist_ok=True)
    for args in _readme_commands(tmp_path, tiny_llama_dir, round_):
        takes_role = args[0] == "sagemaker" and args[1] not in ("status", "delete")
        ships = args[0] == "sagemaker" and args[1] in ("quantize", "compile", "pipeline")
        extra = (["--role", ROLE] if takes_role else []) + ((ship or []) if ships else [])
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 0 or args[0] == "invoke", (args, result.output)


def test_readme_flow_runs_twice_against_moto_server(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same flow over HTTP (moto_server, as a user's AWS_ENDPOINT_URL would point), twice: what the first round
    left (the package prefix, the deleted endpoint's name, the pipeline) must not break the second."""
    import moto.sagemaker.models as moto_models
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "SAGEMAKER_VALIDATE_ROLE": "false",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setattr(moto_models.FakeEndpointConfig, "validate_instance_type", lambda self, instance_type: None)
    server = ThreadedMotoServer(port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        for item in tiny_llama_dir.iterdir():
            s3.upload_file(str(item), BUCKET, f"models/tiny/{item.name}")
        push_neuron_image()
        runner = CliRunner()
        wheel = build_wheel(tmp_path / "wheel")  # built once: the flow with shipping is the test below
        for round_ in ("1", "2"):
            _run_readme_flow(runner, tmp_path, tiny_llama_dir, round_, ["--wheel", str(wheel)])
        sm = boto3.client("sagemaker", region_name="us-east-1")
        assert len(sm.list_training_jobs()["TrainingJobSummaries"]) == 4 and sm.list_endpoints()["Endpoints"] == []
        assert len(sm.list_pipeline_executions(PipelineName="neuronforge")["PipelineExecutionSummaries"]) == 2
    finally:
        server.stop()


def test_operator_policy_allows_every_call_of_the_readme_flow(
    recorded: list[tuple[str, str]], tmp_path: Path, tiny_llama_dir: Path
) -> None:
    runner = CliRunner()
    s3 = boto3.client("s3", region_name="us-east-1")
    for item in tiny_llama_dir.iterdir():
        s3.upload_file(str(item), BUCKET, f"models/tiny/{item.name}")
    push_neuron_image()
    recorded.clear()  # the test's own setup is not the operator's
    _run_readme_flow(runner, tmp_path, tiny_llama_dir, "")

    template = load(str(TEMPLATE))
    statements = template["Resources"]["OperatorPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    allowed = {
        a
        for s in statements
        if s["Effect"] == "Allow"
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    needed = {_action(service, operation) for service, operation in recorded}
    assert {
        "sagemaker:CreateTrainingJob",
        "sagemaker:CreateEndpoint",
        "s3:PutObject",
        "sagemaker:CreatePipeline",
    } <= needed
    missing = sorted(a for a in needed if not any(fnmatch.fnmatch(a, pattern) for pattern in allowed))
    assert not missing, (missing, json.dumps(sorted(set(recorded))))
