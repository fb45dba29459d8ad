"""Parse and normalise s3:// URIs (pure; no AWS call): the one parser, used by storage and the SageMaker requests."""

from __future__ import annotations

import re
from dataclasses import dataclass

from neuronforge.errors import NeuronforgeError

SCHEME = "s3://"
# S3's bucket naming rules (3-63 lowercase letters, digits, dots, hyphens); anything after the first "/" is the key.
_S3 = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?")


def is_s3(uri: object) -> bool:
    """True for an s3:// string (a local Path never is)."""
    return isinstance(uri, str) and uri.startswith(SCHEME)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        match = _S3.fullmatch(uri) if isinstance(uri, str) else None
        if not match:
            raise NeuronforgeError(
                f"'{uri}' is not an s3:// URI with a valid bucket name", "write it as s3://<bucket>/<prefix>/"
            )
        return cls(match.group(1), match.group(2) or "")

    def child(self, name: str) -> S3Uri:
        return S3Uri(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key.strip("/") else name)

    @property
    def prefix(self) -> str:
        """The key as a folder prefix ('' for the bucket root)."""
        return self.key.rstrip("/") + "/" if self.key.strip("/") else ""

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def split(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    parsed = S3Uri.parse(uri)
    return parsed.bucket, parsed.key


def prefix(uri: str) -> str:
    """The URI as a prefix ending in '/', the form SageMaker wants for S3Prefix model data and channels."""
    bucket, key = split(uri)
    key = key.strip("/")
    return f"s3://{bucket}/{key}/" if key else f"s3://{bucket}/"


def join(uri: str, *parts: str) -> str:
    return prefix(uri) + "/".join(p.strip("/") for p in parts)
