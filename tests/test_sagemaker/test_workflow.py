"""SDK v3 Pipeline: golden test of definition() and a moto upsert/start (skipped without the [sagemaker] extra)."""

from __future__ import annotations

import json

import pytest
from testkit.golden import ROLE, check_golden
from typer.testing import CliRunner


def _sdk_v3() -> bool:
    from importlib import metadata

    try:
        return int(metadata.version("sagemaker").split(".")[0]) >= 3
    except metadata.PackageNotFoundError:
        return False


pytestmark = pytest.mark.skipif(
    not _sdk_v3(),
    reason="the SageMaker SDK v3 extra is not installed: "
    "pip install 'neuronforge[sagemaker]' (the [dev] extra includes it)",
)

ARGS = [
    "sagemaker",
    "pipeline",
    "--model-s3",
    "s3://nf-bucket/models/smollm2/",
    "--output-s3",
    "s3://nf-bucket/runs/",
    "--endpoint-name",
    "nf-endpoint",
    "--role",
    ROLE,
    "--region",
    "us-east-1",
    "--name",
    "nf-pipeline",
]


def test_definition_golden_and_dry_run(aws_env: str) -> None:
    result = CliRunner().invoke(__import__("neuronforge.cli", fromlist=["app"]).app, [*ARGS, "--dry-run"])
    assert result.exit_code == 0, result.output
    definition = json.loads(result.stdout)
    check_golden("sagemaker_pipeline_definition", definition)
    steps = {s["Name"]: s for s in definition["Steps"]}
    assert [s["Type"] for s in definition["Steps"]] == ["Training", "Training", "Model", "EndpointConfig", "Endpoint"]
    quantize_input = steps["Quantize"]["Arguments"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert quantize_input == {"Get": "Parameters.ModelS3Uri"}
    compile_input = steps["Compile"]["Arguments"]["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert {"Get": "Steps.Quantize.TrainingJobName"} in compile_input["Std:Join"]["Values"]
    assert steps["Compile"]["Arguments"]["ResourceConfig"]["InstanceType"] == "ml.trn1.2xlarge"
    variant = steps["EndpointConfig"]["Arguments"]["ProductionVariants"][0]
    assert variant["ModelName"] == {"Get": "Steps.Model.ModelName"} and variant["InstanceType"] == "ml.inf2.xlarge"


def test_pipeline_validates_like_the_boto3_path(aws_env: str) -> None:
    from neuronforge.errors import NeuronforgeError
    from neuronforge.sagemaker.workflow import PipelineSettings, build_pipeline

    with pytest.raises(NeuronforgeError, match="not a valid SageMaker training instance type"):
        build_pipeline(
            PipelineSettings(
                name="p",
                role_arn=ROLE,
                region="us-east-1",
                model_s3="s3://nf-b/m/",
                output_s3="s3://nf-b/o/",
                endpoint_name="e",
                quantize_instance="ml.inf2.xlarge",
            )
        )


def test_upsert_and_start_against_moto(aws_env: str) -> None:
    import boto3

    result = CliRunner().invoke(__import__("neuronforge.cli", fromlist=["app"]).app, ARGS)
    assert result.exit_code == 0, result.output
    sm = boto3.client("sagemaker", region_name="us-east-1")
    described = sm.describe_pipeline(PipelineName="nf-pipeline")
    assert [s["Name"] for s in json.loads(described["PipelineDefinition"])["Steps"]][-1] == "Endpoint"
    assert sm.list_pipeline_executions(PipelineName="nf-pipeline")["PipelineExecutionSummaries"]
