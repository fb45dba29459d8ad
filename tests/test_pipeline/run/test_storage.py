"""s3:// storage against moto: mirror down, sync up, no-op re-syncs, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuronforge.core.hashing import content_hash
from neuronforge.core.s3uri import S3Uri, split
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.run import storage

BUCKET = "nf-test"


@pytest.fixture
def s3(aws_env: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    import boto3

    monkeypatch.setenv("NEURONFORGE_CACHE", str(tmp_path / "cache"))
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 4096)
    (root / "sub" / "config.json").write_text('{"a": 1}')
    (root / ".lock").write_text("123")
    return root


def test_parse() -> None:
    uri = S3Uri.parse("s3://bkt/runs/x/")
    assert (uri.bucket, uri.prefix, str(uri.child("m.json"))) == ("bkt", "runs/x/", "s3://bkt/runs/x/m.json")
    assert S3Uri.parse("s3://bkt").prefix == ""
    # One parser for storage and the SageMaker requests: S3's bucket naming rules hold for both.
    for bad in ("/local/path", "s3:///key", "s3://My_Bucket/key", "s3://b/key"):
        with pytest.raises(NeuronforgeError, match="is not an s3:// URI"):
            S3Uri.parse(bad)
        with pytest.raises(NeuronforgeError, match="is not an s3:// URI"):
            split(bad)
        with pytest.raises(NeuronforgeError, match="is not an s3:// URI"):
            storage.local_mirror(bad)


def test_upload_then_download_round_trip_and_resync_is_a_no_op(s3, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    assert storage.upload_dir(src, f"s3://{BUCKET}/models/m") == 2
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == ["models/m/model.safetensors", "models/m/sub/config.json"]  # the dot-file stayed home
    assert storage.upload_dir(src, f"s3://{BUCKET}/models/m") == 0

    local = storage.download(f"s3://{BUCKET}/models/m/")
    assert local == tmp_path / "cache" / "s3" / BUCKET / "models" / "m"
    (src / ".lock").unlink()
    assert content_hash(local) == content_hash(src)
    before = (local / "model.safetensors").stat().st_mtime_ns
    storage.download(f"s3://{BUCKET}/models/m")
    assert (local / "model.safetensors").stat().st_mtime_ns == before  # in sync: not fetched again

    single = storage.download(f"s3://{BUCKET}/models/m/sub/config.json", tmp_path / "one.json")
    assert single.read_text() == '{"a": 1}'


def test_mirrors_are_exact_both_ways(s3, tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    storage.upload_dir(src, f"s3://{BUCKET}/run/quantize")
    local = storage.download(f"s3://{BUCKET}/run/quantize")
    (src / "sub" / "config.json").unlink()
    (src / "new.txt").write_text("new")
    assert storage.upload_dir(src, f"s3://{BUCKET}/run/quantize") == 1
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"])
    assert keys == ["run/quantize/model.safetensors", "run/quantize/new.txt"]
    storage.download(f"s3://{BUCKET}/run/quantize")
    assert sorted(p.name for p in local.rglob("*") if p.is_file()) == ["model.safetensors", "new.txt"]


def test_missing_bucket_object_and_prefix(s3, tmp_path: Path) -> None:
    with pytest.raises(NeuronforgeError, match="bucket 'nope' does not exist"):
        storage.download("s3://nope/models/m")
    with pytest.raises(NeuronforgeError, match="bucket 'nope' does not exist"):
        storage.download("s3://nope/models/m.txt")
    with pytest.raises(NeuronforgeError, match="nothing found at s3://nf-test/absent"):
        storage.download(f"s3://{BUCKET}/absent")
    empty = storage.download(f"s3://{BUCKET}/fresh-run", tmp_path / "fresh", missing_ok=True)
    assert empty.is_dir() and not any(empty.iterdir())
    with pytest.raises(NeuronforgeError, match="bucket 'nope' does not exist"):
        storage.upload_dir(_tree(tmp_path / "src"), "s3://nope/x")


def test_missing_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(NeuronforgeError, match="no usable AWS credentials") as info:
        storage.download(f"s3://{BUCKET}/models/m")
    assert "aws configure" in info.value.fix


def test_localize(s3, tmp_path: Path) -> None:
    assert storage.localize(None, what="text file") is None
    with pytest.raises(NeuronforgeError, match="text file .* does not exist"):
        storage.localize(str(tmp_path / "missing.txt"), what="text file")
    s3.put_object(Bucket=BUCKET, Key="texts/a.txt", Body=b"hello")
    assert storage.localize(f"s3://{BUCKET}/texts/a.txt", what="text file").read_text() == "hello"
