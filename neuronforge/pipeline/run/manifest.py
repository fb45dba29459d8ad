"""The run directory's `manifest.json`: what each stage consumed, produced, and how it went.

A stage is skipped on a re-run only when its fingerprint (a hash over its parameters, the content
of every input path and the package versions) equals the recorded one AND its recorded outputs
still hash to what was written. Content hashes, not timestamps, so a copied or synced run directory
(e.g. down from S3 on another host) is recognised as the same work.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from neuronforge.core.atomic import atomic_write_json
from neuronforge.core.outputs import RUN_MANIFEST
from neuronforge.errors import NeuronforgeError

MANIFEST_FILE = RUN_MANIFEST
SCHEMA_VERSION = 1

Status = Literal["running", "done", "failed", "skipped"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")  # a fast re-run must not look like the same start


class StageRecord(BaseModel):
    """One stage's entry in the manifest."""

    status: Status
    fingerprint: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)  # name -> path (relative to the run dir when inside it)
    output_hashes: dict[str, str] = Field(default_factory=dict)
    summary: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None
    message: str | None = None
    pid: int | None = None


class Manifest(BaseModel):
    """All stage records of one run directory, saved atomically after every change."""

    schema_version: int = SCHEMA_VERSION
    created_at: str = Field(default_factory=now)
    config: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageRecord] = Field(default_factory=dict)
    # Entries of the run directory this run made. Recorded before a stage creates its folder, and the only
    # folders a run ever replaces: anything else in the run directory is the user's and is never touched.
    created: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _created_by_older_runs(self) -> Manifest:
        """Manifests written before `created` existed: their finished stages made their own folders."""
        if not self.created:
            self.created = [name for name, record in self.stages.items() if record.outputs.get("dir") == name]
        return self

    @classmethod
    def load(cls, run_dir: Path) -> Manifest:
        """The run's manifest, or an empty one for a new run directory."""
        path = Path(run_dir) / MANIFEST_FILE
        if not path.exists():
            return cls()
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise NeuronforgeError(
                f"{path} is not a neuronforge manifest ({exc.error_count()} problems, first: {exc.errors()[0]['msg']})",
                f"point --out at a fresh directory, or delete {path} to start this run over",
            ) from exc

    def save(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / MANIFEST_FILE, self.model_dump(mode="json"))

    def start(self, run_dir: Path, name: str, fp: str, inputs: dict[str, Any], versions: dict[str, str]) -> None:
        self.stages[name] = StageRecord(
            status="running", fingerprint=fp, inputs=inputs, versions=versions, started_at=now(), pid=os.getpid()
        )
        self.save(run_dir)

    def finish(self, run_dir: Path, name: str, **fields: Any) -> StageRecord:
        record = self.stages[name].model_copy(update={"finished_at": now(), "pid": None, **fields})
        self.stages[name] = record
        self.save(run_dir)
        return record
