"""A second torch device on CPU-only torch builds, standing in for a CUDA GPU in tests.

CPU-only torch cannot run a line after the first `.to("cuda")`, and `meta` tensors hold no values (no `float()`,
no data-dependent code). Here torch's PrivateUse1 backend is renamed `gpusim` and given torch's Python device
hooks (`torch.utils.backend_registration._setup_privateuseone_for_python_backend`, so autograd works); a tensor
on it is a wrapper subclass holding CPU data. Each op then behaves as CUDA does where our code could go wrong:

* placement: any tensor argument on the other device raises torch's "Expected all tensors to be on the same
  device", except what CUDA accepts too: 0-dim CPU tensors (scalars), CPU index tensors, and the copies that
  move data (`.to`, `copy_`);
* division by a CPU scalar is a multiply by its fp32 reciprocal, as CUDA computes `tensor / python_float`
  (pytorch/pytorch aten/src/ATen/native/cuda/BinaryDivTrueKernel.cu: "if the second operand is a CPU scalar,
  compute a * reciprocal(b)"), so code whose bits would differ on a GPU differs here too;
* `.numpy()` refuses, as on CUDA.

`simulated_gpu(monkeypatch)` makes neuronforge's `--device auto|cuda` resolve to it and records, per op, whether
it ran on the device (`SimulatedGpu.ops_on_device`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

NAME = "gpusim"
_library: list[torch.library.Library] = []


def _setup() -> None:
    """Register the device once per process. Its allocators also serve the factories that bypass dispatch
    modes (`torch.tensor(data, device=...)`, as transformers' caches call it)."""
    if _library:
        return
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(NAME)
    library = torch.library.Library("aten", "IMPL")

    def empty_strided(size: Any, stride: Any, dtype: Any = None, **kwargs: Any) -> torch.Tensor:
        return OnGpu(torch.empty_strided(size, stride, dtype=dtype))

    def empty(size: Any, dtype: Any = None, **kwargs: Any) -> torch.Tensor:
        return OnGpu(torch.empty(size, dtype=dtype))

    def copy_from(source: torch.Tensor, target: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
        (target.elem if isinstance(target, OnGpu) else target).copy_(
            source.elem if isinstance(source, OnGpu) else source
        )
        return target

    library.impl("_copy_from", copy_from, "PrivateUse1")
    library.impl("empty_strided", empty_strided, "PrivateUse1")
    library.impl("empty.memory_format", empty, "PrivateUse1")
    _library.append(library)


def device() -> torch.device:
    _setup()
    return torch.device(NAME, 0)


class OnGpu(torch.Tensor):
    """A tensor on the simulated device: CPU data in `elem`, device `gpusim:0` everywhere torch looks."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> OnGpu:
        assert not isinstance(elem, OnGpu), type(elem)
        # Never an inference tensor: autograd's view bookkeeping (detach under inference_mode) must be able to
        # share a version counter with it, as it can with a CUDA tensor's.
        with torch.inference_mode(False):
            return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
                cls,
                elem.shape,
                dtype=elem.dtype,
                device=device(),
                strides=elem.stride(),
                storage_offset=elem.storage_offset(),
                requires_grad=False,
            )

    def __init__(self, elem: torch.Tensor) -> None:
        self.elem = elem

    def __repr__(self) -> str:
        return f"OnGpu({self.elem!r})"

    def tolist(self) -> Any:  # (real CUDA tensors copy to the host for this)
        return self.elem.tolist()

    def numpy(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("can't convert gpusim:0 device type tensor to numpy. Use Tensor.cpu() to copy it first.")

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return _run(func, args, kwargs or {}, None)


def _on_gpu(value: Any) -> bool:
    return value is not None and torch.device(value).type == NAME


MOVES = {torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default}
CPU_INDEX_OK = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default}
DIVISIONS = {torch.ops.aten.div.Tensor, torch.ops.aten.div_.Tensor}


def _run(func: Any, args: Any, kwargs: dict[str, Any], recorder: SimulatedGpu | None) -> Any:
    flat, _ = tree_flatten((args, kwargs))
    on_gpu = any(isinstance(x, OnGpu) for x in flat)
    cpu = [x for x in flat if isinstance(x, torch.Tensor) and not isinstance(x, OnGpu) and x.dim() > 0]
    if on_gpu and cpu and func not in MOVES:
        index_only = func in CPU_INDEX_OK and isinstance(args[0], OnGpu)
        if not index_only:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, {NAME}:0 and cpu! "
                f"({func})"
            )
    unwrapped_args = tree_map(lambda x: x.elem if isinstance(x, OnGpu) else x, args)
    unwrapped_kwargs = tree_map(lambda x: x.elem if isinstance(x, OnGpu) else x, kwargs)
    target = unwrapped_kwargs.get("device")
    if target is not None:
        unwrapped_kwargs["device"] = torch.device("cpu")
    for index, value in enumerate(unwrapped_args):  # (`aten.to.device` takes it positionally)
        if isinstance(value, torch.device):
            target, unwrapped_args = value, (*unwrapped_args[:index], torch.device("cpu"), *unwrapped_args[index + 1 :])
    wrap = _on_gpu(target) if target is not None else on_gpu
    if recorder is not None:
        recorder.ops_on_device += wrap
    if func in DIVISIONS and _cuda_scalar_division(args):
        dividend, divisor = unwrapped_args[0], unwrapped_args[1]
        reciprocal = torch.ones((), dtype=torch.float32) / torch.as_tensor(divisor, dtype=torch.float32)
        out = (dividend.float() * reciprocal).to(dividend.dtype)
        if func is torch.ops.aten.div_.Tensor:
            dividend.copy_(out)
            return args[0]
        return OnGpu(out)
    out = func(*unwrapped_args, **unwrapped_kwargs)
    if func is torch.ops.aten.copy_.default:
        return args[0]
    mutated = _mutated_argument(func, args, kwargs)
    if mutated is not None:
        return mutated
    if wrap and any(isinstance(x, OnGpu) for x in tree_flatten(out)[0]):
        raise AssertionError(f"{func} {[type(a) for a in unwrapped_args]} {unwrapped_kwargs}")
    return tree_map(lambda x: OnGpu(x) if wrap and isinstance(x, torch.Tensor) else x, out)


def _cuda_scalar_division(args: Any) -> bool:
    """`gpu_tensor / cpu_scalar` in floating point: what CUDA computes as a reciprocal multiply."""
    divisor = args[1]
    cpu_scalar = isinstance(divisor, int | float) or (
        isinstance(divisor, torch.Tensor) and not isinstance(divisor, OnGpu) and divisor.dim() == 0
    )
    return isinstance(args[0], OnGpu) and args[0].is_floating_point() and cpu_scalar


def _mutated_argument(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """The argument an in-place or out= op returns (it must come back as the very same tensor object)."""
    schema = func._schema
    if not schema.returns or schema.returns[0].alias_info is None or not schema.returns[0].alias_info.is_write:
        return None
    alias = schema.returns[0].alias_info.before_set
    for index, argument in enumerate(schema.arguments):
        if argument.alias_info is not None and argument.alias_info.before_set == alias:
            return args[index] if index < len(args) else kwargs[argument.name]
    return None


class SimulatedGpu(TorchDispatchMode):
    """The mode that puts factory calls (`torch.empty(..., device=gpusim)`) and `.to(gpusim)` on the device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops_on_device = 0

    @property
    def device(self) -> torch.device:
        return device()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        if any(isinstance(x, OnGpu) for x in flat) or _on_gpu(kwargs.get("device")):
            return _run(func, args, kwargs, self)
        return func(*args, **kwargs)


@contextmanager
def simulated_gpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedGpu]:
    """neuronforge's `cuda` device is the simulated one for the duration (`--device auto` picks it)."""
    from neuronforge.core import devices

    _setup()
    monkeypatch.setattr(devices, "cuda_problem", lambda: None)
    monkeypatch.setattr(devices, "cuda_device", device)
    # Work on this device is done when the op returns: waiting for it is nothing (auto-round syncs between blocks).
    monkeypatch.setattr(torch.accelerator, "synchronize", lambda device=None: None)
    with SimulatedGpu() as mode:
        yield mode


def on_device(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, OnGpu)
