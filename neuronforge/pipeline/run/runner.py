"""Generic stage runner: fingerprint, skip-if-unchanged, resume-after-kill, atomic outputs.

Each stage writes into a temporary directory that is renamed to `<run_dir>/<stage>` only when the
stage returns, so a killed run leaves either the previous complete output or none. The manifest
marks the stage `running` before it starts; a record still `running` (or `failed`) on the next
invocation is simply re-run, and the stale `.partial-`/`.old-` directories are removed first. An
exclusive lock on the run directory keeps two processes from running stages in it at once.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from neuronforge.core.atomic import atomic_dir, remove_leftovers
from neuronforge.core.hashing import content_hash, fingerprint
from neuronforge.core.outputs import RUN_LOCK, check_replaceable, mark_output, written_files
from neuronforge.core.package_versions import package_versions
from neuronforge.errors import NeuronforgeError, interrupt_message, os_error
from neuronforge.pipeline.run.manifest import MANIFEST_FILE, Manifest, StageRecord

LOCK_FILE = RUN_LOCK
STAGE_DIR_OUTPUT = "dir"


Config = TypeVar("Config")
Summary = TypeVar("Summary", bound=BaseModel)


@dataclass(frozen=True)
class StageResult:
    """What a stage hands back: its summary (a pydantic model, stored as JSON in the manifest) and any outputs
    outside its own directory."""

    summary: BaseModel | None = None
    outputs: dict[str, Path] = field(default_factory=dict)


@dataclass
class StageContext(Generic[Config]):
    """What a stage may look at: the run's config (its inputs) and earlier stages' records and outputs."""

    run_dir: Path
    config: Config
    manifest: Manifest

    def record(self, stage: str) -> StageRecord:
        record = self.manifest.stages.get(stage)
        if record is None or record.status != "done":
            raise NeuronforgeError(
                f"stage '{stage}' has no finished output in {self.run_dir}",
                f"run it first: add '{stage}' to --stages (or run without --stages)",
            )
        return record

    def done(self, stage: str) -> bool:
        record = self.manifest.stages.get(stage)
        return record is not None and record.status == "done"

    def output(self, stage: str, name: str = STAGE_DIR_OUTPUT) -> Path:
        """A finished stage's output path (its directory by default)."""
        path = Path(self.record(stage).outputs[name])
        return path if path.is_absolute() else self.run_dir / path

    def summary(self, stage: str, model: type[Summary]) -> Summary:
        """A finished stage's summary, read back as the model it wrote."""
        return model.model_validate(self.record(stage).summary)


@dataclass
class StageRun(StageContext[Config]):
    """The context of a running stage: also the temporary directory that becomes `<run_dir>/<stage>`."""

    workdir: Path


@dataclass(frozen=True)
class Stage:
    """One pipeline step. `inputs` lists what it depends on (Path values are content-hashed);
    `unavailable` returns why it cannot run on this host (it is then reported as skipped, never cached)."""

    name: str
    help: str
    inputs: Callable[[StageContext[Any]], dict[str, Any]]
    run: Callable[[StageRun[Any]], StageResult]
    needs: tuple[str, ...] = ()
    unavailable: Callable[[StageContext[Any]], str | None] = lambda ctx: None
    versions: tuple[str, ...] = ("neuronforge",)


@dataclass(frozen=True)
class StageEvent:
    stage: str
    status: str  # "up to date" | "running" | "done" | "failed" | "skipped" | "warning"
    message: str = ""
    seconds: float | None = None


Listener = Callable[[StageEvent], None]


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory (released by the OS even on SIGKILL)."""
    path = run_dir / LOCK_FILE
    if path.is_dir() or (path.exists() and not path.is_file()):  # was a raw "Is a directory" (report I11)
        raise NeuronforgeError(
            f"{path} is not the run's lock file (it is a folder or a special file)",
            f"remove {path}; the run recreates it",
        )
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise NeuronforgeError(
                f"another neuronforge run (pid {holder}) is using {run_dir}",
                "wait for it to finish, or choose another --out",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clean_partials(run_dir: Path) -> list[Path]:
    """Remove the temp folders a killed stage left (`.<stage>.partial-<pid>-*` of a process that is gone)."""
    return remove_leftovers(run_dir)


def _relative(path: Path, run_dir: Path) -> str:
    """Relative inside the run directory (it may move or sync to S3); absolute outside it, never cwd-relative."""
    try:
        return path.relative_to(run_dir).as_posix()
    except ValueError:
        return os.path.abspath(path)


def is_fresh(record: StageRecord | None, fp: str, run_dir: Path) -> bool:
    """Done with the same fingerprint, and every recorded output still has the content that was written."""
    if record is None or record.status != "done" or record.fingerprint != fp:
        return False
    for name, stored in record.outputs.items():
        path = Path(stored) if Path(stored).is_absolute() else run_dir / stored
        if not path.exists() or content_hash(path) != record.output_hashes.get(name):
            return False
    return True


def _fingerprint(stage: Stage, ctx: StageContext[Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    versions = package_versions(stage.versions)
    fp, canonical = fingerprint(stage.inputs(ctx), versions)
    return fp, canonical, versions


def _check_upstream(stage: Stage, ctx: StageContext[Any], selected: set[str], by_name: dict[str, Stage]) -> None:
    """A stage run on its own must not silently consume an upstream output made for a different config."""
    for dep in stage.needs:
        ctx.record(dep)
        if dep in selected or dep not in by_name:
            continue
        record = ctx.manifest.stages[dep]
        try:
            fp, _, _ = _fingerprint(by_name[dep], ctx)
        except FileNotFoundError:
            # Its inputs live on the host that ran it (e.g. the GPU host of a shared s3:// run):
            # trust the record as long as its outputs here are intact.
            fp = record.fingerprint
        if not is_fresh(record, fp, ctx.run_dir):
            raise NeuronforgeError(
                f"stage '{dep}' in {ctx.run_dir} is out of date for this config, and '{stage.name}' needs it",
                f"add '{dep}' to --stages (or run without --stages)",
            )


def _check_before_start(stages: list[Stage], chosen: set[str], run_dir: Path) -> None:
    """Before anything is created or recorded: every chosen stage's inputs are chosen too or already finished
    here, and no chosen stage would replace a folder this run did not make."""
    manifest = Manifest.load(run_dir) if (run_dir / MANIFEST_FILE).is_file() else Manifest()
    for stage in stages:
        _check_stage_folder(run_dir / stage.name)
    for stage in (stage for stage in stages if stage.name in chosen):
        for dep in stage.needs:
            record = manifest.stages.get(dep)
            if dep not in chosen and (record is None or record.status != "done"):
                raise NeuronforgeError(
                    f"stage '{dep}' has no finished output in {run_dir}, and '{stage.name}' needs it",
                    f"add '{dep}' to --stages (or run without --stages)",
                )
        _check_owned(run_dir / stage.name, manifest)


def _check_stage_folder(folder: Path) -> None:
    """A stage folder is a real folder: a link put in its place would be followed (its target hashed, and
    accepted as up to date: report I02) and a file would be silently replaced (I12); neither is the run's."""
    if folder.is_symlink():
        raise NeuronforgeError(
            f"{folder} is a symbolic link (to {os.readlink(folder)}), not the stage folder this run made; a run "
            "never follows or replaces a link it did not make",
            f"remove the link {folder} (the stage then runs again), or put a real copy of the folder there",
        )
    if folder.exists() and not folder.is_dir():
        raise NeuronforgeError(
            f"{folder} is a file, not the stage folder this run made; a run never replaces a file it did not write",
            f"move {folder} out of {folder.parent} (the stage then runs again)",
        )


def _check_owned(folder: Path, manifest: Manifest) -> None:
    """A stage folder may be replaced only when the manifest says this run made it."""
    if folder.name not in manifest.created and (folder.exists() or folder.is_symlink()):
        raise NeuronforgeError(
            f"{folder} was not made by neuronforge (the run manifest does not list it), so it is not replaced",
            f"move it out of {folder.parent}: a run only ever replaces folders it created",
        )


def run_stages(
    run_dir: Path,
    stages: list[Stage],
    config: Any,
    *,
    selected: list[str] | None = None,
    listener: Listener = lambda event: None,
    after_stage: Callable[[str], None] = lambda name: None,
    config_record: dict[str, Any] | None = None,
) -> Manifest:
    """Run `stages` in order (only `selected` ones if given), skipping those whose inputs are unchanged."""
    by_name = {stage.name: stage for stage in stages}
    unknown = [name for name in selected or [] if name not in by_name]
    if unknown:
        raise NeuronforgeError(f"unknown stage(s): {', '.join(unknown)}", f"choose from: {', '.join(by_name)}")
    chosen = set(selected or by_name)
    run_dir = Path(run_dir)
    _check_before_start(stages, chosen, run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, run_dir, "--out") from None
    with run_lock(run_dir):
        clean_partials(run_dir)
        manifest = Manifest.load(run_dir)
        if config_record is not None:
            manifest.config = config_record
            manifest.save(run_dir)
        for stage in stages:
            if stage.name not in chosen:
                continue
            _run_one(stage, StageContext(run_dir, config, manifest), chosen, by_name, listener)
            after_stage(stage.name)
    return manifest


def _run_one(
    stage: Stage, ctx: StageContext[Any], chosen: set[str], by_name: dict[str, Stage], listener: Listener
) -> None:
    run_dir, manifest = ctx.run_dir, ctx.manifest
    reason = stage.unavailable(ctx)
    if reason:
        manifest.stages[stage.name] = StageRecord(status="skipped", message=reason)
        manifest.save(run_dir)
        listener(StageEvent(stage.name, "skipped", reason))
        return
    _check_upstream(stage, ctx, chosen, by_name)
    try:
        fp, canonical, versions = _fingerprint(stage, ctx)
    except FileNotFoundError as exc:
        raise NeuronforgeError(
            f"an input of stage '{stage.name}' no longer exists: {exc}",
            "restore it, or run the stages that make it again (run without --stages)",
        ) from None
    if is_fresh(manifest.stages.get(stage.name), fp, run_dir):
        listener(StageEvent(stage.name, "up to date", seconds=manifest.stages[stage.name].seconds))
        return
    final = run_dir / stage.name
    _check_owned(final, manifest)
    if written_files(final) is not None:  # (an older run's folder has no list: the manifest is its record)
        check_replaceable(final, overwrite=True, flag="the stage folder")  # a file put there is not deleted (I08)
    if stage.name not in manifest.created:
        manifest.created.append(stage.name)  # saved by start(), before the folder exists
    manifest.start(run_dir, stage.name, fp, canonical, versions)
    started = time.perf_counter()
    try:  # from here on, an interruption (Ctrl-C, SIGTERM) is recorded as this stage's failure
        listener(StageEvent(stage.name, "running", stage.help))
        with atomic_dir(final, overwrite=True) as tmp:
            result = stage.run(StageRun(run_dir, ctx.config, manifest, workdir=tmp))
            mark_output(tmp)
    except BaseException as exc:
        if isinstance(exc, NeuronforgeError):
            message = exc.what
        elif isinstance(exc, KeyboardInterrupt):
            message = interrupt_message(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - started
        manifest.finish(run_dir, stage.name, status="failed", message=message, seconds=seconds)
        listener(StageEvent(stage.name, "failed", message, seconds))
        raise
    outputs = {"dir": final, **result.outputs}
    manifest.finish(
        run_dir,
        stage.name,
        status="done",
        outputs={name: _relative(path, run_dir) for name, path in outputs.items()},
        output_hashes={name: content_hash(path) for name, path in outputs.items()},
        summary={} if result.summary is None else result.summary.model_dump(mode="json"),
        seconds=round(time.perf_counter() - started, 3),
    )
    listener(StageEvent(stage.name, "done", seconds=manifest.stages[stage.name].seconds))
