"""Resolve the pinned image URIs of images.json for a region and account."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Literal

from neuronforge.errors import NeuronforgeError

ImageKind = Literal["quantize", "neuron"]
IMAGES_JSON = Path(__file__).with_name("images.json")


@functools.lru_cache(maxsize=1)
def pinned() -> dict[str, Any]:
    return json.loads(IMAGES_JSON.read_text())


def account_of_role(role_arn: str) -> str:
    """The AWS account id inside an IAM role ARN (where our private ECR image lives)."""
    match = re.fullmatch(r"arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]+", role_arn)
    if not match:
        raise NeuronforgeError(
            f"'{role_arn}' is not an IAM role ARN",
            "pass the SageMaker execution role as arn:aws:iam::<12-digit account>:role/<name> "
            "(the infra stack outputs it as ExecutionRoleArn)",
        )
    return match.group(1)


def image_uri(kind: ImageKind, region: str, account: str) -> str:
    """The pinned URI of `kind` in `region`; `account` owns the private ECR repository."""
    data = pinned()
    accounts = data["dlc_registry_accounts"]
    return data["images"][kind]["uri"].format(
        dlc_account=accounts.get(region, accounts["default"]),
        region=region,
        account=account,
        ecr_repository=data["ecr_repository"],
    )
