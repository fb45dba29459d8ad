"""The documentation: every document the code cites exists, every relative link in README.md, CONTRIBUTING.md and
docs/ resolves (file and heading), the README stays a front door (<= 15 KB), CONTRIBUTING's layer table is
tests/test_layers.py's ALLOWED, and the generated CLI reference shows every help text whole."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
from rich.text import Text
from test_layers import ALLOWED

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for p in (ROOT / "neuronforge").rglob("*") if p.suffix in (".py", ".json") and p.is_file()]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LIMIT = 15 * 1024

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)


def test_cited_docs_exist_and_research_notes_are_not_cited() -> None:
    cited = {match for path in SOURCES for match in re.findall(r"docs/[\w-]+\.md", path.read_text())}
    assert cited >= {"docs/nxd-numerics.md", "docs/neuron-stack.md", "docs/sagemaker.md"}
    assert [doc for doc in sorted(cited) if not (ROOT / doc).is_file()] == []
    assert [str(p.relative_to(ROOT)) for p in SOURCES if "research" in p.read_text()] == []


def _prose(text: str) -> str:
    """The Markdown outside code blocks and code spans, where links and headings live."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """A heading's anchor as mkdocs (Python-Markdown's toc) and GitHub make it, for the headings we write."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def relative_links(page: Path) -> list[tuple[str, str]]:
    """(target file, anchor) of each relative link on `page`; the anchor is '' when there is none."""
    found = []
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, s3: ...
            continue
        path, _, anchor = target.partition("#")
        found.append((path, anchor))
    return found


def broken_links(page: Path) -> list[str]:
    problems = []
    for path, anchor in relative_links(page):
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            problems.append(f"{path}: no such file")
        elif anchor and target.suffix == ".md":
            anchors = {_slug(h) for h in HEADING.findall(FENCE.sub("", target.read_text()))}
            if anchor not in anchors:
                problems.append(f"{path}#{anchor}: no such heading")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_checker_reports_missing_files_and_headings(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## The `run` stage: end to end\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#the-run-stage-end-to-end) [gone](missing.md) [bad](other.md#nowhere) [web](https://x.y/z)\n"
        "`[not a link](missing.md)`\n```\n[nor this](missing.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "other.md#nowhere: no such heading"]


def test_readme_is_a_front_door() -> None:
    """At most 15 KB, with the two set-up commands and links into the docs site for everything else."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= README_LIMIT, f"README.md is {len(readme.encode())} bytes; move detail to docs/"
    assert "make demo" in readme and "make test" in readme
    linked = {path for path, _ in relative_links(ROOT / "README.md")}
    assert {"CONTRIBUTING.md", "docs/benchmarks.md", "docs/cli.md", "docs/index.md"} <= linked


def contributing_layers() -> dict[str, set[str]]:
    """CONTRIBUTING.md's layer table: layer -> the neuronforge packages its last column names."""
    section = (ROOT / "CONTRIBUTING.md").read_text().split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in re.findall(r"^\| `(neuronforge[\w.]*)` \|.*\| (.*) \|$", section, re.M):
        layer, may_import = row
        table[layer] = set(re.findall(r"`(neuronforge[\w.]*)`", may_import))
    return table


def test_contributing_layer_table_is_the_enforced_one() -> None:
    table = contributing_layers()
    assert {layer: table.get(layer) for layer in ALLOWED} == ALLOWED
    assert set(table) - set(ALLOWED) == {"neuronforge", "neuronforge.cli"}  # the API root and the CLI: see test_layers


def _every_command(command: Any, name: str = "neuronforge") -> list[tuple[str, Any]]:
    """(full name, command) of `command` and every subcommand (typer bundles its own click: no click types here)."""
    found = [(name, command)]
    for sub_name, sub in getattr(command, "commands", {}).items():
        found += _every_command(sub, f"{name} {sub_name}")
    return found


def _help_texts(command: Any) -> list[str]:
    return [text for text in [command.help, *(getattr(p, "help", None) for p in command.params)] if text]


def test_cli_help_keeps_its_text_when_rendered() -> None:
    """Rich markup may style a help text but not eat it: `neuronforge[eval]` was printed as `neuronforge`, in the
    terminal and in the generated reference alike, because rich took `[eval]` for a style tag."""
    from neuronforge.cli import app

    lost = []
    for name, command in _every_command(typer.main.get_command(app)):
        for text in _help_texts(command):
            unstyled = re.sub(r"\[/?(bold|dim|italic|b|i)?\]", "", text).replace("\\[", "[")
            if Text.from_markup(text).plain != unstyled:
                lost.append(f"{name}: {text!r}")
    assert lost == []


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "mkdocs_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_for_every_command_and_option() -> None:
    """docs/cli.md is filled at build time from the typer app (mkdocs_hooks.py), never hand-copied."""
    from neuronforge.cli import app

    hooks = _hooks()
    assert hooks.MARKER in (ROOT / "docs" / "cli.md").read_text()
    reference = hooks.cli_reference()
    for name, command in _every_command(typer.main.get_command(app)):
        assert f"`{name}`\n" in reference, name
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                flag = max(param.opts, key=len)
                assert re.search(rf"^\* `(-\w, )?{re.escape(flag)}[` ]", reference, re.M), f"{name} {flag}"
    assert "[bold]" not in reference and "[/]" not in reference
