"""The one place boto3 clients are made and AWS failures become NeuronforgeError (never a traceback).

Used by sagemaker/ for every call and by the run's s3:// storage, which words a few S3 failures with the URI.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    from botocore.client import BaseClient

DEFAULT_FIX = "check the names, the role's permissions and the region"
CREDENTIALS_FIX = "run `aws configure` (or `aws sso login`), or set AWS_PROFILE / AWS_ACCESS_KEY_ID"
# Error codes that mean "who you are" or "what you may do", not "what you named".
AUTH_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidToken",
    "UnauthorizedOperation",
}
_HELD = (signal.SIGINT, signal.SIGTERM)
NOT_FOUND_CODES = {"ResourceNotFound", "ResourceNotFoundException", "NoSuchKey", "NoSuchBucket", "404", "NotFound"}


def client(service: str, region: str) -> BaseClient:
    import boto3

    return boto3.session.Session(region_name=region).client(service)


def is_not_found(exc: BaseException) -> bool:
    """A ClientError saying the named resource does not exist (SageMaker answers ValidationException 'Could not find')."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    err = exc.response.get("Error", {})
    code, message = str(err.get("Code", "")), str(err.get("Message", ""))
    return code in NOT_FOUND_CODES or (
        code == "ValidationException" and bool(re.search(r"(?i)could not find|not found|does not exist", message))
    )


def translate(exc: BaseException, fix: str = DEFAULT_FIX) -> NeuronforgeError | None:
    """The NeuronforgeError for an AWS SDK failure, or None if `exc` is not one."""
    from boto3.exceptions import Boto3Error, S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
        PartialCredentialsError,
        ProfileNotFound,
        WaiterError,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return NeuronforgeError(f"no usable AWS credentials: {exc}", CREDENTIALS_FIX)
    if isinstance(exc, NoRegionError):
        return NeuronforgeError("no AWS region set", "pass --region or set AWS_DEFAULT_REGION")
    if isinstance(exc, EndpointConnectionError | ConnectionError):
        return NeuronforgeError(
            f"could not reach AWS: {exc}",
            "check the network, the --region spelling and AWS_ENDPOINT_URL if it is set",
        )
    if isinstance(exc, ParamValidationError):
        return NeuronforgeError(f"boto3 refused the request: {exc}", "this is a neuronforge bug; please report it")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code")
        what = f"{exc.operation_name} failed: {code}: {err.get('Message')}"
        if code in AUTH_CODES:
            return NeuronforgeError(
                what,
                "check the AWS credentials in use (`aws sts get-caller-identity`) and that they have the "
                "permissions docs/sagemaker-guide.md lists (the stack's OperatorPolicy)",
            )
        return NeuronforgeError(what, fix)
    if isinstance(exc, WaiterError):
        return NeuronforgeError(
            f"stopped waiting: {exc}",
            "see `neuronforge sagemaker status NAME` and the CloudWatch logs under /aws/sagemaker/",
        )
    if isinstance(exc, S3UploadFailedError):
        return NeuronforgeError(f"S3 upload failed: {exc}", fix)
    if isinstance(exc, BotoCoreError | Boto3Error):
        return NeuronforgeError(f"AWS SDK error: {exc}", fix)
    return None


def call(fn: Callable[..., Any], *, fix: str = DEFAULT_FIX, **kwargs: Any) -> Any:
    """One AWS call; every botocore/boto3 failure becomes NeuronforgeError with AWS's own message."""
    try:
        return fn(**kwargs)
    except Exception as exc:
        error = translate(exc, fix)
        if error is None:
            raise
        raise error from None


def call_or_none(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Like `call`, but a not-found answer returns None; credentials and access errors still raise."""
    try:
        return fn(**kwargs)
    except Exception as exc:
        if is_not_found(exc):
            return None
        error = translate(exc)
        if error is None:
            raise
        raise error from None


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    A create call interrupted halfway leaves us not knowing whether AWS created the resource; held, the call
    returns, its result is recorded, and rollback knows exactly what exists. Only the main thread can do this.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, frame: held.append(number)) for sig in _HELD}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])
