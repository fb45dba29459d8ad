"""Every document the code cites is in the repository (docs/*.md), and nothing cites notes that are not."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for p in (ROOT / "neuronforge").rglob("*") if p.suffix in (".py", ".json") and p.is_file()]


def test_cited_docs_exist_and_research_notes_are_not_cited() -> None:
    cited = {match for path in SOURCES for match in re.findall(r"docs/[\w-]+\.md", path.read_text())}
    assert cited >= {"docs/nxd-numerics.md", "docs/neuron-stack.md", "docs/sagemaker.md"}
    assert [doc for doc in sorted(cited) if not (ROOT / doc).is_file()] == []
    assert [str(p.relative_to(ROOT)) for p in SOURCES if "research" in p.read_text()] == []
