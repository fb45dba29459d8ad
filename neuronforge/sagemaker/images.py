"""Resolve the pinned image URIs of images.json for a region, its partition and an account.

The AWS Deep Learning Container registry account differs per region (aws/deep-learning-containers
docs/reference/region_availability.md; GovCloud from the SageMaker SDK's image_uri_config/pytorch.json), and China
uses another DNS suffix, so every region is looked up, never defaulted.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK
from neuronforge.version import __version__

ImageKind = Literal["quantize", "neuron"]
IMAGES_JSON = Path(__file__).with_name("images.json")
REPOSITORY_ENV = "NEURONFORGE_IMAGE_REPOSITORY"  # the stack output RepositoryUri
SUPPORTED_PARTITIONS = ("aws", "aws-cn", "aws-us-gov")


@functools.cache
def pinned() -> dict[str, Any]:
    return json.loads(IMAGES_JSON.read_text())


@functools.cache
def _botocore() -> Any:
    import botocore.session

    return botocore.session.get_session()


@functools.cache
def sagemaker_regions() -> dict[str, str]:
    """Every region botocore knows SageMaker in, mapped to its partition."""
    session = _botocore()
    return {
        region: partition
        for partition in session.get_available_partitions()
        for region in session.get_available_regions("sagemaker", partition)
    }


def partition_of(region: str) -> str:
    """The AWS partition of a SageMaker region; unknown regions and partitions without our images are refused."""
    partition = sagemaker_regions().get(region)
    if partition is None:
        raise NeuronforgeError(
            f"'{region}' is not a region where SageMaker runs (per botocore's endpoint data)",
            "pass --region with one of: " + ", ".join(sorted(r for r, p in sagemaker_regions().items() if p == "aws")),
        )
    if partition not in SUPPORTED_PARTITIONS or region not in pinned()["dlc_registry_accounts"]:
        raise NeuronforgeError(
            f"neuronforge has no AWS Deep Learning Container registry for {region} (partition {partition})",
            "pass --image with an image URI that this region can pull",
        )
    return partition


def dns_suffix(region: str) -> str:
    """amazonaws.com, or amazonaws.com.cn in China (from botocore's partition data)."""
    partition = partition_of(region)
    resolver = _botocore()._get_internal_component("endpoint_resolver")
    return next(p["dnsSuffix"] for p in resolver._endpoint_data["partitions"] if p["partition"] == partition)


def account_of_role(role_arn: str, region: str | None = None) -> str:
    """The account id inside an IAM role ARN; with `region`, the ARN's partition must be that region's."""
    match = re.fullmatch(r"arn:(aws[a-z-]*):iam::(\d{12}):role/[\w+=,.@/-]+", role_arn)
    if not match:
        raise NeuronforgeError(
            f"'{role_arn}' is not an IAM role ARN",
            "pass the SageMaker execution role as arn:aws:iam::<12-digit account>:role/<name> "
            "(the infra stack outputs it as ExecutionRoleArn)",
        )
    if region is not None and match.group(1) != partition_of(region):
        raise NeuronforgeError(
            f"role {role_arn} is in partition {match.group(1)} but region {region} is in {partition_of(region)}",
            f"use a role created in {region} (arn:{partition_of(region)}:iam::...)",
        )
    return match.group(2)


def neuron_repository(region: str, account: str) -> str:
    """The private ECR repository of the Neuron image: $NEURONFORGE_IMAGE_REPOSITORY or <account>/neuronforge."""
    return os.environ.get(REPOSITORY_ENV) or (
        f"{account}.dkr.ecr.{region}.{dns_suffix(region)}/{pinned()['ecr_repository']}"
    )


def neuron_image(sdk: str) -> dict[str, Any]:
    """The pinned serving image of Neuron SDK `sdk` (its URI template, base DLC and the versions it ships)."""
    images = {key: value for key, value in pinned()["images"]["neuron"].items() if not key.startswith("_")}
    if sdk not in images:
        raise NeuronforgeError(
            f"neuronforge has no serving image for Neuron SDK {sdk!r}",
            f"compile with one of: {', '.join(f'--sdk {s}' for s in images)}",
        )
    return dict(images[sdk])


def image_uri(kind: ImageKind, region: str, account: str, sdk: str = DEFAULT_SDK) -> str:
    """The pinned URI of `kind` in `region` (the Neuron image: of SDK `sdk`); `account` owns the private ECR."""
    data = pinned()
    if kind == "neuron":
        template = neuron_image(sdk)["uri"]
        return template.format(repository=neuron_repository(region, account), version=__version__)
    template = data["images"][kind]["uri"]
    partition_of(region)
    return template.format(
        dlc_account=data["dlc_registry_accounts"][region], region=region, dns_suffix=dns_suffix(region)
    )
