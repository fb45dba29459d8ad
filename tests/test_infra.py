"""infra/*.yaml: cfn-lint clean, least-privilege IAM, and the S3/ECR/launch-template properties the project relies on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode.cfn_yaml import load
from testkit.fakes import deploy_stack

from neuronforge.sagemaker.images import pinned

INFRA = Path(__file__).resolve().parent.parent / "infra"
TEMPLATES = sorted(INFRA.glob("*.yaml"))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        docs += [props["PolicyDocument"]] if "PolicyDocument" in props else []
        for doc in docs:
            found += doc["Statement"]
    return found


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return load(str(INFRA / "neuronforge.yaml"))


def test_cfn_lint_reports_no_errors() -> None:
    assert TEMPLATES
    cfn_lint = Path(sys.executable).with_name("cfn-lint")  # the console script installed next to this Python
    result = subprocess.run([str(cfn_lint), *map(str, TEMPLATES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_no_wildcard_action_on_wildcard_resource(path: Path) -> None:
    statements = _statements(load(str(path)))
    assert statements
    for statement in statements:
        actions = [str(a) for a in _as_list(statement.get("Action", []))]
        resources = [r for r in _as_list(statement.get("Resource", [])) if isinstance(r, str)]
        wildcard_action = any(a == "*" or a.endswith(":*") for a in actions)
        if statement["Effect"] == "Allow":
            assert not any(a == "*" for a in actions), statement
            assert not (wildcard_action and "*" in resources), statement


def test_bucket_is_encrypted_versioned_and_private(stack: dict[str, Any]) -> None:
    bucket = stack["Resources"]["ArtifactBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(
        bucket["PublicAccessBlockConfiguration"][k] is True
        for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    )


def _user_data(stack: dict[str, Any], template: str) -> str:
    data = stack["Resources"][template]["Properties"]["LaunchTemplateData"]
    return data["UserData"]["Fn::Base64"]["Fn::Sub"]


def test_hosts_install_the_shipped_wheel_or_an_explicit_spec(stack: dict[str, Any]) -> None:
    assert "Default" not in stack["Parameters"]["NeuronforgeSource"]  # neuronforge is on no index: no default
    for name, ami in (("GpuLaunchTemplate", "GpuAmiId"), ("InfLaunchTemplate", "NeuronAmiId")):
        assert stack["Resources"][name]["Properties"]["LaunchTemplateData"]["ImageId"] == {"Ref": ami}
        script = _user_data(stack, name)
        assert (
            'SRC="${NeuronforgeSource}"' in script
            and 'aws s3 cp "$SRC"' in script
            and re.search(r'install (--no-deps )?"\$SRC"', script)
        )
        assert "neuronforge==" not in script
        rendered = script.replace("${NeuronforgeSource}", "s3://b/code/x/neuronforge-0.1.0-py3-none-any.whl")
        rendered = rendered.replace("${ArtifactBucket}", "b")
        result = subprocess.run(["bash", "-n"], input=rendered, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_gpu_host_gets_python_3_11_or_newer(stack: dict[str, Any]) -> None:
    """The Ubuntu 22.04 DLAMI ships Python 3.10 (pyproject requires >= 3.11); 24.04 ships 3.12. The user data
    refuses an older Python with a message instead of a pip resolution error."""
    assert "ubuntu-24.04" in stack["Parameters"]["GpuAmiId"]["Default"]
    script = _user_data(stack, "GpuLaunchTemplate")
    guard = next(line for line in script.splitlines() if "sys.version_info" in line)
    for version, ok in (((3, 10, 12), False), ((3, 12, 3), True)):
        code = guard.split("'")[1].replace("sys.version_info", repr(version))  # the guard, on that Python
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert (result.returncode == 0) == ok, result.stderr
        assert ok or "neuronforge needs Python >= 3.11" in result.stderr


def test_inf2_host_is_pinned_to_the_serving_images_neuron_sdk(stack: dict[str, Any]) -> None:
    """Neuron SSM has no per-SDK path; the vLLM 0.16 single-framework DLAMI is SDK 2.31, as the 2.31 serving image
    (a compile there targets that SDK: nxdi_api.host_sdk)."""
    assert "vllm0.16.0" in pinned()["images"]["neuron"]["2.31"]["uri"]
    assert stack["Parameters"]["NeuronAmiId"]["Default"] == (
        "/aws/service/neuron/dlami/pytorch-inference-vllm-0.16/ubuntu-24.04/latest/image_id"
    )
    assert "VENV=/opt/aws_neuronx_venv_pytorch_inference_vllm_0_16\n" in _user_data(stack, "InfLaunchTemplate")


def test_second_stack_does_not_collide_and_dlc_accounts_match_images_json(stack: dict[str, Any]) -> None:
    resources = stack["Resources"]
    assert "AWS::StackId" in str(resources["ImageRepository"]["Properties"]["RepositoryName"])
    assert resources["ImageRepository"]["Properties"]["ImageTagMutability"] == "IMMUTABLE"
    for resource in resources.values():
        props = resource.get("Properties", {})
        for key in ("RoleName", "BucketName", "ManagedPolicyName", "InstanceProfileName"):
            assert key not in props or "AWS::StackName" in str(props[key]), (key, props[key])
    mapping = {region: row["Account"] for region, row in stack["Mappings"]["DlcRegistry"].items()}
    assert mapping == pinned()["dlc_registry_accounts"]
    assert resources["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0][
        "Principal"
    ] == {"Service": "sagemaker.amazonaws.com"}


def _statement(stack: dict[str, Any], resource: str, sid: str) -> dict[str, Any]:
    props = stack["Resources"][resource]["Properties"]
    docs = [p["PolicyDocument"] for p in props.get("Policies", [])] + [props.get("PolicyDocument", {"Statement": []})]
    return next(s for doc in docs for s in doc["Statement"] if s.get("Sid") == sid)


def test_host_role_can_mirror_run_outputs_to_s3(stack: dict[str, Any]) -> None:
    """pipeline/run/storage.upload_dir deletes remote files that no longer exist locally."""
    assert "s3:DeleteObject" in _statement(stack, "HostRole", "ArtifactObjects")["Action"]
    assert "s3:ListBucket" in _as_list(_statement(stack, "HostRole", "ArtifactBucket")["Action"])


def test_operator_may_pass_only_the_stack_roles_and_only_to_sagemaker(stack: dict[str, Any]) -> None:
    statement = _statement(stack, "OperatorPolicy", "PassOnlyTheStackRoles")
    assert statement["Action"] == "iam:PassRole"
    assert statement["Resource"] == [
        {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]},
        {"Fn::GetAtt": ["SageMakerPipelineRole", "Arn"]},
    ]
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_jobs_cannot_create_sagemaker_resources_only_the_pipeline_role_can(stack: dict[str, Any]) -> None:
    """N13: code inside a job (it pip-installs from PyPI) gets no SageMaker, IAM or delete rights; the pipeline's
    own role may pass exactly the execution role, to SageMaker only."""
    job_actions = [
        action
        for doc in stack["Resources"]["SageMakerExecutionRole"]["Properties"]["Policies"]
        for statement in doc["PolicyDocument"]["Statement"]
        for action in _as_list(statement["Action"])
    ]
    assert not [a for a in job_actions if a.startswith(("sagemaker:", "iam:")) or a == "s3:DeleteObject"]
    passing = _statement(stack, "SageMakerPipelineRole", "PassTheExecutionRole")
    assert passing["Resource"] == {"Fn::GetAtt": ["SageMakerExecutionRole", "Arn"]}
    assert passing["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert "sagemaker:CreateTrainingJob" in _statement(stack, "SageMakerPipelineRole", "PipelineSteps")["Action"]


def test_gpu_host_refreshes_package_lists_before_installing(stack: dict[str, Any]) -> None:
    """N14: under `set -euo pipefail`, apt-get install on an AMI with empty/stale lists would abort the user data."""
    script = _user_data(stack, "GpuLaunchTemplate")
    update = re.search(r"apt-get [^\n]*\bupdate\n", script)
    install = script.index("install -y python3-venv")
    assert update and update.start() < install


def test_two_stacks_deploy_side_by_side(aws_env: str) -> None:
    """moto's CloudFormation: the same template twice in one account and region (fixed names would collide)."""
    outputs = [deploy_stack(name, aws_env, INFRA / "neuronforge.yaml") for name in ("nf-one", "nf-two")]
    for key in ("RepositoryUri", "ExecutionRoleArn", "PipelineRoleArn", "BucketName", "OperatorPolicyArn"):
        assert outputs[0][key] != outputs[1][key]


def test_the_same_stack_deploys_in_a_second_region(aws_env: str) -> None:
    """N4: IAM is global, so the README's `--stack-name neuronforge` in eu-west-1 must not collide with us-east-1."""
    first = deploy_stack("neuronforge", aws_env, INFRA / "neuronforge.yaml")
    second = deploy_stack("neuronforge", "eu-west-1", INFRA / "neuronforge.yaml")
    assert first["ExecutionRoleArn"] != second["ExecutionRoleArn"]
    assert first["PipelineRoleArn"] != second["PipelineRoleArn"]
