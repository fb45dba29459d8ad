"""Request builders: golden request dicts, botocore's own input validation, and bad input failing before AWS."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator
from testkit.golden import ROLE, check_golden

from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker import images, instances, requests
from neuronforge.sagemaker.code import CodeBundle
from neuronforge.sagemaker.requests import (
    JobSettings,
    delete_requests,
    deployment_requests,
    training_output_prefix,
)

# A shipped wheel (code.py) as the builders receive it; its sha256 is a stand-in value.
CODE = CodeBundle(f"s3://nf-bucket/runs/code/{'ab' * 32}/", "neuronforge-0.1.0-py3-none-any.whl", "ab" * 32)
quantize_job_request = functools.partial(requests.quantize_job_request, code=CODE)
compile_job_request = functools.partial(requests.compile_job_request, code=CODE)
compile_processing_request = functools.partial(requests.compile_processing_request, code=CODE)


def check_botocore(operation: str, request: dict[str, Any]) -> None:
    """botocore's own validation of the request against the SageMaker input shape (types, lengths, keys)."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    report = ParamValidator().validate(request, model.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


def job(instance: str, name: str = "nf-job", **kw: Any) -> JobSettings:
    return JobSettings(name=name, role_arn=ROLE, region="us-east-1", instance_type=instance, **kw)


def test_quantize_job_golden() -> None:
    request = quantize_job_request(
        job("ml.g6e.2xlarge", "nf-quantize", spot=True, max_runtime_s=7200),
        model_s3="s3://nf-bucket/models/smollm2",
        output_s3="s3://nf-bucket/runs",
        dtype="f8e4m3",
        options={"iters": 50, "nsamples": 32, "autoround": False},
    )
    check_botocore("CreateTrainingJob", request)
    check_golden("sagemaker_quantize_job", request)
    assert request["OutputDataConfig"]["CompressionType"] == "NONE"
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200, "MaxWaitTimeInSeconds": 14400}
    assert request["AlgorithmSpecification"]["ContainerArguments"][-1] == "--no-autoround"


def test_compile_job_golden() -> None:
    request = compile_job_request(
        job("ml.trn1.32xlarge", "nf-compile"),
        checkpoint_s3="s3://nf-bucket/ckpt/",
        output_s3="s3://nf-bucket/runs/",
        tp_degree=24,
        target_instance="ml.inf2.48xlarge",
    )
    check_botocore("CreateTrainingJob", request)
    check_golden("sagemaker_compile_job", request)
    assert (
        request["Environment"]["NEURON_PLATFORM_TARGET_OVERRIDE"] == "trn1"
    )  # inf2 and trn1 are both NeuronCore-v2; NxD only knows "trn1"
    spec = request["AlgorithmSpecification"]
    assert all(len(item) <= 256 for item in spec["ContainerEntrypoint"] + spec["ContainerArguments"])  # API limit
    assert request["AlgorithmSpecification"]["TrainingImage"].endswith(
        "/neuronforge:neuron-sdk2.28.0-vllm0.13.0-nf0.1.0"
    )  # the default SDK's image compiles (and `--sdk 2.28` is passed to compile)
    env = request["Environment"]  # NEW-6: work folders on the job's storage volume, not the container's root
    assert env["TMPDIR"].startswith("/opt/ml/input/data/") and env["BASE_COMPILE_WORK_DIR"].startswith(env["TMPDIR"])
    other = compile_job_request(
        job("ml.trn1.32xlarge", "nf-compile"), checkpoint_s3="s3://nf-bucket/ckpt/", output_s3="s3://nf-bucket/runs/",
        tp_degree=24, target_instance="ml.inf2.48xlarge", sdk="2.31",
    )  # fmt: skip
    assert other["AlgorithmSpecification"]["TrainingImage"].endswith("/neuronforge:neuron-sdk2.31.1-vllm0.16.0-nf0.1.0")
    assert other["AlgorithmSpecification"]["ContainerArguments"][-2:] == ["--sdk", "2.31"]


def test_compile_processing_golden() -> None:
    request = compile_processing_request(
        job("ml.r7i.8xlarge", "nf-compile-cpu"),
        checkpoint_s3="s3://nf-bucket/ckpt/",
        output_s3="s3://nf-bucket/runs/",
        tp_degree=2,
    )
    check_botocore("CreateProcessingJob", request)
    check_golden("sagemaker_compile_processing_job", request)


def test_status_and_delete_requests_are_valid() -> None:
    for call, request in delete_requests("nf-ep").items():
        check_botocore("".join(p.title() for p in call.split("_")), request)
    with pytest.raises(NeuronforgeError, match="not a valid SageMaker endpoint name"):
        delete_requests("nf_ep")


def test_deployment_golden() -> None:
    requests = deployment_requests(
        "nf-endpoint",
        role_arn=ROLE,
        region="eu-west-1",
        model_data_s3="s3://nf-bucket/pkg",
        instance_type="ml.inf2.24xlarge",
        tp_degree=12,
        volume_gb=128,
    )
    for call, request in requests.items():
        check_botocore("".join(p.title() for p in call.split("_")), request)
    check_golden("sagemaker_deployment", requests)
    source = requests["create_model"]["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]
    assert source == {"S3Uri": "s3://nf-bucket/pkg/", "S3DataType": "S3Prefix", "CompressionType": "None"}
    variant = requests["create_endpoint_config"]["ProductionVariants"][0]
    assert variant["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-neuron-2"


def test_regional_dlc_account_and_role_account() -> None:
    request = quantize_job_request(job("ml.g5.xlarge"), model_s3="s3://b-1/m/", output_s3="s3://b-1/o/")
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith("763104351884.dkr.ecr.us-east-1.")
    assert images.image_uri("quantize", "af-south-1", "1").startswith("626614931356.dkr.ecr.af-south-1.")
    assert images.image_uri("neuron", "eu-west-1", "123456789012").startswith("123456789012.dkr.ecr.eu-west-1.")


# aws/deep-learning-containers docs/reference/region_availability.md; GovCloud from the SDK's pytorch.json.
DLC_ACCOUNTS = {
    "us-east-1": "763104351884",
    "ap-southeast-5": "550225433462",
    "eu-south-1": "692866216735",
    "il-central-1": "780543022126",
    "mx-central-1": "637423239942",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "us-gov-west-1": "442386744353",
}


@pytest.mark.parametrize("region", sorted(images.sagemaker_regions()))
def test_every_sagemaker_region_gets_its_dlc_account_and_domain(region: str) -> None:
    partition = images.sagemaker_regions()[region]
    if partition not in images.SUPPORTED_PARTITIONS:
        with pytest.raises(NeuronforgeError, match="no AWS Deep Learning Container registry"):
            images.image_uri("quantize", region, "123456789012")
        return
    uri = images.image_uri("quantize", region, "123456789012")
    account, _, rest = uri.partition(".dkr.ecr.")
    assert account == images.pinned()["dlc_registry_accounts"][region]
    assert account == DLC_ACCOUNTS.get(region, account)
    assert rest.startswith(f"{region}.amazonaws.com{'.cn' if partition == 'aws-cn' else ''}/pytorch:")
    role = f"arn:{partition}:iam::123456789012:role/nf"
    request = quantize_job_request(
        JobSettings(name="nf-q", role_arn=role, region=region, instance_type="ml.g6e.2xlarge"),
        model_s3="s3://b-1/m/",
        output_s3="s3://b-1/o/",
    )
    assert request["AlgorithmSpecification"]["TrainingImage"] == uri


def test_region_and_partition_are_checked() -> None:
    with pytest.raises(NeuronforgeError, match="'us-east-7' is not a region where SageMaker runs"):
        quantize_job_request(
            JobSettings(name="nf-q", role_arn=ROLE, region="us-east-7", instance_type="ml.g6e.2xlarge"),
            model_s3="s3://b-1/m/",
            output_s3="s3://b-1/o/",
        )
    with pytest.raises(NeuronforgeError, match="partition aws but region cn-north-1 is in aws-cn"):
        deployment_requests(
            "ep", role_arn=ROLE, region="cn-north-1", model_data_s3="s3://b-1/p/", instance_type="ml.inf2.xlarge"
        )


def test_quantize_image_keeps_the_torch_neuronforge_pins() -> None:
    """The DLC's torch (2.13.0+cu130) satisfies our torch==X pin, so pip keeps it instead of replacing it."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    torch_pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert torch_pin == f"torch=={images.pinned()['images']['quantize']['torch']}"
    assert images.pinned()["images"]["quantize"]["eop"] >= "2027-01-01"


def test_neuron_image_tag_is_per_version_and_repository_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from neuronforge.version import __version__

    repository = "123456789012.dkr.ecr.us-east-1.amazonaws.com/neuronforge"
    uri = images.image_uri("neuron", "us-east-1", "123456789012")
    assert uri == f"{repository}:neuron-sdk2.28.0-vllm0.13.0-nf{__version__}"  # the default SDK's
    uri = images.image_uri("neuron", "us-east-1", "123456789012", "2.31")
    assert uri == f"{repository}:neuron-sdk2.31.1-vllm0.16.0-nf{__version__}"
    with pytest.raises(NeuronforgeError, match="no serving image for Neuron SDK '2.29'"):
        images.image_uri("neuron", "us-east-1", "123456789012", "2.29")
    monkeypatch.setenv(images.REPOSITORY_ENV, "123456789012.dkr.ecr.us-east-1.amazonaws.com/nf-stack-2")
    assert images.image_uri("neuron", "us-east-1", "1").startswith(
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/nf-stack-2:"
    )


def test_training_output_prefix() -> None:
    assert (
        training_output_prefix("s3://b-1/runs", "nf-q", "checkpoint") == "s3://b-1/runs/nf-q/output/model/checkpoint/"
    )


@pytest.mark.parametrize(
    ("builder", "instance", "message"),
    [
        ("quantize", "ml.inf2.xlarge", "not a valid SageMaker training instance type"),
        ("quantize", "ml.bogus.xlarge", "not a valid SageMaker training instance type"),
        ("quantize", "ml.trn1.2xlarge", "cannot run a GPU training job"),
        ("compile", "ml.g6e.2xlarge", "cannot run a Neuron compile training job"),
        ("compile-cpu", "ml.trn1.2xlarge", "not a valid SageMaker processing instance type"),
        ("compile-cpu", "ml.p4d.24xlarge", "not a valid SageMaker processing instance type"),
        ("quantize", "g6e.2xlarge", "lacks the 'ml.' prefix"),
    ],
)
def test_wrong_instance_for_job_kind(builder: str, instance: str, message: str) -> None:
    with pytest.raises(NeuronforgeError, match=message):
        if builder == "quantize":
            quantize_job_request(job(instance), model_s3="s3://b-1/m/", output_s3="s3://b-1/o/")
        elif builder == "compile":
            compile_job_request(job(instance), checkpoint_s3="s3://b-1/c/", output_s3="s3://b-1/o/", tp_degree=2)
        else:
            compile_processing_request(job(instance), checkpoint_s3="s3://b-1/c/", output_s3="s3://b-1/o/", tp_degree=2)


def test_endpoint_must_be_inf2_and_tp_must_fit() -> None:
    with pytest.raises(NeuronforgeError, match="cannot run an inf2 endpoint"):
        deployment_requests(
            "ep", role_arn=ROLE, region="us-east-1", model_data_s3="s3://b-1/p/", instance_type="ml.g5.xlarge"
        )
    with pytest.raises(NeuronforgeError, match=r"tp_degree 4 does not fit ml.inf2.8xlarge \(2 NeuronCores\)"):
        deployment_requests(
            "ep",
            role_arn=ROLE,
            region="us-east-1",
            model_data_s3="s3://b-1/p/",
            instance_type="ml.inf2.8xlarge",
            tp_degree=4,
        )
    with pytest.raises(NeuronforgeError, match="tp_degree 32 does not fit ml.inf2.48xlarge"):
        compile_job_request(
            job("ml.trn1.32xlarge"),
            checkpoint_s3="s3://b-1/c/",
            output_s3="s3://b-1/o/",
            tp_degree=32,
            target_instance="ml.inf2.48xlarge",
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "bad_name"}, "not a valid SageMaker job name"),
        ({"role_arn": "neuronforge-role"}, "is not an IAM role ARN"),
        ({"spot": True, "max_wait_s": 60}, "shorter than max runtime"),
        ({"max_runtime_s": 0}, "MaxRuntimeInSeconds is 0, below the minimum 1"),
        ({"max_runtime_s": 29 * 24 * 3600}, "MaxRuntimeInSeconds is 2505600, above the maximum 2419200"),
        ({"volume_gb": 0}, "volume size 0 GB is too small"),
        ({"name": "x" * 64}, "not a valid SageMaker job name"),
    ],
)
def test_bad_job_settings(change: dict[str, Any], message: str) -> None:
    settings = {"name": "nf-q", "role_arn": ROLE, "region": "us-east-1", "instance_type": "ml.g6e.2xlarge", **change}
    with pytest.raises(NeuronforgeError, match=message):
        quantize_job_request(JobSettings(**settings), model_s3="s3://b-1/m/", output_s3="s3://b-1/o/")


def test_bad_s3_uri_dtype_and_timeout() -> None:
    with pytest.raises(NeuronforgeError, match="is not an s3:// URI"):
        quantize_job_request(job("ml.g6e.2xlarge"), model_s3="/local/model", output_s3="s3://b-1/o/")
    with pytest.raises(NeuronforgeError, match="--dtype 'fp4' is not supported"):
        quantize_job_request(job("ml.g6e.2xlarge"), model_s3="s3://b-1/m/", output_s3="s3://b-1/o/", dtype="fp4")
    with pytest.raises(NeuronforgeError, match="ContainerStartupHealthCheckTimeoutInSeconds is 7200, above the max"):
        deployment_requests(
            "ep",
            role_arn=ROLE,
            region="us-east-1",
            model_data_s3="s3://b-1/p/",
            instance_type="ml.inf2.xlarge",
            startup_timeout_s=7200,
        )


def test_neuron_catalogue() -> None:
    assert instances.neuron_cores("ml.inf2.xlarge") == instances.neuron_cores("inf2.8xlarge") == 2
    assert instances.neuron_cores("ml.inf2.24xlarge") == 12
    assert instances.neuron_cores("inf2.48xlarge") == 24
    assert instances.neuron_cores("ml.trn1.32xlarge") == 32
    assert instances.accelerator("ml.inf2.xlarge") == "neuron"
    assert instances.accelerator("ml.p4d.24xlarge") == "gpu"
    assert instances.accelerator("ml.r7i.8xlarge") == "cpu"
    with pytest.raises(NeuronforgeError, match="not a known Neuron instance type"):
        instances.neuron_cores("ml.g5.xlarge")
    # Every catalogued Neuron type is one SageMaker endpoints accept.
    assert {f"ml.{n}" for n in instances.NEURON_INSTANCES} <= instances.allowed_instance_types("endpoint")


def test_dockerfile_base_matches_pinned_image() -> None:
    """The Dockerfile's default base is the default SDK's; each SDK's image pins the NxDI versions.py pins."""
    from neuronforge.neuron.nxdi.versions import DEFAULT_SDK, SDKS

    dockerfile = (Path(images.__file__).parent / "serving" / "Dockerfile").read_text()
    assert f"ARG BASE={images.neuron_image(DEFAULT_SDK)['base']}\n" in dockerfile
    served = {key for key in images.pinned()["images"]["neuron"] if not key.startswith("_")}
    assert served == set(SDKS)
    for sdk in SDKS:
        image = images.neuron_image(sdk)
        assert image["nxdi"] == SDKS[sdk].nxdi and f"sdk{sdk}." in image["base"] and f"sdk{sdk}." in image["uri"]
        assert SDKS[sdk].neuronx_cc in (image["neuronx_cc"], None)


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the CLI with no AWS credentials anywhere: any AWS call would fail, so passing proves none was made."""
    from typer.testing import CliRunner

    from neuronforge.cli import app

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return CliRunner().invoke(app, args)


def test_cli_dry_run_prints_the_builder_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--role", ROLE, "--region", "us-east-1", "--dry-run", "--install", "neuronforge==0.1.0"]
    result = _cli(
        [
            "sagemaker",
            "quantize",
            "--model-s3",
            "s3://nf-b/m/",
            "--output-s3",
            "s3://nf-b/o/",
            "--name",
            "nf-q",
            "--no-autoround",
            *common,
        ],
        monkeypatch,
    )
    assert result.exit_code == 0, result.output
    expected = requests.quantize_job_request(
        job("ml.g6e.2xlarge", "nf-q"),
        model_s3="s3://nf-b/m/",
        output_s3="s3://nf-b/o/",
        options={"iters": 50, "nsamples": 32, "calib_seq_len": 256, "autoround": False},
        install="neuronforge==0.1.0",
    )
    assert json.loads(result.stdout) == {"create_training_job": expected}
    result = _cli(
        [
            "sagemaker",
            "compile",
            "--checkpoint-s3",
            "s3://nf-b/c/",
            "--output-s3",
            "s3://nf-b/o/",
            "--tp-degree",
            "2",
            "--processing",
            "--name",
            "nf-c",
            *common,
        ],
        monkeypatch,
    )
    assert (
        json.loads(result.stdout)["create_processing_job"]["ProcessingResources"]["ClusterConfig"]["InstanceType"]
        == "ml.r7i.8xlarge"
    )
    assert json.loads(
        _cli(["sagemaker", "delete", "nf-ep", "--region", "us-east-1", "--dry-run"], monkeypatch).stdout
    ) == delete_requests("nf-ep")
    assert json.loads(_cli(["sagemaker", "status", "nf-ep", "--region", "us-east-1", "--dry-run"], monkeypatch).stdout)[
        "describe_endpoint"
    ] == {"EndpointName": "nf-ep"}
    result = _cli(["invoke", "nf-ep", "Hello", "--max-tokens", "4", "--region", "us-east-1", "--dry-run"], monkeypatch)
    invoke = json.loads(result.stdout)["invoke_endpoint"]
    assert json.loads(invoke["Body"])["max_tokens"] == 4 and invoke["Accept"] == "application/json"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "sagemaker",
                "quantize",
                "--model-s3",
                "s3://nf-b/m/",
                "--output-s3",
                "s3://nf-b/o/",
                "--instance-type",
                "ml.inf2.xlarge",
            ],
            "not a valid SageMaker training instance type",
        ),
        (
            [
                "sagemaker",
                "compile",
                "--checkpoint-s3",
                "s3://nf-b/c/",
                "--output-s3",
                "s3://nf-b/o/",
                "--tp-degree",
                "2",
                "--processing",
                "--instance-type",
                "ml.trn1.32xlarge",
            ],
            "not a valid SageMaker processing instance type",
        ),
        (
            [
                "sagemaker",
                "compile",
                "--checkpoint-s3",
                "s3://nf-b/c/",
                "--output-s3",
                "s3://nf-b/o/",
                "--tp-degree",
                "8",
                "--target",
                "ml.inf2.8xlarge",
            ],
            "tp_degree 8 does not fit ml.inf2.8xlarge",
        ),
        (
            ["sagemaker", "deploy", "--model-data", "s3://nf-b/p/", "--instance-type", "ml.inf9.xlarge"],
            "not a valid SageMaker endpoint instance type",
        ),
        (["sagemaker", "deploy", "--model-data", "s3://nf-b/p/", "--volume-gb", "0"], "below the minimum 1"),
        (["sagemaker", "deploy", "--model-data", "s3://nf-b/p/", "--volume-gb", "1000"], "above the maximum 512"),
        (["sagemaker", "deploy", "--model-data", "s3://nf-b/" + "p" * 1020], "above the maximum 1024"),
        (
            ["sagemaker", "quantize", "--model-s3", "s3://nf-b/m/", "--output-s3", "s3://nf-b/o/"]
            + ["--install", "neuronforge @ https://example.com/" + "x" * 600],
            "NF_INSTALL'] is 634 characters, above the maximum 512",
        ),
        (
            ["sagemaker", "quantize", "--model-s3", "s3://nf-b/m/", "--output-s3", "s3://nf-b/o/"]
            + ["--max-runtime", "5000000", "--install", "neuronforge==0.1.0"],
            "above the maximum 2419200",
        ),
        (
            ["sagemaker", "compile", "--checkpoint-s3", "s3://nf-b/c/", "--output-s3", "s3://nf-b/o/"]
            + ["--tp-degree", "12", "--target", "ml.inf2.24xlarge", "--install", "neuronforge==0.1.0"],
            "tp_degree 12 does not fit ml.trn1.2xlarge (2 NeuronCores): the compile job loads",
        ),
    ],
)
def test_cli_bad_input_exits_2_before_any_aws_call(
    args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _cli([*args, "--role", ROLE, "--region", "us-east-1"], monkeypatch)  # no --dry-run: would call AWS
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_cli_refuses_an_unknown_region(monkeypatch: pytest.MonkeyPatch) -> None:
    for args in (["sagemaker", "status", "nf-x"], ["invoke", "nf-x", "hi"]):
        result = _cli([*args, "--region", "us-east-7"], monkeypatch)
        assert result.exit_code == 2
        assert "'us-east-7' is not a region where SageMaker runs" in " ".join(result.output.split())


def test_volume_gb_is_refused_where_sagemaker_ignores_it() -> None:
    """N9: GPU and trn1 training instances have NVMe storage; SageMaker provisions no EBS volume for them."""
    from neuronforge.sagemaker.requests import DEFAULT_VOLUME_GB

    for instance in ("ml.g6e.2xlarge", "ml.p5.48xlarge"):
        job = JobSettings(name="nf-q", role_arn=ROLE, region="us-east-1", instance_type=instance, volume_gb=500)
        with pytest.raises(NeuronforgeError, match=f"--volume-gb does nothing on {instance}"):
            quantize_job_request(job, model_s3="s3://nf-b/m/", output_s3="s3://nf-b/o/")
    trn1 = JobSettings(name="nf-c", role_arn=ROLE, region="us-east-1", instance_type="ml.trn1.2xlarge", volume_gb=500)
    with pytest.raises(NeuronforgeError, match="NVMe"):
        compile_job_request(trn1, checkpoint_s3="s3://nf-b/c/", output_s3="s3://nf-b/o/", tp_degree=2)
    cpu = JobSettings(name="nf-cpu", role_arn=ROLE, region="us-east-1", instance_type="ml.r7i.8xlarge", volume_gb=500)
    request = compile_processing_request(cpu, checkpoint_s3="s3://nf-b/c/", output_s3="s3://nf-b/o/", tp_degree=2)
    assert request["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] == 500  # EBS-only: it applies
    default = JobSettings(name="nf-q", role_arn=ROLE, region="us-east-1", instance_type="ml.g6e.2xlarge")
    quantize = quantize_job_request(default, model_s3="s3://nf-b/m/", output_s3="s3://nf-b/o/")
    assert quantize["ResourceConfig"]["VolumeSizeInGB"] == DEFAULT_VOLUME_GB
