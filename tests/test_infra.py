"""infra/*.yaml: cfn-lint clean, least-privilege IAM, and the S3/ECR/launch-template properties the project relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode.cfn_yaml import load

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


def test_ecr_repository_matches_pinned_image_and_hosts_install_neuronforge(stack: dict[str, Any]) -> None:
    resources = stack["Resources"]
    assert resources["ImageRepository"]["Properties"]["RepositoryName"] == pinned()["ecr_repository"]
    assert resources["SageMakerExecutionRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0][
        "Principal"
    ] == {"Service": "sagemaker.amazonaws.com"}
    for name, ami in (("GpuLaunchTemplate", "GpuAmiId"), ("InfLaunchTemplate", "NeuronAmiId")):
        data = resources[name]["Properties"]["LaunchTemplateData"]
        assert data["ImageId"] == {"Ref": ami}
        user_data = data["UserData"]["Fn::Base64"]["Fn::Sub"]
        assert 'pip" install' in user_data or "pip install" in user_data
        assert '"${NeuronforgeSpec}"' in user_data
    assert "neuron" in stack["Parameters"]["NeuronAmiId"]["Default"]
    assert "deeplearning" in stack["Parameters"]["GpuAmiId"]["Default"]
