"""The generic stage runner, with small real stages: skip-if-unchanged, resume, atomic outputs, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from neuronforge.core.outputs import OUTPUT_MARKER
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.run.manifest import Manifest
from neuronforge.pipeline.run.runner import (
    Stage,
    StageContext,
    StageEvent,
    StageResult,
    StageRun,
    run_lock,
    run_stages,
)


class Made(BaseModel):
    n: int


class Total(BaseModel):
    total: int


def _count(ctx: StageContext[dict[str, Any]], name: str) -> None:
    """Append the stage name to a log outside the run dir, so tests can see what actually executed."""
    with open(ctx.config["log"], "a") as handle:
        handle.write(name + "\n")


def _make(ctx: StageRun[dict[str, Any]]) -> StageResult:
    _count(ctx, "make")
    (ctx.workdir / "numbers.txt").write_text("\n".join(str(i * ctx.config["scale"]) for i in range(10)))
    return StageResult(summary=Made(n=10))


def _total(ctx: StageRun[dict[str, Any]]) -> StageResult:
    _count(ctx, "total")
    numbers = (ctx.output("make") / "numbers.txt").read_text().split()
    if ctx.config.get("fail_total"):
        raise NeuronforgeError("total failed on purpose")
    if ctx.config.get("sleep_total"):
        (ctx.workdir / "half.txt").write_text("partial")
        Path(ctx.config["marker"]).write_text("in total")
        time.sleep(ctx.config["sleep_total"])
    (ctx.workdir / "total.txt").write_text(str(sum(int(x) for x in numbers)))
    return StageResult(summary=Total(total=sum(int(x) for x in numbers)))


STAGES = [
    Stage("make", "write numbers", inputs=lambda ctx: {"scale": ctx.config["scale"]}, run=_make),
    Stage("total", "sum them", inputs=lambda ctx: {"numbers": ctx.output("make")}, run=_total, needs=("make",)),
]


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"scale": 2, "log": str(tmp_path / "log.txt"), "marker": str(tmp_path / "marker"), **extra}


def _executed(tmp_path: Path) -> list[str]:
    log = tmp_path / "log.txt"
    lines = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


def test_second_run_does_no_work_and_changes_rerun_what_they_touch(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    events: list[StageEvent] = []
    manifest = run_stages(run_dir, STAGES, _config(tmp_path), listener=events.append)
    assert _executed(tmp_path) == ["make", "total"]
    assert (run_dir / "total" / "total.txt").read_text() == "90"
    assert manifest.stages["total"].summary == {"total": 90}
    assert [e.status for e in events] == ["running", "done", "running", "done"]

    events.clear()
    run_stages(run_dir, STAGES, _config(tmp_path), listener=events.append)
    assert _executed(tmp_path) == []
    assert [e.status for e in events] == ["up to date", "up to date"]

    run_stages(run_dir, STAGES, _config(tmp_path, scale=3))  # new parameter: both stages
    assert _executed(tmp_path) == ["make", "total"]
    assert (run_dir / "total" / "total.txt").read_text() == "135"

    (run_dir / "total" / "total.txt").write_text("tampered")  # corrupted output: only that stage
    run_stages(run_dir, STAGES, _config(tmp_path, scale=3))
    assert _executed(tmp_path) == ["total"]
    assert (run_dir / "total" / "total.txt").read_text() == "135"


def test_failed_stage_is_recorded_and_the_rerun_resumes_there(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(NeuronforgeError, match="on purpose"):
        run_stages(run_dir, STAGES, _config(tmp_path, fail_total=True))
    record = Manifest.load(run_dir).stages["total"]
    assert (record.status, record.message) == ("failed", "total failed on purpose")
    assert not (run_dir / "total").exists()
    assert _executed(tmp_path) == ["make", "total"]
    run_stages(run_dir, STAGES, _config(tmp_path))
    assert _executed(tmp_path) == ["total"]
    assert Manifest.load(run_dir).stages["total"].status == "done"


def test_selected_stages_and_stale_upstream(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(NeuronforgeError, match="stage 'make' has no finished output"):
        run_stages(run_dir, STAGES, _config(tmp_path), selected=["total"])
    assert not run_dir.exists()  # refused before anything was created
    with pytest.raises(NeuronforgeError, match="unknown stage"):
        run_stages(run_dir, STAGES, _config(tmp_path), selected=["nope"])
    run_stages(run_dir, STAGES, _config(tmp_path), selected=["make"])
    assert _executed(tmp_path) == ["make"]
    run_stages(run_dir, STAGES, _config(tmp_path), selected=["total"])
    assert _executed(tmp_path) == ["total"]
    with pytest.raises(NeuronforgeError, match="'make' .* out of date"):
        run_stages(run_dir, STAGES, _config(tmp_path, scale=5), selected=["total"])


def test_unavailable_stage_is_skipped_every_time_and_never_cached(tmp_path: Path) -> None:
    here = {"neuron": False}
    stages = [
        *STAGES,
        Stage(
            "device",
            "needs hardware",
            inputs=lambda ctx: {},
            run=lambda ctx: StageResult(),
            unavailable=lambda ctx: None if here["neuron"] else "no Neuron device on this host",
        ),
    ]
    events: list[StageEvent] = []
    run_stages(tmp_path / "run", stages, _config(tmp_path), listener=events.append)
    assert events[-1] == StageEvent("device", "skipped", "no Neuron device on this host")
    assert Manifest.load(tmp_path / "run").stages["device"].status == "skipped"
    here["neuron"] = True
    run_stages(tmp_path / "run", stages, _config(tmp_path), listener=events.append)
    assert events[-1].status == "done" and events[-1].stage == "device"


def test_lock_refuses_a_second_concurrent_run(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with run_lock(tmp_path / "run"):
        with pytest.raises(NeuronforgeError, match=f"pid {os.getpid()}"):
            run_stages(tmp_path / "run", STAGES, _config(tmp_path))


def test_sigkill_mid_stage_then_rerun_resumes_with_complete_output(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = _config(tmp_path, sleep_total=60)
    cmd = [sys.executable, __file__, str(run_dir), json.dumps(config)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).parent)
    try:
        deadline = time.monotonic() + 60
        while not Path(config["marker"]).exists():
            assert proc.poll() is None, "the toy pipeline exited before reaching the stage"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    partials = [p.name for p in run_dir.iterdir() if ".partial-" in p.name]
    assert partials and partials[0].startswith(".total.partial-")
    assert not (run_dir / "total").exists()
    assert Manifest.load(run_dir).stages["total"].status == "running"
    assert _executed(tmp_path) == ["make", "total"]

    run_stages(run_dir, STAGES, _config(tmp_path))
    assert _executed(tmp_path) == ["total"]
    assert (run_dir / "total" / "total.txt").read_text() == "90"
    assert sorted(p.name for p in (run_dir / "total").iterdir()) == [OUTPUT_MARKER, "total.txt"]
    assert not [p for p in run_dir.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert Manifest.load(run_dir).stages["total"].status == "done"


if __name__ == "__main__":  # the subprocess side of the SIGKILL test
    run_stages(Path(sys.argv[1]), STAGES, json.loads(sys.argv[2]))
