"""s3:// URIs wherever a path is accepted: mirror a prefix or object down to a local cache, sync a directory up.

Transfers use boto3's managed transfers (multipart, parallel). A file counts as already in sync
when its size matches and its local mtime equals the object's LastModified (set after every
transfer), so re-running against the same bucket moves nothing. Mirrors are exact: local files the
prefix no longer holds are removed, and remote objects the local directory no longer holds are
deleted on upload, so content hashes agree on both sides. Names with a component starting with "."
(locks, partial writes) are never transferred, except the output marker that lists what neuronforge wrote
into a folder (core/outputs.py). Every AWS failure becomes a NeuronforgeError.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, overload

from neuronforge.core.aws import AUTH_CODES, CREDENTIALS_FIX, translate
from neuronforge.core.cache import cache_dir
from neuronforge.core.outputs import OUTPUT_MARKER, RUN_MANIFEST
from neuronforge.core.s3uri import S3Uri, is_s3
from neuronforge.errors import NeuronforgeError


def local_mirror(uri: str) -> Path:
    """Where an s3:// URI is mirrored on this host: $NEURONFORGE_CACHE/s3/<bucket>/<key>."""
    parsed = S3Uri.parse(uri)
    return cache_dir() / "s3" / parsed.bucket / parsed.key.strip("/")


def _client() -> Any:
    import boto3

    return boto3.client("s3")


@contextmanager
def aws_errors(uri: S3Uri | str) -> Iterator[None]:
    """`core.aws.translate`, worded for this URI: missing credentials, a missing bucket, refused access and an
    unreachable S3 name it; anything else is translated as every other AWS call is."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise NeuronforgeError(f"no usable AWS credentials to access {uri} ({exc})", CREDENTIALS_FIX) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        bucket = uri.bucket if isinstance(uri, S3Uri) else S3Uri.parse(uri).bucket
        # HeadBucket has no error body: a missing bucket comes back as a bare 404.
        if code == "NoSuchBucket" or (exc.operation_name == "HeadBucket" and code in ("404", "NotFound")):
            raise NeuronforgeError(
                f"S3 bucket '{bucket}' does not exist ({uri})",
                "check the bucket name and region, or create it: aws s3 mb s3://" + bucket,
            ) from None
        if code in AUTH_CODES or code == "403":
            raise NeuronforgeError(
                f"AWS refused access to {uri} ({code})",
                CREDENTIALS_FIX + "; the identity needs "
                "s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject there",
            ) from None
        raise translate(exc, f"check {uri} and your AWS setup") or exc from None
    except BotoCoreError as exc:
        raise NeuronforgeError(f"cannot reach S3 for {uri} ({exc})", "check network access and the region") from None


def _transferred(parts: Sequence[str]) -> bool:
    """Whether a relative name is mirrored: no dot-named component other than the output marker."""
    return not any(part.startswith(".") and part != OUTPUT_MARKER for part in parts)


def _walk(root: Path) -> dict[str, Path]:
    """Relative POSIX name -> file, skipping anything with a dot-named component (`_transferred`)."""
    if not root.exists():
        return {}
    files = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and _transferred(rel.parts):
            files[rel.as_posix()] = path
    return files


def _in_sync(path: Path, size: int, modified: float) -> bool:
    if not path.is_file():
        return False
    stat = path.stat()
    return stat.st_size == size and int(stat.st_mtime) == int(modified)


def _list(client: Any, uri: S3Uri) -> dict[str, dict[str, Any]]:
    """Relative name -> {size, modified} for every object under the prefix (dot-named parts skipped)."""
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=uri.prefix):
        for item in page.get("Contents", []):
            rel = item["Key"][len(uri.prefix) :]
            if rel and not rel.endswith("/") and _transferred(rel.split("/")):
                objects[rel] = {"size": item["Size"], "modified": item["LastModified"].timestamp()}
    return objects


def _head(client: Any, uri: S3Uri) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    if not uri.key or uri.key.endswith("/"):
        return None
    try:
        head = client.head_object(Bucket=uri.bucket, Key=uri.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            client.head_bucket(Bucket=uri.bucket)  # turns a missing bucket into NoSuchBucket/404 below
            return None
        raise
    return {"size": head["ContentLength"], "modified": head["LastModified"].timestamp()}


def _fetch(client: Any, uri: S3Uri, dest: Path, size: int, modified: float) -> bool:
    """Download one object atomically unless the local copy is already in sync; True if it transferred."""
    if _in_sync(dest, size, modified):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        client.download_file(uri.bucket, uri.key, str(tmp))
        os.utime(tmp, (modified, modified))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def download(uri: str, dest: Path | None = None, *, missing_ok: bool = False) -> Path:
    """Mirror an object or a prefix to `dest` (default: the local cache) and return the local path."""
    parsed = S3Uri.parse(uri)
    dest = Path(dest) if dest is not None else local_mirror(uri)
    client = _client()
    with aws_errors(parsed):
        single = _head(client, parsed)
        if single is not None:
            _fetch(client, parsed, dest, single["size"], single["modified"])
            return dest
        objects = _list(client, parsed)
        if not objects:
            client.head_bucket(Bucket=parsed.bucket)
            if missing_ok:
                dest.mkdir(parents=True, exist_ok=True)
                return dest
            raise NeuronforgeError(
                f"nothing found at {uri} (no such object or prefix)", f"check the path: aws s3 ls {uri}"
            )
        for rel, info in objects.items():
            _fetch(client, parsed.child(rel), dest / rel, info["size"], info["modified"])
        for rel, path in _walk(dest).items():
            if rel not in objects:
                path.unlink()
    return dest


def upload_file(path: Path, uri: str | S3Uri, client: Any = None) -> None:
    """Upload one file and stamp the local copy with the object's LastModified (so it reads as in sync)."""
    parsed = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
    client = client or _client()
    with aws_errors(parsed):
        client.upload_file(str(path), parsed.bucket, parsed.key)
        modified = client.head_object(Bucket=parsed.bucket, Key=parsed.key)["LastModified"].timestamp()
    os.utime(path, (modified, modified))


def upload_dir(local: Path, uri: str) -> int:
    """Make the prefix `uri` hold exactly the files of `local`; returns how many files were transferred."""
    parsed = S3Uri.parse(uri)
    client = _client()
    with aws_errors(parsed):
        remote = _list(client, parsed)
        files = _walk(Path(local))
        sent = 0
        for rel, path in files.items():
            info = remote.get(rel)
            if info is None or not _in_sync(path, info["size"], info["modified"]):
                upload_file(path, parsed.child(rel), client)
                sent += 1
        for rel in remote.keys() - files.keys():
            client.delete_object(Bucket=parsed.bucket, Key=parsed.child(rel).key)
    return sent


def check_run_prefix(uri: str) -> None:
    """An s3:// run directory: its bucket exists, and the prefix is empty or already holds a run manifest.json."""
    parsed = S3Uri.parse(uri)
    client = _client()
    with aws_errors(parsed):
        client.head_bucket(Bucket=parsed.bucket)
        objects = _list(client, parsed)
    if objects and RUN_MANIFEST not in objects:
        raise NeuronforgeError(
            f"--out {uri} already holds objects and is not a neuronforge run directory (no manifest.json there)",
            "choose a new or empty s3:// prefix for --out; neuronforge never writes into a prefix it did not create",
        )


@overload
def localize(path: str | Path, *, what: str) -> Path: ...
@overload
def localize(path: None, *, what: str) -> None: ...
def localize(path: str | Path | None, *, what: str) -> Path | None:
    """A local path for a user-given path or s3:// URI (downloaded into the cache when remote)."""
    if path is None:
        return None
    if is_s3(path):
        return download(str(path))
    local = Path(path).expanduser()
    if not local.exists():
        raise NeuronforgeError(f"{what} {local} does not exist", f"pass an existing {what} or an s3:// URI")
    return local
