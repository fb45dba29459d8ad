"""Parse and normalise s3:// URIs (pure; no AWS call)."""

from __future__ import annotations

import re

from neuronforge.errors import NeuronforgeError

SCHEME = "s3://"
_S3 = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?")


def is_s3(uri: object) -> bool:
    """True for an s3:// string (a local Path never is)."""
    return isinstance(uri, str) and uri.startswith(SCHEME)


def split(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    match = _S3.fullmatch(uri)
    if not match:
        raise NeuronforgeError(f"'{uri}' is not an s3:// URI", "write it as s3://<bucket>/<prefix>/")
    return match.group(1), match.group(2) or ""


def prefix(uri: str) -> str:
    """The URI as a prefix ending in '/', the form SageMaker wants for S3Prefix model data and channels."""
    bucket, key = split(uri)
    key = key.strip("/")
    return f"s3://{bucket}/{key}/" if key else f"s3://{bucket}/"


def join(uri: str, *parts: str) -> str:
    return prefix(uri) + "/".join(p.strip("/") for p in parts)
