"""Content hashing, fingerprints and the manifest file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from neuronforge.core.hashing import content_hash, fingerprint
from neuronforge.core.package_versions import package_versions
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.run.manifest import MANIFEST_FILE, Manifest


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_content_hash_depends_on_content_and_names_not_timestamps(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a", {"w.bin": b"\x00\x01" * 1000, "sub/cfg.json": b"{}"})
    b = _tree(tmp_path / "b", {"w.bin": b"\x00\x01" * 1000, "sub/cfg.json": b"{}"})
    assert content_hash(a) == content_hash(b)
    os.utime(b / "w.bin", (1, 1))
    assert content_hash(a) == content_hash(b)
    (b / "w.bin").write_bytes(b"\x00\x02" * 1000)
    assert content_hash(a) != content_hash(b)
    c = _tree(tmp_path / "c", {"w2.bin": b"\x00\x01" * 1000, "sub/cfg.json": b"{}"})
    assert content_hash(a) != content_hash(c)
    with pytest.raises(FileNotFoundError):
        content_hash(tmp_path / "missing")


def test_fingerprint_hashes_paths_by_content(tmp_path: Path) -> None:
    model = _tree(tmp_path / "m", {"model.safetensors": b"abc"})
    versions = {"neuronforge": "1"}
    fp1, canonical = fingerprint({"model": model, "iters": 5}, versions)
    assert canonical["model"] == {"content_sha256": content_hash(model)}
    assert fingerprint({"model": model, "iters": 5}, versions)[0] == fp1
    assert fingerprint({"model": model, "iters": 6}, versions)[0] != fp1
    assert fingerprint({"model": model, "iters": 5}, {"neuronforge": "2"})[0] != fp1
    (model / "model.safetensors").write_bytes(b"abd")
    assert fingerprint({"model": model, "iters": 5}, versions)[0] != fp1


def test_manifest_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    manifest = Manifest.load(tmp_path)
    assert manifest.stages == {}
    manifest.start(tmp_path, "quantize", "fp", {"iters": 5}, package_versions(("neuronforge", "not-a-package")))
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["stages"]["quantize"]["status"] == "running"
    manifest.finish(tmp_path, "quantize", status="done", seconds=1.5, summary={"ppl": 12.0})
    again = Manifest.load(tmp_path)
    record = again.stages["quantize"]
    assert (record.status, record.seconds, record.summary, record.pid) == ("done", 1.5, {"ppl": 12.0}, None)
    assert record.versions["not-a-package"] == "absent"
    (tmp_path / MANIFEST_FILE).write_text('{"stages": {"x": {"status": "exploded"}}}')
    with pytest.raises(NeuronforgeError, match="not a neuronforge manifest"):
        Manifest.load(tmp_path)
