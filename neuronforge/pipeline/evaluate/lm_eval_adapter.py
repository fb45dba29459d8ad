"""lm-evaluation-harness adapter: score the emulated variants on real benchmarks (on a GPU host, say).

`EmulatedRequests` turns lm-eval's three request kinds into calls on anything with the emulator's
`logits(ids, prefill_len)` / `generate(ids, max_new_tokens)`; it needs no lm-eval, so its request
handling is testable without the extra. `emulated_lm(...)` wraps it in a real `lm_eval.api.model.LM`
(`pip install 'neuronforge[eval]'`; imported lazily). With fp8 KV, the context is the prefill and the
continuation is scored as decoded tokens, as on the device.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from typing import TYPE_CHECKING, Any, Protocol, cast

from neuronforge.core.progress import track
from neuronforge.errors import NeuronforgeError
from neuronforge.pipeline.evaluate.gsm8k import new_tokens

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256


class LogitsModel(Protocol):
    def logits(self, input_ids: torch.Tensor, prefill_len: int | None = None) -> torch.Tensor: ...

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor: ...


class EmulatedRequests:
    """lm-eval's loglikelihood / rolling / generate_until semantics, one request at a time."""

    def __init__(
        self, model: LogitsModel, tokenizer: PreTrainedTokenizerBase, max_length: int = DEFAULT_MAX_LENGTH
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise NeuronforgeError(
                "the tokenizer has neither a BOS nor an EOS token", "lm-eval needs one to score text from its start"
            )
        self.prefix_token_id: int = prefix

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation) as lm-eval's HFLM cuts them: encode the whole, then split,
        with trailing context spaces moved onto the continuation."""
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        n_context = len(self.encode(context))
        context_ids = whole[:n_context] or [self.prefix_token_id]
        return context_ids, whole[n_context:]

    def _continuation_logprobs(self, context_ids: list[int], continuation_ids: list[int]) -> tuple[float, bool]:
        """Score the continuation as decoded tokens after a prefill of the context (left-truncated to max_length)."""
        import torch

        n_cont = len(continuation_ids)
        if n_cont == 0:
            return 0.0, True
        inputs = torch.tensor([(context_ids + continuation_ids)[-(self.max_length + 1) :][:-1]])
        prefill = max(1, inputs.shape[1] - n_cont + 1)
        logp = torch.log_softmax(self.model.logits(inputs, prefill_len=prefill)[0, -n_cont:].float(), dim=-1)
        target = torch.tensor(continuation_ids)
        picked = logp.gather(-1, target[:, None]).squeeze(-1)
        return float(picked.double().sum()), bool((logp.argmax(-1) == target).all())

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        """(log P(continuation | context), whether greedy decoding would produce exactly the continuation)."""
        return self._continuation_logprobs(*self.split_pair(context, continuation))

    def loglikelihood_rolling(self, text: str) -> float:
        """log P(text | prefix token), every token predicted once, in disjoint windows of `max_length` inputs."""
        import torch

        sequence = [self.prefix_token_id, *self.encode(text)]
        total = 0.0
        for start in range(0, len(sequence) - 1, self.max_length):
            window = sequence[start : start + self.max_length + 1]
            logp = torch.log_softmax(self.model.logits(torch.tensor([window[:-1]]))[0].float(), dim=-1)
            total += float(logp.gather(-1, torch.tensor(window[1:])[:, None]).double().sum())
        return total

    def generate_until(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """Greedy continuation of `context`, cut at the first stop string in gen_kwargs['until']."""
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0.0:
            raise NeuronforgeError(
                "the emulator decodes greedily only", "run the task with do_sample=False / temperature=0"
            )
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        import torch

        ids = self.encode(context)[-(self.max_length - max_new) :] or [self.prefix_token_id]
        prompt = torch.tensor([ids])
        generated = new_tokens(prompt, self.model.generate(prompt, max_new))
        text = cast(str, self.tokenizer.decode(generated, skip_special_tokens=True))  # one sequence: one string
        for stop in until:
            text = text.split(stop, 1)[0]
        return text


def require_lm_eval() -> None:
    """Fail early, before hours of work, when the `[eval]` extra is missing."""
    if importlib.util.find_spec("lm_eval") is None:
        raise NeuronforgeError("lm-evaluation-harness is not installed", "pip install 'neuronforge[eval]'")


@functools.cache
def task_manager() -> Any:
    """lm-eval's index of its task files, built once per process (seconds): the check and every variant share it."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager()


def check_lm_eval_tasks(tasks: list[str]) -> None:
    """Refuse unknown task names and tasks whose data is not on this host before any variant is quantized (report
    D27: hellaswag offline failed after the quantize runs). Loading the tasks is what lm-eval does first anyway: it
    indexes its task files (seconds) and opens each dataset from the Hugging Face cache, offline (`force_offline`)."""
    manager = task_manager()
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        close = {task: difflib.get_close_matches(task, manager.all_tasks, n=3) for task in unknown}
        raise NeuronforgeError(
            f"unknown lm-eval task(s) {', '.join(unknown)}"
            + "".join(f" ({task}: did you mean {', '.join(near)}?)" for task, near in close.items() if near),
            "pick names from `lm-eval ls tasks`",
        )
    try:
        manager.load(tasks)
    except Exception as exc:  # datasets' ConnectionError/FileNotFoundError, a task's own download code
        raise NeuronforgeError(
            f"the data of lm-eval task(s) {', '.join(tasks)} is not available on this host ({exc})",
            'download it once where the Hugging Face Hub is reachable (`python -c "from lm_eval.tasks import '
            f'TaskManager; TaskManager().load({tasks!r})"` caches it in ~/.cache/huggingface/datasets), or drop '
            "--lm-eval-tasks",
        ) from None


def emulated_lm(model: LogitsModel, tokenizer: PreTrainedTokenizerBase, max_length: int = DEFAULT_MAX_LENGTH) -> Any:
    """An `lm_eval.api.model.LM` backed by the emulator (needs the `[eval]` extra)."""
    require_lm_eval()
    from lm_eval.api.model import LM

    requests = EmulatedRequests(model, tokenizer, max_length)

    class NeuronEmulatedLM(LM):
        def loglikelihood(self, reqs: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return [requests.loglikelihood(*r.args) for r in track(reqs, "lm-eval loglikelihood")]

        def loglikelihood_rolling(self, reqs: list[Any], disable_tqdm: bool = False) -> list[float]:
            return [requests.loglikelihood_rolling(r.args[0]) for r in track(reqs, "lm-eval rolling")]

        def generate_until(self, reqs: list[Any], disable_tqdm: bool = False) -> list[str]:
            return [requests.generate_until(*r.args) for r in track(reqs, "lm-eval generate")]

    return NeuronEmulatedLM()


def run_lm_eval(
    model: LogitsModel, tokenizer: PreTrainedTokenizerBase, tasks: list[str], limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Score one variant on lm-eval tasks; returns {task: {metric: value}} (numeric metrics only)."""
    from lm_eval import simple_evaluate

    lm = emulated_lm(model, tokenizer)
    results = simple_evaluate(model=lm, tasks=tasks, limit=limit, task_manager=task_manager())["results"]
    return {
        task: {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        for task, metrics in results.items()
    }
