"""Task accuracy on a user's local GSM8K-style jsonl, scored by greedy generation.

Each line is {"question": ..., "answer": "... #### 42"} (the GSM8K format). The model is prompted
to end with "#### <number>"; its prediction is the number after its first "####", else the last
number it wrote before starting a new question. Exact match after normalising "1,000", "$5", "3.0".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from neuronforge.assets.texts import read_jsonl
from neuronforge.errors import NeuronforgeError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
PROMPT = "Solve the math problem. Finish with a line '#### <number>'.\n\nQuestion: {question}\nAnswer:"
STOP = "\nQuestion:"

Generate = Callable[["torch.Tensor", int], "torch.Tensor"]  # (input_ids [1, s], max_new_tokens) -> ids


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # normalised final number


@dataclass(frozen=True)
class TaskScore:
    correct: int
    total: int
    predictions: list[str | None] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def normalize_number(text: str) -> str:
    """'$1,000.00' -> '1000', '-3.50' -> '-3.5'."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    if "." in cleaned:
        cleaned = cleaned.rstrip("0").rstrip(".")
    return cleaned or "0"


def gold_answer(answer: str) -> str | None:
    """The number after '####' in a GSM8K answer, normalised; None when there is none."""
    _, sep, tail = answer.rpartition("####")
    found = _NUMBER.search(tail) if sep else None
    return normalize_number(found.group()) if found else None


def predicted_answer(generated: str) -> str | None:
    """The model's final number: after its first '####', else the last number before it starts a new question."""
    generated = generated.split(STOP, 1)[0]
    if "####" in generated:
        found = _NUMBER.search(generated.split("####", 1)[1])
        return normalize_number(found.group()) if found else None
    numbers = _NUMBER.findall(generated)
    return normalize_number(numbers[-1]) if numbers else None


def load_problems(path: Path, limit: int | None = None) -> list[Problem]:
    """Read and validate a GSM8K-style jsonl; `limit` keeps the first N problems."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NeuronforgeError(
            f"task file {path} does not exist", 'pass a .jsonl with {"question": ..., "answer": "... #### N"} lines'
        )
    problems = []
    for lineno, record in read_jsonl(path):
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("question"), str)
            or not isinstance(record.get("answer"), str)
        ):
            raise NeuronforgeError(
                f"{path}:{lineno} needs string fields 'question' and 'answer'",
                'e.g. {"question": "2+2?", "answer": "#### 4"}',
            )
        gold = gold_answer(record["answer"])
        if gold is None:
            raise NeuronforgeError(
                f"{path}:{lineno}: the answer has no '#### <number>'", "end each answer with '#### N' as GSM8K does"
            )
        problems.append(Problem(record["question"].strip(), gold))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise NeuronforgeError(f"{path} contains no problems", "add GSM8K-style lines to the file")
    return problems


def new_tokens(prompt_ids: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The generated continuation, whether `output` repeats the prompt (HF style) or holds only new tokens."""
    output = output.reshape(-1)
    prompt = prompt_ids.reshape(-1)
    n = prompt.numel()
    if output.numel() >= n and bool((output[:n] == prompt).all()):
        return output[n:]
    return output


def score_problems(
    generate: Generate,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    max_new_tokens: int = 256,
    on_problem: Callable[[], None] | None = None,
) -> TaskScore:
    """Greedy-generate an answer per problem and count exact matches with the gold number."""
    predictions: list[str | None] = []
    for problem in problems:
        ids = tokenizer(PROMPT.format(question=problem.question), return_tensors="pt")["input_ids"]
        # (one sequence of ids decodes to one string)
        text = cast(str, tokenizer.decode(new_tokens(ids, generate(ids, max_new_tokens)), skip_special_tokens=True))
        predictions.append(predicted_answer(text))
        if on_problem is not None:
            on_problem()
    correct = sum(p == problem.answer for p, problem in zip(predictions, problems, strict=True))
    return TaskScore(correct, len(problems), predictions)
