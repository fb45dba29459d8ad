"""`neuronforge package`: lay out the endpoint's model directory, checksum it, upload it and verify the upload.

Layout (copied as-is to /opt/ml/model by SageMaker's uncompressed S3Prefix model data):

    compiled/       NxDI compiled artifacts (model.pt, neuron_config.json, presharded weights/...), without NxDI's
                    quantized_checkpoint/ (only a recompile reads it)
    checkpoint/     the quantized HF checkpoint with its tokenizer
    serving.json    what the `serve` wrapper needs (tp_degree, max_model_len, env)
    manifest.json   sha256 + size of every other file, the versions that made them, the compile's Neuron SDK
                    (which must be the serving image's) and the sizes of the parts

The manifest is uploaded last, so a prefix with a manifest is a complete upload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronforge.core import s3uri
from neuronforge.core.atomic import atomic_write_json, link_tree, tree_bytes
from neuronforge.core.aws import call
from neuronforge.core.hashing import sha256_file
from neuronforge.core.outputs import OUTPUT_MARKER, check_apart, check_replaceable, output_dir
from neuronforge.core.package_versions import installed_versions
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.compile import QUANTIZED_DIR, RECORD_FILE
from neuronforge.neuron.nxdi_json import unloadable_kv_quant_config
from neuronforge.sagemaker.images import pinned
from neuronforge.sagemaker.requests import CHECKPOINT_SUBDIR, COMPILED_SUBDIR, serving_environment
from neuronforge.version import __version__

if TYPE_CHECKING:
    from botocore.client import BaseClient as S3Client

MANIFEST = "manifest.json"
SERVING = "serving.json"
CHUNK = 8 * 1024 * 1024  # multipart threshold and part size: fixes the checksum we can predict locally
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)
_VERSIONED = (
    "neuronx-distributed-inference",
    "neuronx-distributed",
    "neuronx-cc",
    "torch-neuronx",
    "vllm",
    "torch",
    "transformers",
    "boto3",
)


def s3_sha256(path: Path, chunk: int | None = None) -> str:
    """The ChecksumSHA256 S3 reports for `path` uploaded with our TransferConfig and ChecksumAlgorithm=SHA256.

    One part: base64 of the file's SHA-256. Multipart: base64 of the SHA-256 of the parts' SHA-256 digests, with
    "-<parts>" (S3's composite checksum). Unlike the ETag this holds under SSE-KMS, the stack bucket's default,
    where ETags are not MD5 digests of the data (S3 API reference, Object.ETag).
    """
    chunk = chunk or CHUNK
    parts = []
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            parts.append(hashlib.sha256(block).digest())
    if path.stat().st_size < chunk:
        return base64.b64encode(parts[0] if parts else hashlib.sha256(b"").digest()).decode()
    return f"{base64.b64encode(hashlib.sha256(b''.join(parts)).digest()).decode()}-{len(parts)}"


def _same_checksum(reported: str | None, expected: str) -> bool:
    """S3 reports composite checksums with "-N"; some S3-compatible stores (moto) leave the suffix off."""
    if not reported:
        return False
    digest, _, parts = expected.partition("-")
    got, _, got_parts = reported.partition("-")
    return got == digest and (not got_parts or got_parts == parts)


def _versions() -> dict[str, str]:
    return {"neuronforge": __version__, "python": platform.python_version(), **installed_versions(_VERSIONED)}


def _files(root: Path) -> list[Path]:
    """The package's files; manifest.json and the output marker (written after it) are not listed in it."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in (MANIFEST, OUTPUT_MARKER)
    )


def build_manifest(root: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    files = {p.relative_to(root).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _files(root)}
    return {"format": 1, "files": files, "versions": _versions(), **(extra or {})}


def _read_neuron_config(compiled: Path) -> dict[str, Any]:
    for required in ("model.pt", "neuron_config.json"):
        if not (compiled / required).is_file():
            raise NeuronforgeError(
                f"{compiled} has no {required}: it is not an NxDI compiled directory",
                "pass the --out directory of `neuronforge compile`",
            )
    raw = json.loads((compiled / "neuron_config.json").read_text())
    neuron_config = raw.get("neuron_config", raw)
    if problem := unloadable_kv_quant_config(neuron_config):
        raise NeuronforgeError(
            f"{compiled}/neuron_config.json: {problem}, so the vLLM endpoint would fail to start",
            "recompile with this neuronforge (`neuronforge compile` rewrites it in a form NxDI re-reads)",
        )
    return neuron_config


def check_compile_sdk(compiled: Path) -> str:
    """The compile's Neuron SDK, which must be the serving image's: NEFFs and NxDI configs do not cross SDKs."""
    image = pinned()["images"]["neuron"]
    serving_sdk = image["neuron_sdk"]
    fix = (
        f"recompile with `neuronforge compile --sdk {serving_sdk}` on a host with that SDK, or with "
        "`neuronforge sagemaker compile`, which runs the serving image"
    )
    record = compiled / RECORD_FILE
    if not record.is_file():
        raise NeuronforgeError(f"{compiled} has no {RECORD_FILE}, so its Neuron SDK is unknown", fix)
    sdk = json.loads(record.read_text()).get("sdk")
    if sdk != serving_sdk:
        raise NeuronforgeError(
            f"{compiled} was compiled with Neuron SDK {sdk}, but the serving image runs SDK {serving_sdk} "
            f"({image['base']})",
            fix,
        )
    return sdk


def _check_checkpoint(checkpoint: Path, tokenizer: Path | None) -> list[Path]:
    if not (checkpoint / "config.json").is_file() or not any(checkpoint.glob("*.safetensors")):
        raise NeuronforgeError(
            f"{checkpoint} is not a quantized HF checkpoint (config.json + *.safetensors)",
            "pass the --out directory of `neuronforge quantize`",
        )
    source = tokenizer or checkpoint
    found = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
    if not any(p.name in ("tokenizer.json", "tokenizer.model") for p in found):
        raise NeuronforgeError(
            f"no tokenizer (tokenizer.json or tokenizer.model) in {source}",
            "pass --tokenizer <folder saved with tokenizer.save_pretrained>",
        )
    return found


def serving_config(neuron_config: dict[str, Any], tp_degree: int | None, max_num_seqs: int) -> dict[str, Any]:
    """serving.json: tp and lengths must match what was compiled, or NxDI refuses to load."""
    compiled_tp = neuron_config.get("tp_degree")
    if tp_degree is not None and compiled_tp is not None and tp_degree != compiled_tp:
        raise NeuronforgeError(
            f"--tp-degree {tp_degree} differs from the compiled tp_degree {compiled_tp}",
            "drop --tp-degree (it is read from compiled/neuron_config.json) or recompile",
        )
    tp = tp_degree or compiled_tp
    if not tp:
        raise NeuronforgeError("compiled/neuron_config.json has no tp_degree", "pass --tp-degree")
    fp8 = str(neuron_config.get("quantization_dtype", "")).startswith("f8") or bool(neuron_config.get("kv_cache_quant"))
    return {
        "tp_degree": int(tp),
        "max_model_len": int(neuron_config.get("seq_len") or neuron_config.get("n_positions") or 2048),
        "max_num_seqs": int(neuron_config.get("batch_size") or max_num_seqs),
        "served_model_name": "neuronforge",
        "fp8": fp8,
        "env": serving_environment(fp8),
    }


def package_model(
    out: Path,
    *,
    compiled: Path,
    checkpoint: Path,
    tokenizer: Path | None = None,
    tp_degree: int | None = None,
    max_num_seqs: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write the endpoint's model directory at `out` atomically and return it.

    `out` follows the output contract (`core.outputs.output_dir`): new, empty (SageMaker creates a processing
    job's output LocalPath before the entrypoint runs; it is filled in place), or an earlier package holding
    only the files neuronforge wrote, replaced with `overwrite`. It may not be, hold or sit inside an input.
    """
    out, compiled, checkpoint = Path(out), Path(compiled), Path(checkpoint)
    check_apart(out, {"--compiled": compiled, "--checkpoint": checkpoint, "--tokenizer": tokenizer})
    check_replaceable(out, overwrite=overwrite)
    neuron_config = _read_neuron_config(compiled)
    compile_sdk = check_compile_sdk(compiled)
    tokenizer_files = _check_checkpoint(checkpoint, tokenizer)
    serving = serving_config(neuron_config, tp_degree, max_num_seqs)
    with output_dir(out, overwrite=overwrite) as tmp:
        # NxDI's quantized_checkpoint/ (fp32 non-quantized tensors) is not needed: the presharded weights/ serve.
        link_tree(compiled, tmp / COMPILED_SUBDIR, ignore=(QUANTIZED_DIR,))
        link_tree(checkpoint, tmp / CHECKPOINT_SUBDIR)
        for path in tokenizer_files:
            if not (tmp / CHECKPOINT_SUBDIR / path.name).exists():
                shutil.copy2(path, tmp / CHECKPOINT_SUBDIR / path.name)
        atomic_write_json(tmp / SERVING, serving)
        sizes = {
            "package": tree_bytes(tmp),
            "checkpoint": tree_bytes(tmp / CHECKPOINT_SUBDIR),
            "compiled": tree_bytes(tmp / COMPILED_SUBDIR),
            "left_out": {f"{COMPILED_SUBDIR}/{QUANTIZED_DIR}": tree_bytes(compiled / QUANTIZED_DIR)},
        }
        extra = {"serving": serving, "compile_sdk": compile_sdk, "sizes": sizes}
        atomic_write_json(tmp / MANIFEST, build_manifest(tmp, extra))
    return out


def load_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise NeuronforgeError(
            f"{root} has no {MANIFEST}: it is not a neuronforge package",
            "create it with `neuronforge package DIR --compiled ... --checkpoint ...`",
        )
    return json.loads(path.read_text())


def verify_package(root: Path) -> dict[str, Any]:
    """Re-hash every file against manifest.json; any missing, extra or changed file is an error."""
    root = Path(root)
    manifest = load_manifest(root)
    expected = manifest["files"]
    present = {p.relative_to(root).as_posix() for p in _files(root)}
    problems = [f"missing: {n}" for n in sorted(set(expected) - present)]
    problems += [f"not in manifest: {n}" for n in sorted(present - set(expected))]
    problems += [
        f"checksum mismatch: {n}"
        for n in sorted(set(expected) & present)
        if sha256_file(root / n) != expected[n]["sha256"]
    ]
    if problems:
        raise NeuronforgeError(
            f"{root} does not match its manifest ({'; '.join(problems[:5])})",
            "re-run `neuronforge package` to rebuild it; do not edit a package after packaging",
        )
    return manifest


def upload_package(root: Path, s3_uri: str, s3: S3Client) -> list[str]:
    """Verify checksums, upload with managed multipart transfers and a progress bar, then check S3's SHA-256."""
    from boto3.s3.transfer import TransferConfig

    from neuronforge.core.progress import progress

    root = Path(root)
    manifest = verify_package(root)
    bucket, key_prefix = s3uri.split(s3uri.prefix(s3_uri))
    names = [*sorted(manifest["files"]), MANIFEST]  # manifest last: its presence marks a complete upload
    config = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK)
    total = sum((root / n).stat().st_size for n in names)
    with progress() as bar:
        task = bar.add_task(f"upload to s3://{bucket}/{key_prefix}", total=total)
        for name in names:
            call(
                s3.upload_file,
                Filename=str(root / name),
                Bucket=bucket,
                Key=key_prefix + name,
                Config=config,
                ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                Callback=lambda sent: bar.advance(task, sent),
                fix=f"check that bucket {bucket} exists and is writable",
            )
    bad = []
    for name in names:
        head = call(s3.head_object, Bucket=bucket, Key=key_prefix + name, ChecksumMode="ENABLED")
        size_ok = head["ContentLength"] == (root / name).stat().st_size
        if not size_ok or not _same_checksum(head.get("ChecksumSHA256"), s3_sha256(root / name)):
            bad.append(name)
    if bad:
        raise NeuronforgeError(
            f"uploaded objects differ from the local files: {', '.join(bad[:5])}",
            "re-run the upload; do not create an endpoint from this prefix",
        )
    return [key_prefix + n for n in names]


def verify_remote_package(s3_uri: str, s3: S3Client) -> dict[str, Any]:
    """Before any endpoint exists: the prefix holds exactly the manifest's files, with the manifest's sizes."""
    bucket, key_prefix = s3uri.split(s3uri.prefix(s3_uri))
    fix = "upload the package first: neuronforge package DIR --upload " + s3uri.prefix(s3_uri)
    obj = call(s3.get_object, Bucket=bucket, Key=key_prefix + MANIFEST, fix=fix)
    manifest = json.loads(obj["Body"].read())
    remote: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix):
        remote |= {obj["Key"][len(key_prefix) :]: obj["Size"] for obj in page.get("Contents", [])}
    problems = [f"missing: {n}" for n, f in manifest["files"].items() if n not in remote]
    problems += [f"size differs: {n}" for n, f in manifest["files"].items() if n in remote and remote[n] != f["size"]]
    problems += [f"not in manifest: {n}" for n in sorted(set(remote) - set(manifest["files"]) - {MANIFEST})]
    if problems:
        raise NeuronforgeError(
            f"s3://{bucket}/{key_prefix} does not match its manifest ({'; '.join(problems[:5])})",
            "re-upload the package to an empty prefix (SageMaker copies every object under it)",
        )
    serving_sdk = pinned()["images"]["neuron"]["neuron_sdk"]
    if manifest.get("compile_sdk") != serving_sdk:
        raise NeuronforgeError(
            f"s3://{bucket}/{key_prefix} was compiled with Neuron SDK {manifest.get('compile_sdk', 'unknown')}, but "
            f"the endpoint image runs SDK {serving_sdk}",
            f"recompile with --sdk {serving_sdk} (or `neuronforge sagemaker compile`), package and upload again",
        )
    return manifest
