"""Stand-ins for the closed Neuron device packages only, so NxD/NxDI's real Python runs on a CPU host.

torch_neuronx, torch_xla, neuronxcc, nki, nkilib (NxDI 0.9's kernels) and libneuronxla exist only as binaries in AWS's Neuron pip repository. Every
module under those names is served by `StubFinder`: any attribute is another stub, a stub is subclassable and usable
as a decorator. Calling one while `calls_allowed` is False (the default, after the imports) raises `DeviceStepReached`
naming it, so the check records exactly where the real code first needs the device (the trace/compile) instead of
running on with made-up values. Everything else (torch, transformers, safetensors, NxD/NxDI/vllm-neuron sources)
is real, except `torch.classes.neuron` (torch-neuronx's TorchScript classes). The audit of 2026-12-07 (neuron-stack.md, "What I ran") stubbed the same packages.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Any

STUBBED = ("torch_neuronx", "torch_xla", "neuronxcc", "nki", "nkilib", "libneuronxla")
calls_allowed = True  # import time: module-level decorators and constants; switched off by `strict()`


class DeviceStepReached(RuntimeError):
    """The real NxD/NxDI code called into a device package: the first step that needs Neuron hardware or neuronx-cc."""


def _platform_target(*_: Any, **__: Any) -> str:
    """torch_neuronx.utils.get_platform_target: the override neuronforge sets (inf2 and trn1 are one target)."""
    return os.environ.get("NEURON_PLATFORM_TARGET_OVERRIDE", "trn1")


REAL = {"get_platform_target": _platform_target}


class _StubMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return REAL.get(name) or stub(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]  # used as a decorator
        if not calls_allowed:
            raise DeviceStepReached(cls.__qualname__)
        return stub(f"{cls.__qualname__}()")

    def __getitem__(cls, item: Any) -> Any:
        return stub(f"{cls.__qualname__}[]")

    def __or__(cls, other: Any) -> Any:
        return cls

    __ror__ = __or__

    def __iter__(cls) -> Any:
        return iter(())

    def __bool__(cls) -> bool:
        return False


def stub(name: str) -> type:
    """A new stub class called `name`."""
    return _StubMeta(name, (), {"__module__": name.split(".")[0]})


class _StubModule(ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return REAL.get(name) or stub(f"{self.__name__}.{name}")


class StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] not in STUBBED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = _StubModule(spec.name)
        module.__path__ = []
        module.__version__ = "2.9.0+stub"  # NxD's ModelBuilder requires torch-neuronx 2.x (model_builder.py:461)
        return module

    def exec_module(self, module: ModuleType) -> None:
        return None


def install() -> None:
    """Serve the device packages from stubs (first on sys.meta_path, so no real copy can shadow them)."""
    import torch

    if not any(isinstance(finder, StubFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, StubFinder())
    torch.classes.neuron = _StubModule("torch.classes.neuron")  # TorchScript classes torch-neuronx registers


def strict() -> None:
    """From now on, calling into a device package raises DeviceStepReached."""
    global calls_allowed
    calls_allowed = False
