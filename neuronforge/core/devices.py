"""Which device the heavy steps run on, chosen once per command from `--device auto|cuda|cpu`, never silently.

`cuda` without a usable GPU refuses at once, with torch's own reason (a CPU-only torch build, no NVIDIA driver,
a driver older than the CUDA runtime the torch wheel was built with). `auto` uses the GPU when torch can, and
says so loudly when the host has an NVIDIA GPU that torch cannot use. Every report records `device_info`.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import pydantic

from neuronforge.core.progress import err_console
from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    import torch

DeviceRequest = Literal["auto", "cuda", "cpu"]
DEVICE_CHOICES: tuple[str, ...] = get_args(DeviceRequest)
DEVICE_HELP = (
    "Where the heavy steps run: auto (the first CUDA GPU when torch can use it, else the CPU, with a warning "
    "when the host has a GPU torch cannot use), cuda (refuse at once without a usable GPU), or cpu."
)
# The one declaration of the knob: every options model that computes has `device: DeviceField = "auto"`.
DeviceField = Annotated[DeviceRequest, pydantic.Field(description=DEVICE_HELP)]

CUDA_INSTALL_FIX = (
    "install a CUDA build of torch 2.13.0 whose CUDA version the NVIDIA driver supports (`nvidia-smi` prints the "
    "highest it supports; docs/gpu.md), check with `neuronforge doctor`, or pass --device cpu"
)


def cuda_problem() -> str | None:
    """Why torch cannot use a CUDA GPU on this host, in torch's own words; None when it can."""
    import torch

    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build, without CUDA support"
    if torch.cuda.is_available():
        return None
    try:  # torch's own probe names the cause: no driver, a driver too old for this CUDA runtime, no device
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError or AssertionError depending on the cause
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) cannot use the GPU: {exc}"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device (check CUDA_VISIBLE_DEVICES)"


def driver_cuda_version(nvidia_smi_output: str | None = None) -> str | None:
    """The highest CUDA version the NVIDIA driver supports ("CUDA Version: 12.4" in `nvidia-smi`'s header)."""
    if nvidia_smi_output is None:
        if shutil.which("nvidia-smi") is None:
            return None
        try:
            nvidia_smi_output = subprocess.run(
                ["nvidia-smi"], capture_output=True, text=True, timeout=30, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    found = re.search(r"CUDA Version:\s*([0-9]+\.[0-9]+)", nvidia_smi_output)
    return found.group(1) if found else None


def gpu_present() -> bool:
    """Does this host have an NVIDIA GPU at all, whether or not torch can use it?"""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def cuda_device() -> torch.device:
    """The GPU the heavy steps use (the first one). Tests put a simulated device here (tests/device_sim.py)."""
    import torch

    return torch.device("cuda", 0)


def resolve_device(request: DeviceRequest) -> torch.device:
    """The device `--device request` means on this host; refuses `cuda` without a usable GPU (see module doc)."""
    import torch

    if request not in DEVICE_CHOICES:
        raise NeuronforgeError(f"unknown device {request!r}", f"use one of: {', '.join(DEVICE_CHOICES)}")
    if request == "cpu":
        return torch.device("cpu")
    problem = cuda_problem()
    if problem is None:
        return cuda_device()
    if request == "cuda":
        raise NeuronforgeError(f"--device cuda: {problem}", CUDA_INSTALL_FIX)
    if gpu_present():
        err_console.print(
            f"[yellow]warning:[/] this host has an NVIDIA GPU, but {problem}; running on the CPU "
            f"(hours for a large model). fix: {CUDA_INSTALL_FIX}",
            highlight=False,
        )
    return torch.device("cpu")


def usable_bytes(free: int, reserved: int, allocated: int) -> int:
    """GPU memory this process can still use: the driver's free memory plus what torch's caching allocator holds
    but no tensor uses (reserved - allocated), which `torch.cuda.mem_get_info` counts as used."""
    return free + max(0, reserved - allocated)


def gpu_usable_bytes(device: torch.device) -> int:
    """`usable_bytes` of `device`, measured after dropping this process's dead tensors."""
    import torch

    release(device)
    free, _ = torch.cuda.mem_get_info(device)
    return usable_bytes(free, torch.cuda.memory_reserved(device), torch.cuda.memory_allocated(device))


def release(device: torch.device) -> None:
    """Free what the previous model left behind on `device` (between emulated variants)."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def placement(request: DeviceRequest, needed_bytes: int) -> torch.device:
    """Where a whole model of `needed_bytes` goes: the resolved device when it fits there; with `auto`, the CPU
    (said so) when it does not; with `cuda`, a refusal, never a silent fallback."""
    import torch

    device = resolve_device(request)
    if device.type != "cuda":
        return device
    usable = gpu_usable_bytes(device)
    if usable >= needed_bytes:
        return device
    if request == "cuda":
        raise NeuronforgeError(
            f"--device cuda: the model needs {needed_bytes / 1e9:.1f} GB of GPU memory, {usable / 1e9:.1f} GB is usable",
            "use a GPU with more memory, or pass --device auto (CPU when it does not fit) or --device cpu",
        )

    err_console.print(
        f"note: running on the CPU: the model needs {needed_bytes / 1e9:.1f} GB of GPU memory, "
        f"{usable / 1e9:.1f} GB is usable"
    )
    return torch.device("cpu")


def emulation_device(resolved: torch.device, request: DeviceRequest) -> torch.device | DeviceRequest:
    """Where a command puts an emulated model: its resolved device when that is the CPU, else the request itself, which
    `placement` checks against each model's size as it loads (a model too large for the GPU then runs on the CPU)."""
    return resolved if resolved.type == "cpu" else request


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass

    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What a report records about the device a step ran on: which, its name and memory, and torch's build."""
    import torch

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(name=properties.name, memory_bytes=int(properties.total_memory))
        info["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    elif device.type == "cpu":
        info.update(name=_cpu_name(), memory_bytes=host_memory_bytes(), threads=torch.get_num_threads())
    else:
        info.update(name=device.type, memory_bytes=None)
    return info


@contextmanager
def small_op_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU for loops of small (1 MB) elementwise ops: the grid export and the scores.
    With two threads each op pays an OpenMP barrier: on a loaded 2-core host one 14336 x 4096 export took 7-17 s
    with two threads and 1.0-1.3 s with one (docs/gpu.md, "Speed"). Elsewhere (GEMMs, a GPU) nothing changes."""
    if device.type != "cpu":
        yield
        return
    with torch_threads(1):
        yield


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` inside, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# How long the CPUs' idle time is sampled before stage 1 picks its thread count (our process sleeps meanwhile).
IDLE_SAMPLE_SECONDS = 0.1  # (10 ticks of each CPU at Linux's 100 Hz: a tenth of a CPU's resolution)


def idle_cpus(seconds: float = IDLE_SAMPLE_SECONDS) -> float | None:
    """How many of this process's CPUs other processes leave idle, averaged over `seconds` (/proc/stat's idle +
    iowait share of each CPU in the affinity mask); None where there is no /proc/stat."""

    def sample() -> dict[int, tuple[int, int]]:
        cpus = os.sched_getaffinity(0)
        rows = {}
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    ticks = [int(field) for field in fields[:8]]  # user nice system idle iowait irq softirq steal
                    rows[int(name[3:])] = (ticks[3] + ticks[4], sum(ticks))
        return rows

    try:
        first = sample()
        time.sleep(seconds)
        second = sample()
    except (OSError, AttributeError, ValueError, IndexError):  # not Linux, or an unreadable /proc
        return None
    shared = first.keys() & second.keys()
    idle = sum(second[cpu][0] - first[cpu][0] for cpu in shared)
    total = sum(second[cpu][1] - first[cpu][1] for cpu in shared)
    return len(shared) * idle / total if total > 0 else None


def threads_left_free(current: int, idle: float | None) -> int:
    """The intra-op threads that fit the CPUs other work leaves idle: at least one, never more than `current`
    (so OMP_NUM_THREADS or torch.set_num_threads still cap it), `current` when the idle share is unknown."""
    if idle is None:
        return current
    return max(1, min(current, int(idle + 0.5)))


@contextmanager
def threads_for_load(device: torch.device) -> Iterator[None]:
    """On the CPU, stage 1's GEMM-heavy steps (the sensitivity's layers, AutoRound) run on as many intra-op threads
    as other processes leave idle when it starts. An OpenMP op waits for all its threads, so a thread the OS has
    parked behind another process stalls every op: the 1.17e9-parameter benchmark's sensitivity took 7.4 s with two
    threads and 10.7 s with one on a quiet 2-core host, but 60.8 s with two and 23.8 s with one beside other work
    (load average 5-6; docs/gpu.md, "Speed"). A GPU is left alone."""
    import torch

    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    threads = threads_left_free(before, idle_cpus() if before > 1 else None)
    if threads < before:
        err_console.print(
            f"note: other processes keep {before - threads} of {before} CPUs busy; stage 1 runs on {threads} "
            f"thread{'s' if threads > 1 else ''} so that no op waits for a thread the OS has parked"
        )
    with torch_threads(threads):
        yield


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def capped_threads(requested: int) -> int:
    """A thread count no larger than the machine's CPUs: more only adds contention, and an absurd one made the
    tokenizer's thread pool fail to start and the process segfault (report D19: `emulate --threads 100000`)."""
    cpus = usable_cpus()
    if requested > cpus:
        err_console.print(f"note: --threads {requested} capped at {cpus}, the CPUs this process may use")
    return min(requested, cpus)
