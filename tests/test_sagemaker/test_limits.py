"""Every request the CLI can build, walked against botocore's shapes (min, max, pattern, enum, sizes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from testkit.golden import ROLE
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker import limits

OPERATIONS = {
    "create_training_job": ("sagemaker", "CreateTrainingJob"),
    "create_processing_job": ("sagemaker", "CreateProcessingJob"),
    "create_model": ("sagemaker", "CreateModel"),
    "create_endpoint_config": ("sagemaker", "CreateEndpointConfig"),
    "create_endpoint": ("sagemaker", "CreateEndpoint"),
    "describe_training_job": ("sagemaker", "DescribeTrainingJob"),
    "describe_processing_job": ("sagemaker", "DescribeProcessingJob"),
    "describe_endpoint": ("sagemaker", "DescribeEndpoint"),
    "delete_endpoint": ("sagemaker", "DeleteEndpoint"),
    "delete_endpoint_config": ("sagemaker", "DeleteEndpointConfig"),
    "delete_model": ("sagemaker", "DeleteModel"),
    "invoke_endpoint": ("sagemaker-runtime", "InvokeEndpoint"),
}
COMMON = ["--role", ROLE, "--dry-run"]
RELEASE = ["--install", "neuronforge==0.1.0"]
JOB_IO = ["--model-s3", "s3://nf-b/models/m/", "--output-s3", "s3://nf-b/runs/"]
CKPT_IO = ["--checkpoint-s3", "s3://nf-b/ckpt/", "--output-s3", "s3://nf-b/runs/"]
# One CLI invocation per distinct request shape and every option that changes a request.
MATRIX = {
    "quantize": ["sagemaker", "quantize", *JOB_IO, *RELEASE],
    "quantize-spot-fp8": ["sagemaker", "quantize", *JOB_IO, "--spot", "--max-wait", "28800", "--dtype", "f8e4m3"]
    + ["--no-autoround", "--instance-type", "ml.p5.48xlarge", *RELEASE],
    "quantize-shipped": ["sagemaker", "quantize", *JOB_IO],
    "compile": ["sagemaker", "compile", *CKPT_IO, "--tp-degree", "2", *RELEASE],
    "compile-48xl": ["sagemaker", "compile", *CKPT_IO, "--tp-degree", "24", "--target", "ml.inf2.48xlarge"]
    + ["--instance-type", "ml.trn1.32xlarge", "--kv", "bf16", "--seq-len", "4096", "--max-runtime", "2419200"],
    "compile-processing": ["sagemaker", "compile", *CKPT_IO, "--tp-degree", "2", "--processing", "--volume-gb", "1000"],
    "deploy": ["sagemaker", "deploy", "--model-data", "s3://nf-b/pkg/", "--name", "nf-llama"],
    "deploy-48xl": ["sagemaker", "deploy", "--model-data", "s3://nf-b/pkg/", "--instance-type", "ml.inf2.48xlarge"]
    + ["--volume-gb", "512", "--startup-timeout", "60"],
}
REGIONLESS = {
    "status": ["sagemaker", "status", "nf-llama", "--dry-run"],
    "delete": ["sagemaker", "delete", "nf-llama", "--dry-run"],
    "invoke": ["invoke", "nf-llama", "The capital of France is", "--max-tokens", "16", "--dry-run"],
}


def _dry_run(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, [*args, "--region", "us-east-1"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("case", [*MATRIX, *REGIONLESS])
def test_every_cli_request_is_within_the_api_limits(case: str, aws_env: str) -> None:
    args = [*MATRIX[case], *COMMON] if case in MATRIX else REGIONLESS[case]
    for call, request in _dry_run(args).items():
        service, operation = OPERATIONS[call]
        assert limits.problems(service, operation, request) == [], (call, request)


def _concrete(value: Any, member: str = "") -> Any:
    """Pipeline variables ({"Get": ...}, {"Std:Join": ...}) replaced by a value of the kind the member holds."""
    if isinstance(value, dict) and ({"Get", "Std:Join"} & set(value)):
        return "s3://nf-b/runs/x/" if "S3" in member else "nf-exec-1"
    if isinstance(value, dict):
        return {k: _concrete(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_concrete(v, member) for v in value]
    return value


def test_every_pipeline_step_is_within_the_api_limits(aws_env: str) -> None:
    definition = _dry_run(
        ["sagemaker", "pipeline", *JOB_IO, "--endpoint-name", "nf-llama", "--tp-degree", "2", *COMMON]
    )
    step_operations = {
        "Training": ("CreateTrainingJob", {"TrainingJobName": "nf-exec-1"}),
        "Model": ("CreateModel", {"ModelName": "nf-exec-1"}),
        "EndpointConfig": ("CreateEndpointConfig", {}),
        "Endpoint": ("CreateEndpoint", {}),
    }
    for step in definition["Steps"]:
        operation, names = step_operations[step["Type"]]
        request = _concrete(step["Arguments"]) | names
        assert limits.problems("sagemaker", operation, request) == [], step["Name"]


@pytest.mark.parametrize(
    ("operation", "request_", "message"),
    [
        ("DescribeEndpoint", {"EndpointName": "x" * 64}, "above the maximum 63"),
        ("DescribeEndpoint", {"EndpointName": "bad_name"}, "does not match EndpointName's pattern"),
        (
            "CreateEndpointConfig",
            {"EndpointConfigName": "c", "ProductionVariants": [{"VariantName": "v", "VolumeSizeInGB": 0}]},
            "below the minimum 1",
        ),
        (
            "CreateEndpoint",
            {"EndpointName": "e", "EndpointConfigName": "c", "Tags": [{"Key": "k", "Value": "é!"}]},
            "does not match TagValue's pattern",
        ),
        (
            "CreateEndpointConfig",
            {"EndpointConfigName": "c", "ProductionVariants": [{"VariantName": "v", "InstanceType": "ml.inf9.xlarge"}]},
            "is not one of the",
        ),
        ("CreateTrainingJob", {"StoppingCondition": {"MaxRuntimeInSeconds": 2419201}}, "above the maximum 2419200"),
    ],
)
def test_the_walker_catches_each_kind_of_limit(operation: str, request_: dict[str, Any], message: str) -> None:
    found = " ".join(m for _, m in limits.problems("sagemaker", operation, request_))
    assert message in found
    with pytest.raises(NeuronforgeError, match="would be rejected by AWS"):
        limits.check("sagemaker", operation, request_)
