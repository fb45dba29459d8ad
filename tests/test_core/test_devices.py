"""`--device auto|cuda|cpu`: never a silent CPU fallback, and GPU memory counted as this process can use it."""

from __future__ import annotations

import pytest
import torch

from neuronforge.core import devices
from neuronforge.errors import NeuronforgeError

GB = 10**9


def test_cuda_without_a_usable_gpu_refuses_with_torchs_reason() -> None:
    """This machine's torch is a CPU-only build: `cuda` refuses at once and says so; `cpu` and `auto` run."""
    with pytest.raises(NeuronforgeError, match="CPU-only build") as refused:
        devices.resolve_device("cuda")
    assert "docs/gpu.md" in refused.value.fix and "--device cpu" in refused.value.fix
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_a_driver_older_than_the_torch_build_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build of torch on a host whose driver is too old: torch's own probe names the cause."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def init() -> None:
        raise RuntimeError("The NVIDIA driver on your system is too old (found version 12040).")

    monkeypatch.setattr(torch.cuda, "init", init)
    with pytest.raises(NeuronforgeError, match="driver on your system is too old"):
        devices.resolve_device("cuda")


def test_auto_on_a_host_whose_gpu_torch_cannot_use_warns(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(devices, "gpu_present", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cpu")
    said = " ".join(capsys.readouterr().err.split())  # (rich wraps long lines)
    assert "warning:" in said and "NVIDIA GPU" in said and "CPU-only build" in said
    monkeypatch.setattr(devices, "gpu_present", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert capsys.readouterr().err == ""  # a CPU host: nothing to warn about


def test_usable_memory_counts_the_allocators_cached_blocks() -> None:
    """mem_get_info counts blocks torch's caching allocator holds but no tensor uses as used: they are not."""
    assert devices.usable_bytes(free=7 * GB, reserved=16 * GB, allocated=6 * GB) == 17 * GB
    assert devices.usable_bytes(free=7 * GB, reserved=6 * GB, allocated=6 * GB) == 7 * GB


@pytest.fixture
def gpu_24gb(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A 24 GB GPU after a first model: 7 GB free to the driver, 10 GB cached by torch; empty_cache returns them."""
    state = {"free": 7 * GB, "reserved": 16 * GB, "allocated": 6 * GB, "empty_cache": 0}

    def empty_cache() -> None:
        state["free"] += state["reserved"] - state["allocated"]
        state["reserved"] = state["allocated"]
        state["empty_cache"] += 1

    monkeypatch.setattr(devices, "cuda_problem", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (state["free"], 24 * GB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    return state


def test_the_second_variant_still_fits_the_gpu(gpu_24gb: dict[str, int]) -> None:
    """8B int8 needs 9.4 GB; the driver shows 7 GB free after the bf16 variant, but 17 GB are usable."""
    assert devices.placement("auto", needed_bytes=int(9.4 * GB)) == torch.device("cuda", 0)
    assert gpu_24gb["empty_cache"] == 1


def test_a_model_too_large_for_the_gpu(gpu_24gb: dict[str, int], capsys) -> None:
    assert devices.placement("auto", needed_bytes=19 * GB) == torch.device("cpu")
    assert "running on the CPU" in capsys.readouterr().err
    with pytest.raises(NeuronforgeError, match="needs 19.0 GB of GPU memory, 17.0 GB is usable"):
        devices.placement("cuda", needed_bytes=19 * GB)


def test_device_info_records_the_cpu() -> None:
    info = devices.device_info(torch.device("cpu"))
    assert info["device"] == "cpu" and info["name"] and info["memory_bytes"] > GB
    assert info["torch"] == torch.__version__


def test_driver_cuda_version_from_nvidia_smi() -> None:
    header = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"
    assert devices.driver_cuda_version(header) == "12.4"
    assert devices.driver_cuda_version("no such line") is None


@pytest.mark.parametrize(
    ("current", "idle", "threads"),
    [(2, 2.0, 2), (2, 1.6, 2), (2, 1.4, 1), (2, 0.0, 1), (8, 3.2, 3), (1, 4.0, 1), (4, None, 4)],
)
def test_threads_fit_the_idle_cpus(current: int, idle: float | None, threads: int) -> None:
    """At least one, never more than torch's (or OMP_NUM_THREADS') count, torch's own when unknown."""
    assert devices.threads_left_free(current, idle) == threads


def test_busy_cpus_are_seen_as_busy() -> None:
    """One spinning process per CPU of ours: the sample finds (almost) nothing idle; they are gone afterwards."""
    import subprocess
    import sys

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(devices.usable_cpus())]
    try:
        import time

        time.sleep(0.3)  # (they start)
        idle = devices.idle_cpus(0.5)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert idle is not None and 0 <= idle < 0.5 * devices.usable_cpus()


def test_stage_1_runs_on_the_threads_other_work_leaves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside other work the sensitivity and AutoRound run on fewer threads (said on stderr) and torch's count is
    restored afterwards; on a GPU nothing changes."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(devices, "idle_cpus", lambda seconds=0.1: 0.3)
        with devices.threads_for_load(torch.device("cpu")):
            inside = torch.get_num_threads()
        with devices.threads_for_load(torch.device("meta")):
            on_other_device = torch.get_num_threads()
        assert (inside, on_other_device, torch.get_num_threads()) == (1, 2, 2)
    finally:
        torch.set_num_threads(before)
