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


def test_operator_policy_allows_every_call_of_the_readme_flow(
    recorded: list[tuple[str, str]], tmp_path: Path, tiny_llama_dir: Path
) -> None:
    runner = CliRunner()
    s3 = boto3.client("s3", region_name="us-east-1")
    for item in tiny_llama_dir.iterdir():
        s3.upload_file(str(item), BUCKET, f"models/tiny/{item.name}")
    push_neuron_image()
    recorded.clear()  # the test's own setup is not the operator's
    out, role = f"s3://{BUCKET}/runs/", ["--role", ROLE]
    commands = [
        ["sagemaker", "quantize", "--model-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out, "--name", "nf-q"],
        ["sagemaker", "compile", "--checkpoint-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out]
        + ["--tp-degree", "2", "--name", "nf-c"],
        ["sagemaker", "compile", "--checkpoint-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out]
        + ["--tp-degree", "2", "--name", "nf-cpu", "--processing"],
        ["package", str(tmp_path / "pkg"), "--compiled", str(make_compiled(tmp_path))]
        + ["--checkpoint", str(tiny_llama_dir), "--upload", f"s3://{BUCKET}/pkg/"],
        ["sagemaker", "deploy", "--model-data", f"s3://{BUCKET}/pkg/", "--name", "nf-ep", "--wait"],
        ["sagemaker", "status", "nf-ep"],
        ["sagemaker", "status", "nf-q"],
        ["invoke", "nf-ep", "Hi"],
        ["sagemaker", "delete", "nf-ep"],
        ["sagemaker", "pipeline", "--model-s3", f"s3://{BUCKET}/models/tiny/", "--output-s3", out]
        + ["--endpoint-name", "nf-ep"],
    ]
    for args in commands:
        takes_role = args[0] == "sagemaker" and args[1] not in ("status", "delete")
        result = runner.invoke(app, [*args, *(role if takes_role else [])])
        assert result.exit_code == 0 or args[0] == "invoke", (args, result.output)

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
