"""Check a request against the AWS API's own limits before the first call, so nothing is half-created.

botocore's ParamValidator checks types, required members and minimums only. This walks the operation's input
shape from botocore's service model and also checks every maximum, pattern, enum and list/map size, plus the
limits AWS documents but the model leaves out (a training job runs at most 28 days: CreateTrainingJob
MaxRuntimeInSeconds doc). The same walker turns a request into the snake_case kwargs of the SDK's resources.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from neuronforge.errors import NeuronforgeError

# Shape name -> documented maximum the service model does not carry.
DOCUMENTED_MAX = {"MaxRuntimeInSeconds": 28 * 24 * 3600, "MaxWaitTimeInSeconds": 28 * 24 * 3600}
# Member name -> the CLI flag that sets it, for the fix text.
FLAGS = {
    "VolumeSizeInGB": "--volume-gb",
    "MaxRuntimeInSeconds": "--max-runtime",
    "MaxWaitTimeInSeconds": "--max-wait",
    "ContainerStartupHealthCheckTimeoutInSeconds": "--startup-timeout",
    "TrainingJobName": "--name",
    "ProcessingJobName": "--name",
    "ModelName": "--name",
    "EndpointName": "--name",
    "EndpointConfigName": "--name",
    "S3Uri": "the s3:// options (--model-s3, --output-s3, --checkpoint-s3, --model-data)",
    "S3OutputPath": "--output-s3",
    "InstanceType": "--instance-type",
}


@functools.cache
def _model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@functools.cache
def _pattern(text: str) -> Any:
    """botocore patterns are Java regexes; `regex` (a transformers dependency) reads \\p{L}, `re` does not."""
    try:
        import regex

        return regex.compile(text)
    except ImportError:
        try:
            return re.compile(text)
        except re.error:
            return None


def _walk(shape: Any, value: Any, path: str, found: list[tuple[str, str]]) -> None:
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, item in value.items():
            if name in shape.members:
                _walk(shape.members[name], item, f"{path}.{name}" if path else name, found)
        return
    if kind == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            _walk(shape.member, item, f"{path}[{index}]", found)
    elif kind == "map" and isinstance(value, dict):
        for key, item in value.items():
            _walk(shape.key, key, f"{path} key {key!r}", found)
            _walk(shape.value, item, f"{path}[{key!r}]", found)
    size = len(value) if isinstance(value, str | list | dict) else None
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    measured = size if size is not None else number
    unit = " characters" if isinstance(value, str) else (" items" if size is not None else "")
    maximum = meta.get("max", DOCUMENTED_MAX.get(shape.name))
    if measured is not None and maximum is not None and measured > maximum:
        found.append((path, f"{path} is {measured}{unit}, above the maximum {maximum} ({shape.name})"))
    if measured is not None and "min" in meta and measured < meta["min"]:
        found.append((path, f"{path} is {measured}{unit}, below the minimum {meta['min']} ({shape.name})"))
    if isinstance(value, str) and getattr(shape, "enum", None) and value not in shape.enum:
        found.append((path, f"{path} '{value}' is not one of the {len(shape.enum)} values {shape.name} allows"))
    pattern = meta.get("pattern")
    if isinstance(value, str) and pattern and (compiled := _pattern(pattern)) and not compiled.fullmatch(value):
        found.append((path, f"{path} '{value[:80]}' does not match {shape.name}'s pattern {pattern}"))


def problems(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, message) for every limit the request breaks; empty when AWS will accept its values."""
    from botocore.validate import ParamValidator

    shape = _model(service).operation_model(operation).input_shape
    found: list[tuple[str, str]] = []
    _walk(shape, params, "", found)
    report = ParamValidator().validate(params, shape)  # types, required members, unknown keys
    if not found and report.has_errors():
        found.append(("", report.generate_report()))
    return found


def check(service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """Return `params` unchanged, or raise NeuronforgeError naming the first broken limit and the flag to change."""
    found = problems(service, operation, params)
    if not found:
        return params
    path, message = found[0]
    member = re.sub(r"\[.*?\]|.* key .*", "", path).split(".")[-1]
    flag = FLAGS.get(member)
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise NeuronforgeError(
        f"{operation} would be rejected by AWS: {message}{more}",
        f"change {flag}" if flag else "shorten or correct that value; nothing was created",
    )


def to_snake_kwargs(service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """PascalCase request -> the snake_case kwargs of sagemaker.core.resources (map keys such as env names kept)."""
    return _snake(_model(service).operation_model(operation).input_shape, params)


def to_snake(service: str, shape_name: str, value: dict[str, Any]) -> dict[str, Any]:
    """Like to_snake_kwargs for one named shape (e.g. "S3DataSource")."""
    return _snake(_model(service).shape_for(shape_name), value)


def _snake(shape: Any, value: Any) -> Any:
    if shape.type_name == "structure" and isinstance(value, dict):
        return {_snake_name(k): _snake(shape.members[k], v) for k, v in value.items()}
    if shape.type_name == "list" and isinstance(value, list):
        return [_snake(shape.member, v) for v in value]
    if shape.type_name == "map" and isinstance(value, dict):
        return {k: _snake(shape.value, v) for k, v in value.items()}
    return value


def _snake_name(name: str) -> str:
    """The SDK's own PascalCase -> snake_case rule (sagemaker.core.utils.code_injection.codec.pascal_to_snake)."""
    return re.sub("([a-z0-9])([A-Z])", r"\1_\2", re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)).lower()
