"""`neuronforge invoke`: one smoke request to the endpoint's vLLM server (OpenAI completions body on /invocations)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from neuronforge.core.aws import call
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker import limits

if TYPE_CHECKING:
    from botocore.client import BaseClient

SERVED_MODEL_NAME = "neuronforge"  # the serve wrapper passes it to vLLM as --served-model-name


def completion_body(prompt: str, max_tokens: int = 32, temperature: float = 0.0) -> dict[str, Any]:
    if not prompt:
        raise NeuronforgeError(
            "the prompt is empty", "pass a prompt, e.g. neuronforge invoke ENDPOINT 'The capital of France is'"
        )
    if max_tokens < 1:
        raise NeuronforgeError(f"max_tokens {max_tokens} must be at least 1", "pass --max-tokens 32")
    return {"model": SERVED_MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}


def completion_text(raw: bytes) -> str:
    """The generated text of a completions (or chat) response."""
    try:
        choice = json.loads(raw)["choices"][0]
        return choice["text"] if "text" in choice else choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise NeuronforgeError(
            f"the endpoint answered something that is not a completion: {raw[:200]!r}",
            "check the endpoint's CloudWatch logs (/aws/sagemaker/Endpoints/<name>)",
        ) from None


def invoke_request(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    """The exact InvokeEndpoint kwargs (`--dry-run` prints these): the body travels as a JSON string."""
    request = {
        "EndpointName": endpoint,
        "ContentType": "application/json",
        "Accept": "application/json",
        "Body": json.dumps(body),
    }
    return limits.check("sagemaker-runtime", "InvokeEndpoint", request)


def invoke(endpoint: str, body: dict[str, Any], runtime: BaseClient) -> str:
    response = call(runtime.invoke_endpoint, **invoke_request(endpoint, body))
    return completion_text(response["Body"].read())
