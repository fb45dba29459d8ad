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

from pydantic import BaseModel, ConfigDict, Field

from neuronforge.core import s3uri
from neuronforge.core.atomic import atomic_write_json, link_tree, tree_bytes
from neuronforge.core.aws import call, uninterrupted
from neuronforge.core.hashing import sha256_file
from neuronforge.core.knobs import LocalPath, TpDegree
from neuronforge.core.logs import LOG_DIR
from neuronforge.core.outputs import OUTPUT_MARKER, check_apart, check_replaceable, output_dir
from neuronforge.core.package_versions import installed_versions
from neuronforge.core.progress import progress
from neuronforge.errors import NeuronforgeError
from neuronforge.hf.config_compat import make_tokenizer_portable
from neuronforge.neuron.nxdi.compile import QUANTIZED_DIR, RECORD_FILE
from neuronforge.neuron.nxdi.config import batching_fields
from neuronforge.neuron.nxdi.config_json import unloadable_kv_quant_config
from neuronforge.neuron.nxdi.runtime import public_version
from neuronforge.neuron.nxdi.versions import SDKS
from neuronforge.sagemaker.images import neuron_image
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
    batch = int(neuron_config.get("batch_size") or 1)
    expected = batching_fields(batch)
    if batch > 1 and any(neuron_config.get(key) != value for key, value in expected.items()):
        raise NeuronforgeError(
            f"{compiled} was compiled for batch_size {batch} without continuous batching ({expected} expected), so "
            "concurrent requests on the endpoint would overwrite each other's KV cache",
            "recompile with this neuronforge (it compiles batch > 1 the way vllm-neuron serves it)",
        )
    return neuron_config


def check_compile_sdk(compiled: Path) -> str:
    """The compile's Neuron SDK, which picks the serving image: NEFFs and NxDI configs do not cross NxDI builds.

    The NxDI version the compile recorded must be exactly the one that SDK's serving image pins (NEW-9: an NxDI
    0.10.17970 host is not the 0.10.18399 image).
    """
    fix = (
        "recompile with `neuronforge compile --sdk <2.28|2.31>` on a host with that SDK's pinned NxDI, or with "
        "`neuronforge sagemaker compile`, which runs the serving image"
    )
    record_path = compiled / RECORD_FILE
    if not record_path.is_file():
        raise NeuronforgeError(f"{compiled} has no {RECORD_FILE}, so its Neuron SDK is unknown", fix)
    record = json.loads(record_path.read_text())
    sdk = str(record.get("sdk"))
    image = neuron_image(sdk)
    installed = (record.get("installed") or {}).get("neuronx-distributed-inference")
    if public_version(installed) != image["nxdi"]:
        raise NeuronforgeError(
            f"{compiled} was compiled with NxD Inference {installed or 'of unknown version'}, but the SDK {sdk} "
            f"serving image ({image['base']}) runs NxD Inference {image['nxdi']}",
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


class PackageOptions(BaseModel):
    """What `nf.package` / `neuronforge package` lays out: a compiled model plus its stage-1 checkpoint."""

    model_config = ConfigDict(extra="forbid")

    out: LocalPath = Field(description="package directory to write")
    compiled: LocalPath = Field(description="`neuronforge compile` output directory")
    checkpoint: LocalPath = Field(description="`neuronforge quantize` output directory")
    tokenizer: LocalPath | None = Field(None, description="tokenizer folder if the checkpoint lacks one")
    tp_degree: TpDegree = Field(None, description="default: read from compiled/neuron_config.json")
    max_num_seqs: int = Field(1, ge=1, description="concurrent sequences the endpoint serves")
    overwrite: bool = Field(False, description="replace the output if it exists")


def package(options: PackageOptions) -> Path:
    """`package_model` for an options object (`nf.package`)."""
    return package_model(**options.model_dump())


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
        link_tree(checkpoint, tmp / CHECKPOINT_SUBDIR, ignore=(LOG_DIR,))  # `quantize`'s third-party log
        for path in tokenizer_files:
            if not (tmp / CHECKPOINT_SUBDIR / path.name).exists():
                shutil.copy2(path, tmp / CHECKPOINT_SUBDIR / path.name)
        make_tokenizer_portable(tmp / CHECKPOINT_SUBDIR)  # replaces the package's link, never the source file
        atomic_write_json(tmp / SERVING, serving)
        sizes = {
            "package": tree_bytes(tmp),
            "checkpoint": tree_bytes(tmp / CHECKPOINT_SUBDIR),
            "compiled": tree_bytes(tmp / COMPILED_SUBDIR),
            "left_out": {f"{COMPILED_SUBDIR}/{QUANTIZED_DIR}": tree_bytes(compiled / QUANTIZED_DIR)},
        }
        image = neuron_image(compile_sdk)
        extra = {"serving": serving, "compile_sdk": compile_sdk, "serving_image": image["base"], "sizes": sizes}
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

    root = Path(root)
    manifest = verify_package(root)
    bucket, key_prefix = s3uri.split(s3uri.prefix(s3_uri))
    names = [*sorted(manifest["files"]), MANIFEST]  # manifest last: its presence marks a complete upload
    config = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK)
    total = sum((root / n).stat().st_size for n in names)
    written: list[str] = []
    try:
        with progress() as bar:
            task = bar.add_task(f"upload to s3://{bucket}/{key_prefix}", total=total)
            for name in names:
                written.append(key_prefix + name)  # before the call: an interrupted upload may still land
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
    except (NeuronforgeError, KeyboardInterrupt) as exc:
        state = _remove_partial_upload(s3, bucket, key_prefix, [*written, key_prefix + MANIFEST])
        if isinstance(exc, KeyboardInterrupt):
            exc.add_note(state)
            exc.add_note(f"run the same `neuronforge package ... --upload s3://{bucket}/{key_prefix}` again")
            raise
        raise NeuronforgeError(f"{exc.what}; {state}", exc.fix) from None
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


def _remove_partial_upload(s3: S3Client, bucket: str, key_prefix: str, keys: list[str]) -> str:
    """Delete what a failed or interrupted upload wrote (and the manifest, which marks a complete package), so the
    prefix never looks deployable; what could not be deleted is named with the command that removes it."""
    where = f"s3://{bucket}/{key_prefix}"
    with uninterrupted():
        try:
            answer = call(
                s3.delete_objects,
                Bucket=bucket,
                Delete={"Objects": [{"Key": key} for key in dict.fromkeys(keys)], "Quiet": True},
            )
        except NeuronforgeError as exc:
            return f"the objects uploaded so far stay under {where} ({exc.what}); remove them: aws s3 rm --recursive {where}"
    if answer.get("Errors"):
        left = ", ".join(e["Key"] for e in answer["Errors"][:5])
        return f"could not remove {left} under {where}; remove them: aws s3 rm --recursive {where}"
    return f"removed the objects this upload had written under {where}"


def _remote_manifest(s3_uri: str, s3: S3Client) -> dict[str, Any]:
    bucket, key_prefix = s3uri.split(s3uri.prefix(s3_uri))
    fix = "upload the package first: neuronforge package DIR --upload " + s3uri.prefix(s3_uri)
    obj = call(s3.get_object, Bucket=bucket, Key=key_prefix + MANIFEST, fix=fix)
    return json.loads(obj["Body"].read())


def remote_compile_sdk(s3_uri: str, s3: S3Client) -> str:
    """The Neuron SDK an uploaded package was compiled with: its serving image's."""
    sdk = _remote_manifest(s3_uri, s3).get("compile_sdk")
    if sdk not in SDKS:
        raise NeuronforgeError(
            f"{s3uri.prefix(s3_uri)}manifest.json names no Neuron SDK neuronforge serves ({sdk!r})",
            "re-package the compile with this neuronforge and upload it again",
        )
    return str(sdk)


def verify_remote_package(s3_uri: str, s3: S3Client, sdk: str) -> dict[str, Any]:
    """Before any endpoint exists: the prefix holds exactly the manifest's files, with the manifest's sizes, and was
    compiled with Neuron SDK `sdk`, the endpoint image's."""
    bucket, key_prefix = s3uri.split(s3uri.prefix(s3_uri))
    manifest = _remote_manifest(s3_uri, s3)
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
    if manifest.get("compile_sdk") != sdk:
        compiled_with = manifest.get("compile_sdk", "unknown")
        raise NeuronforgeError(
            f"s3://{bucket}/{key_prefix} was compiled with Neuron SDK {compiled_with}, but the endpoint would run the "
            f"SDK {sdk} image",
            f"deploy with --sdk {compiled_with}" if compiled_with in SDKS else "recompile, package and upload again",
        )
    return manifest
