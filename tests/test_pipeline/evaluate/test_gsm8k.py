"""GSM8K-style scoring: answer parsing, file validation, and greedy-generation scoring with a real tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.evaluate.gsm8k import (
    Problem,
    gold_answer,
    load_problems,
    new_tokens,
    normalize_number,
    predicted_answer,
    score_problems,
)


@pytest.mark.parametrize(
    ("raw", "norm"), [("1,000", "1000"), ("$5", "5"), ("3.0", "3"), ("-3.50", "-3.5"), ("72.", "72")]
)
def test_normalize_number(raw, norm):
    assert normalize_number(raw) == norm


def test_gold_and_predicted_answers():
    assert gold_answer("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72") == "72"
    assert gold_answer("no marker 72") is None
    assert predicted_answer(" She has 3 + 4 = 7 apples.\n#### 7\nQuestion: next 99") == "7"
    assert predicted_answer(" 3 then 5, so 8 in total.") == "8"
    assert predicted_answer(" it is 12.\nQuestion: what about 13?") == "12"
    assert predicted_answer(" I don't know") is None


def _write(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_load_problems_validates_lines(tmp_path):
    good = _write(
        tmp_path / "g.jsonl", [{"question": "2+2?", "answer": "#### 4"}, {"question": "1+1?", "answer": "so #### 2"}]
    )
    assert load_problems(good) == [Problem("2+2?", "4"), Problem("1+1?", "2")]
    assert load_problems(good, limit=1) == [Problem("2+2?", "4")]
    with pytest.raises(NeuronforgeError, match="does not exist"):
        load_problems(tmp_path / "missing.jsonl")
    with pytest.raises(NeuronforgeError, match="no '#### <number>'"):
        load_problems(_write(tmp_path / "b.jsonl", [{"question": "q", "answer": "4"}]))
    with pytest.raises(NeuronforgeError, match="'question' and 'answer'"):
        load_problems(_write(tmp_path / "c.jsonl", [{"q": "x"}]))
    (tmp_path / "d.jsonl").write_text("{not json\n")
    with pytest.raises(NeuronforgeError, match="not valid JSON"):
        load_problems(tmp_path / "d.jsonl")


def test_new_tokens_handles_both_generate_conventions():
    prompt = torch.tensor([[5, 6, 7]])
    assert new_tokens(prompt, torch.tensor([[5, 6, 7, 8, 9]])).tolist() == [8, 9]
    assert new_tokens(prompt, torch.tensor([8, 9])).tolist() == [8, 9]


def test_scoring_counts_exact_matches(tiny_llama_dir):
    from neuronforge.hf.folders import load_tokenizer

    tok = load_tokenizer(tiny_llama_dir)
    problems = [Problem("What is 2+2?", "4"), Problem("What is 3+3?", "6"), Problem("What is 5+5?", "10")]
    written = {"What is 2+2?": " 2+2=4\n#### 4", "What is 3+3?": " 3+3=5\n#### 5", "What is 5+5?": " 10 then 1,0"}

    def answer_writer(ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        question = tok.decode(ids[0]).split("Question: ")[1].split("\n")[0]
        return torch.cat([ids[0], tok(written[question], return_tensors="pt")["input_ids"][0]])[None]

    score = score_problems(answer_writer, tok, problems)
    assert score.predictions == ["4", "5", "10"]
    assert (score.correct, score.total, score.accuracy) == (2, 3, pytest.approx(2 / 3))


def test_scoring_a_real_model_generates_greedily(tiny_llama_dir):
    from neuronforge.hf.folders import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_llama_dir), load_model(tiny_llama_dir)
    calls = []

    def generate(ids: torch.Tensor, n: int) -> torch.Tensor:
        calls.append(n)
        return model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)

    problems = [Problem("What is 2+2?", "4"), Problem("What is 3+3?", "6")]
    first = score_problems(generate, tok, problems, max_new_tokens=8)
    assert calls == [8, 8] and first.total == 2
    assert score_problems(generate, tok, problems, max_new_tokens=8).predictions == first.predictions  # greedy
