"""The lm-eval adapter on the tiny model through the real emulator and lm-eval's own LM / Instance classes."""

from __future__ import annotations

import pytest
import torch

from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.evaluate.lm_eval_adapter import EmulatedRequests, emulated_lm

lm_eval = pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def emulated_and_tokenizer(tiny_llama_dir):
    from neuronforge.hf.folders import load_tokenizer
    from neuronforge.neuron.numerics.emulate import EmulationSpec, load_emulated

    emulated = load_emulated(
        tiny_llama_dir, EmulationSpec(dtype="int8", kv="fp8", modules_to_not_convert=("lm_head",), fast_bf16=False)
    )
    return emulated, load_tokenizer(tiny_llama_dir)


def _instance(kind: str, args: tuple, idx: int = 0):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


def test_adapter_is_an_lm_eval_lm_and_scores_like_the_emulator(emulated_and_tokenizer):
    emulated, tok = emulated_and_tokenizer
    lm = emulated_lm(emulated, tok)
    assert isinstance(lm, lm_eval.api.model.LM)
    context, continuation = "The play of Hamlet", " was written"
    [(logprob, greedy)] = lm.loglikelihood([_instance("loglikelihood", (context, continuation))])
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([whole[:-1]])
    logp = torch.log_softmax(emulated.logits(ids, prefill_len=len(ctx_ids)), dim=-1)[0]
    expected = sum(float(logp[i - 1, whole[i]]) for i in range(len(ctx_ids), len(whole)))
    assert logprob == pytest.approx(expected, rel=1e-5) and logprob < 0
    assert greedy == all(int(logp[i - 1].argmax()) == whole[i] for i in range(len(ctx_ids), len(whole)))


def test_greedy_continuation_is_recognised(emulated_and_tokenizer):
    emulated, tok = emulated_and_tokenizer
    requests = EmulatedRequests(emulated, tok)
    context = "Shakespeare was"
    prompt = torch.tensor([requests.encode(context)])
    produced = emulated.generate(prompt, 3)[0, prompt.shape[1] :].tolist()
    _, greedy = requests._continuation_logprobs(prompt[0].tolist(), produced)
    assert greedy
    other = [(produced[0] + 1) % 512, *produced[1:]]
    assert not requests._continuation_logprobs(prompt[0].tolist(), other)[1]


def test_rolling_loglikelihood_predicts_every_token_once(emulated_and_tokenizer):
    emulated, tok = emulated_and_tokenizer
    text = "To be, or not to be, that is the question: whether tis nobler in the mind to suffer"
    short = EmulatedRequests(emulated, tok, max_length=8)  # forces several windows
    full = EmulatedRequests(emulated, tok, max_length=2048)
    seq = [short.prefix_token_id, *short.encode(text)]
    logp = torch.log_softmax(emulated.logits(torch.tensor([seq[:-1]])), dim=-1)[0]
    one_window = sum(float(logp[i, seq[i + 1]]) for i in range(len(seq) - 1))
    assert full.loglikelihood_rolling(text) == pytest.approx(one_window, rel=1e-5)
    windowed = emulated_lm(emulated, tok, max_length=8).loglikelihood_rolling(
        [_instance("loglikelihood_rolling", (text,))]
    )
    assert windowed[0] < 0 and windowed[0] != pytest.approx(one_window, rel=1e-6)  # less context per window


def test_generate_until_stops_at_the_stop_string(emulated_and_tokenizer):
    emulated, tok = emulated_and_tokenizer
    lm = emulated_lm(emulated, tok)
    [free] = lm.generate_until([_instance("generate_until", ("Hamlet", {"until": [], "max_gen_toks": 12}))])
    assert free
    stop = free.strip()[:2]
    [cut] = lm.generate_until([_instance("generate_until", ("Hamlet", {"until": [stop], "max_gen_toks": 12}))])
    assert stop not in cut and free.startswith(cut)
    with pytest.raises(NeuronforgeError, match="greedily"):
        EmulatedRequests(emulated, tok).generate_until("x", {"do_sample": True, "temperature": 0.7})


def test_trailing_context_spaces_move_to_the_continuation(emulated_and_tokenizer):
    _, tok = emulated_and_tokenizer
    requests = EmulatedRequests(None, tok)  # type: ignore[arg-type]
    assert requests.split_pair("Answer: ", "yes") == requests.split_pair("Answer:", " yes")
    ctx, cont = requests.split_pair("", "hello")
    assert ctx == [requests.prefix_token_id] and cont


def test_a_local_task_is_checked_and_scored_with_one_task_index(emulated_and_tokenizer, tmp_path, monkeypatch):
    """`check_lm_eval_tasks` and `run_lm_eval` share lm-eval's task index: a local multiple-choice task (its data
    a jsonl here, so no network) passes the check and is scored through lm-eval's own simple_evaluate."""
    import json

    from lm_eval.tasks import TaskManager

    from neuronforge.pipeline.evaluate import lm_eval_adapter

    rows = [{"query": "The king of Denmark", "choices": [" is dead", " banana"], "gold": 0}] * 2
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "nf_local.yaml").write_text(
        "task: nf_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'rows.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{query}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{gold}}'\n"
        "metric_list:\n  - metric: acc\n"
    )
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    monkeypatch.setattr(lm_eval_adapter, "task_manager", lambda: manager)
    lm_eval_adapter.check_lm_eval_tasks(["nf_local"])
    with pytest.raises(NeuronforgeError, match="unknown lm-eval task"):
        lm_eval_adapter.check_lm_eval_tasks(["nf_locall"])
    emulated, tok = emulated_and_tokenizer
    scores = lm_eval_adapter.run_lm_eval(emulated, tok, ["nf_local"], limit=2)
    assert 0.0 <= scores["nf_local"]["acc,none"] <= 1.0
