"""The one place boto3 clients are made and AWS failures become NeuronforgeError."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    from botocore.client import BaseClient

DEFAULT_FIX = "check the names, the role's permissions and the region"


def client(service: str, region: str) -> BaseClient:
    import boto3

    return boto3.session.Session(region_name=region).client(service)  # type: ignore[no-any-return]


def call(fn: Callable[..., Any], *, fix: str = DEFAULT_FIX, **kwargs: Any) -> Any:
    """One AWS call; credential and API errors become NeuronforgeError with AWS's own message."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, WaiterError

    try:
        return fn(**kwargs)
    except NoCredentialsError:
        raise NeuronforgeError("no AWS credentials found", "run `aws configure` or set AWS_PROFILE") from None
    except NoRegionError:
        raise NeuronforgeError("no AWS region set", "pass --region or set AWS_DEFAULT_REGION") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise NeuronforgeError(f"{exc.operation_name} failed: {err.get('Code')}: {err.get('Message')}", fix) from None
    except WaiterError as exc:
        raise NeuronforgeError(
            f"stopped waiting: {exc}",
            "see `neuronforge sagemaker status NAME` and the CloudWatch logs under /aws/sagemaker/",
        ) from None
    except S3UploadFailedError as exc:
        raise NeuronforgeError(f"S3 upload failed: {exc}", fix) from None
