"""The package's layers import one way only; `import neuronforge` and the CLI stay torch-free."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import neuronforge

ROOT = Path(neuronforge.__file__).parent

# Which neuronforge packages each layer may import (besides itself). Anything else is a layering error.
# neuron/ is split by concern, bottom to top: numerics (what the device computes) < planner (instances, memory,
# plans) < nxdi (NxD Inference integration, compile); `neuronforge.neuron` itself holds the host probe.
BASE = {"neuronforge.errors", "neuronforge.core"}
NEURON = {"neuronforge.neuron", "neuronforge.neuron.numerics", "neuronforge.neuron.planner", "neuronforge.neuron.nxdi"}
ALLOWED: dict[str, set[str]] = {
    "neuronforge.errors": set(),
    "neuronforge.core": {"neuronforge.errors"},
    "neuronforge.hf": BASE,
    "neuronforge.assets": BASE | {"neuronforge.hf"},
    "neuronforge.neuron": BASE | {"neuronforge.hf"},
    "neuronforge.neuron.numerics": BASE | {"neuronforge.hf"},
    "neuronforge.neuron.planner": BASE | {"neuronforge.hf", "neuronforge.neuron.numerics"},
    "neuronforge.neuron.nxdi": BASE
    | {"neuronforge.hf", "neuronforge.neuron", "neuronforge.neuron.numerics", "neuronforge.neuron.planner"},
    "neuronforge.sagemaker": BASE | NEURON | {"neuronforge.hf", "neuronforge.version"},  # packaging: HF folder
    "neuronforge.doctor": BASE | NEURON | {"neuronforge.hf", "neuronforge.assets"},
    "neuronforge.pipeline.quantize": BASE
    | NEURON
    | {
        "neuronforge.hf",
        "neuronforge.assets",
        "neuronforge.version",
        "neuronforge.pipeline.evaluate.metrics",  # the accuracy target scores candidates as evaluate does
    },
    "neuronforge.pipeline.evaluate.metrics": set(),  # pure functions of logits, below both stages
    "neuronforge.pipeline.evaluate": BASE
    | NEURON
    | {
        "neuronforge.hf",
        "neuronforge.assets",
        "neuronforge.pipeline.quantize",
        "neuronforge.pipeline.evaluate.metrics",
        "neuronforge.version",
    },
    "neuronforge.pipeline.run": BASE
    | NEURON
    | {
        "neuronforge.hf",
        "neuronforge.assets",
        "neuronforge.pipeline.quantize",
        "neuronforge.pipeline.evaluate",
        "neuronforge.pipeline.evaluate.metrics",
        "neuronforge.sagemaker",
        "neuronforge.version",
    },
    "neuronforge.pipeline": set(),
    "neuronforge.version": set(),
}


def _module_name(path: Path) -> str:
    parts = ("neuronforge", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    """The most specific key of ALLOWED (or the cli / the package root) that `module` belongs to."""
    if module == "neuronforge":
        return "neuronforge"
    if module == "neuronforge.cli" or module.startswith("neuronforge.cli."):
        return "neuronforge.cli"
    matches = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    assert matches, f"{module} is in no layer: add it to tests/test_layers.py ALLOWED"
    return max(matches, key=len)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every imported module name, at any depth (function bodies and TYPE_CHECKING blocks included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [
                (node.lineno, f"{node.module}.{alias.name}") for alias in node.names if node.module == "neuronforge"
            ]
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def violations(module: str, path: Path) -> list[str]:
    """Imports in `path` (the source of `module`) that break the layer rules."""
    layer = _layer(module)
    problems = []
    for line, name in _imports(path):
        top = name.split(".")[0]
        if top == "typer" and layer != "neuronforge.cli":
            problems.append(f"line {line}: typer outside the cli package")
        if top != "neuronforge" or name == "neuronforge":
            continue
        target = _layer(name)
        if target == "neuronforge.cli" and layer != "neuronforge.cli":
            problems.append(f"line {line}: imports the CLI ({name})")
        elif layer in ("neuronforge", "neuronforge.cli") or target == layer:
            continue
        elif target not in ALLOWED[layer]:
            problems.append(f"line {line}: {layer} may not import {name}")
    return problems


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path: Path) -> None:
    module = _module_name(path)
    problems = violations(module, path)
    assert not problems, f"{module}:\n" + "\n".join(problems)


def test_the_checker_reports_upward_imports_typer_and_the_cli(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import typer\n"
        "def f():\n"
        "    from neuronforge.pipeline.run.api import run_pipeline\n"
        "    from neuronforge.sagemaker import requests\n"
        "    from neuronforge.cli.app import App\n"
        "    from neuronforge.neuron.numerics.grid import quantize_weight\n"
    )
    problems = violations("neuronforge.neuron.numerics.probe", probe)
    assert len(problems) == 4, problems
    nxdi = tmp_path / "nxdi.py"
    nxdi.write_text("from neuronforge.neuron.nxdi.config import NeuronConfigSpec\n")
    assert violations("neuronforge.neuron.numerics.probe", nxdi) == [
        "line 1: neuronforge.neuron.numerics may not import neuronforge.neuron.nxdi.config"
    ]
    assert violations("neuronforge.neuron.planner.probe", nxdi) != []
    assert violations("neuronforge.pipeline.run.probe", probe) == [
        "line 1: typer outside the cli package",
        "line 5: imports the CLI (neuronforge.cli.app)",
    ]


@pytest.mark.parametrize(
    "statement", ["import neuronforge", "import neuronforge.cli", "import neuronforge as nf; nf.QuantizeOptions"]
)
def test_import_does_not_load_torch(statement: str) -> None:
    code = f"import sys; {statement}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def _module_graph() -> dict[str, set[str]]:
    """Edges between neuronforge modules, from every import at any depth (function bodies included).

    `from a.b import c` is an edge to the module a.b.c when c is a module, else to a.b; the package root's lazy
    re-exports (neuronforge/__init__.py) are its API, not a dependency, so the root is left out."""
    modules = {_module_name(path): path for path in MODULES}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        if module == "neuronforge":
            continue
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [
                    f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                    for alias in node.names
                ]
            else:
                continue
            targets |= {name for name in names if name in modules and name not in (module, "neuronforge")}
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    cycles = _cycles(_module_graph())
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_lazy_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
