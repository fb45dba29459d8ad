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
    result = CliRunner().invoke(
        __import__("neuronforge.cli", fromlist=["app"]).app, [*ARGS, "--dry-run", "--install", "neuronforge==0.1.0"]
    )
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
    # Each execution names its own endpoint config; the Endpoint step (create-or-update) points at it.
    config_name = steps["EndpointConfig"]["Arguments"]["EndpointConfigName"]
    assert config_name == {"Std:Join": {"On": "-", "Values": ["nf-endpoint", {"Get": "Execution.PipelineExecutionId"}]}}
    assert steps["Endpoint"]["Arguments"]["EndpointConfigName"] == {"Get": "Steps.EndpointConfig.EndpointConfigName"}
    assert "RetryPolicies" not in steps["Endpoint"]


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


def test_upsert_and_start_twice_against_moto_ships_the_wheel(aws_env: str) -> None:
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="nf-bucket")
    app = __import__("neuronforge.cli", fromlist=["app"]).app
    for _ in range(2):
        result = CliRunner().invoke(app, ARGS)
        assert result.exit_code == 0, result.output
    sm = boto3.client("sagemaker", region_name="us-east-1")
    definition = json.loads(sm.describe_pipeline(PipelineName="nf-pipeline")["PipelineDefinition"])
    assert [s["Name"] for s in definition["Steps"]][-1] == "Endpoint"
    assert len(sm.list_pipeline_executions(PipelineName="nf-pipeline")["PipelineExecutionSummaries"]) == 2
    quantize = definition["Steps"][0]["Arguments"]
    wheel_prefix = next(c for c in quantize["InputDataConfig"] if c["ChannelName"] == "wheel")
    key = wheel_prefix["DataSource"]["S3DataSource"]["S3Uri"].removeprefix("s3://nf-bucket/")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="nf-bucket", Prefix=key)["Contents"]][0].endswith(".whl")
    assert quantize["Environment"]["NF_SHA256"] == key.split("/")[-2]


def test_steps_are_picklable_sdk_steps_and_the_env_is_left_alone(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import pickle

    from neuronforge.sagemaker.workflow import PipelineSettings, build_pipeline

    monkeypatch.delenv("AWS_DEFAULT_REGION")
    settings = PipelineSettings(
        name="p",
        role_arn=ROLE,
        region="eu-west-1",
        model_s3="s3://nf-b/m/",
        output_s3="s3://nf-b/o/",
        endpoint_name="e",
        install="neuronforge==0.1.0",
    )
    pipeline = build_pipeline(settings)
    assert "AWS_DEFAULT_REGION" not in os.environ
    step = pickle.loads(pickle.dumps(pipeline.steps[0]))
    assert step.name == "Quantize" and step.arguments["ResourceConfig"]["InstanceType"] == "ml.g6e.2xlarge"


def test_endpoint_name_leaves_room_for_the_execution_id(aws_env: str) -> None:
    app = __import__("neuronforge.cli", fromlist=["app"]).app
    args = [*ARGS, "--install", "neuronforge==0.1.0", "--endpoint-name", "e" * 55]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "shorten --endpoint-name" in " ".join(result.output.split())


def test_sdk_refusals_become_error_fix(aws_env: str) -> None:
    from sagemaker.core.helper.iam_role_resolver import RoleValidationError

    from neuronforge.errors import NeuronforgeError
    from neuronforge.sagemaker.workflow import sdk_errors

    with pytest.raises(NeuronforgeError, match="the SageMaker SDK refused: RoleValidationError") as info:
        with sdk_errors():
            raise RoleValidationError("role nf does not exist")
    assert "--role" in str(info.value.fix)
    with pytest.raises(KeyError):  # not the SDK's: a bug, left as a traceback
        with sdk_errors():
            raise KeyError("x")


def test_the_pipeline_s_quantize_job_takes_the_gpu_preset() -> None:
    """The quantize step runs on a GPU instance: its calibration defaults are the one gpu preset, not copies."""
    import dataclasses

    from neuronforge.core.presets import KNOBS, PRESETS
    from neuronforge.sagemaker.workflow import PipelineSettings

    defaults = {f.name: f.default for f in dataclasses.fields(PipelineSettings)}
    assert {knob: defaults[knob] for knob in KNOBS} == {knob: getattr(PRESETS["gpu"], knob) for knob in KNOBS}


def test_pipeline_names_are_checked_as_pipeline_names_not_job_names(aws_env: str) -> None:
    """N12: a legal 200-character pipeline name was refused as '<name>-quantize' (a job name, at most 63)."""
    app = __import__("neuronforge.cli", fromlist=["app"]).app
    base = [a for a in ARGS if a not in ("--name", "nf-pipeline")] + ["--install", "neuronforge==0.1.0", "--dry-run"]
    result = CliRunner().invoke(app, [*base, "--name", "p" * 200])
    assert result.exit_code == 0, result.output
    refused = CliRunner().invoke(app, [*base, "--name", "p" * 257])
    assert refused.exit_code == 2 and "not a valid SageMaker pipeline name" in refused.output


def test_the_pipeline_runs_as_its_own_role_and_its_jobs_as_the_execution_role(aws_env: str) -> None:
    """N13: the pipeline's role (which may create jobs and pass the execution role) is not the jobs' role."""
    import boto3

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="nf-bucket")
    pipeline_role = ROLE.replace("neuronforge-sagemaker", "neuronforge-pipeline")
    app = __import__("neuronforge.cli", fromlist=["app"]).app
    result = CliRunner().invoke(app, [*ARGS, "--install", "neuronforge==0.1.0", "--pipeline-role", pipeline_role])
    assert result.exit_code == 0, result.output
    described = boto3.client("sagemaker", region_name="us-east-1").describe_pipeline(PipelineName="nf-pipeline")
    assert described["RoleArn"] == pipeline_role
    steps = json.loads(described["PipelineDefinition"])["Steps"]
    assert {s["Arguments"]["RoleArn"] for s in steps if "RoleArn" in s["Arguments"]} == {ROLE}
