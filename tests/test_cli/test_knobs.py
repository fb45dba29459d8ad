"""Each knob is declared once, in its options model: every command's flags agree with the field they feed.

Walks every command of the typer app (its click parameters, `typer.main.get_command`). A flag named like a field
of the command's options model must default to None ("not given": the model's default applies) or to the model's
own default; its choices must be the field's Literal values; its bounds (if it declares any) the field's; and its
help must carry the field's description. A new command must say which model its flags feed.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin

import pydantic
import pytest
import typer.main
from pydantic import BaseModel
from rich.markup import escape
from typer.testing import CliRunner

from neuronforge.cli import app
from neuronforge.core.presets import PRESETS
from neuronforge.neuron.numerics.emulation_spec import EmulateOptions
from neuronforge.neuron.nxdi.compile import CompileOptions
from neuronforge.neuron.nxdi.config import NeuronConfigOptions
from neuronforge.neuron.planner.plan import Deployment
from neuronforge.pipeline.evaluate.api import EvaluateOptions
from neuronforge.pipeline.quantize.api import QuantizeOptions, QuantizeSettings
from neuronforge.pipeline.run.config import RunConfig
from neuronforge.sagemaker.packaging import PackageOptions

# command path -> the options model its flags feed
MODELS: dict[str, type[BaseModel]] = {
    "quantize": QuantizeOptions,
    "emulate": EmulateOptions,
    "quantize-nxd": NeuronConfigOptions,
    "evaluate": EvaluateOptions,
    "plan": Deployment,
    "neuron-config": NeuronConfigOptions,
    "compile": CompileOptions,
    "run": RunConfig,
    "sagemaker quantize": QuantizeSettings,
    "sagemaker compile": NeuronConfigOptions,
    "sagemaker pipeline": QuantizeSettings,
    "package": PackageOptions,
}
# Commands whose flags feed no options model (AWS calls, file lay-out, introspection).
NO_MODEL = {
    "model list",
    "model fetch",
    "config init",
    "sagemaker upload-code",
    "sagemaker deploy",
    "sagemaker status",
    "sagemaker delete",
    "invoke",
    "doctor",
}
# (command, flag) pairs that deliberately differ from the model, and why.
EXCEPTIONS = {
    ("sagemaker pipeline", "tp_degree"): "the pipeline's compile step needs a degree before the model is known",
    ("sagemaker compile", "instance"): "--target is the endpoint instance; a required tp_degree is given with it",
}


def _commands() -> dict[str, Any]:
    found: dict[str, Any] = {}

    def walk(command: Any, path: str) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = command

    walk(typer.main.get_command(app), "")
    return found


def _literal_values(annotation: Any) -> set[Any] | None:
    """The values of a (possibly Optional, nested or Annotated) Literal type; None when it is no Literal."""
    if get_origin(annotation) is Literal:
        values: set[Any] = set()
        for arg in get_args(annotation):
            values |= _literal_values(arg) or {arg}
        return values
    if get_origin(annotation) in (Union, types.UnionType):
        parts = [_literal_values(arg) for arg in get_args(annotation) if arg is not type(None)]
        if parts and all(part is not None for part in parts):
            return set().union(*parts)  # type: ignore[arg-type]
    return None


def _bounds(field: pydantic.fields.FieldInfo) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if getattr(item, name, None) is not None:
                found[name] = getattr(item, name)
    return found


def knob_problems(command: str, params: list[Any], model: type[BaseModel]) -> list[str]:
    """Where a command's flags disagree with the model fields they feed (the test's checker, tested below)."""
    problems = []
    for param in params:
        field = model.model_fields.get(param.name or "")
        if field is None or param.required or (command, param.name) in EXCEPTIONS:
            continue
        where = f"{command} --{param.name.replace('_', '-')}"
        model_default = field.get_default(call_default_factory=True)
        if param.default is not None and param.default != model_default:
            problems.append(f"{where}: default {param.default!r}, model {model_default!r}")
        choices = _literal_values(param.type_descriptor.annotation)  # typer >= 0.29 keeps the annotation
        expected = _literal_values(field.annotation)
        if choices is not None and set(choices) != expected:
            problems.append(f"{where}: choices {sorted(choices)}, model {sorted(expected or [])}")
        if choices is None and expected is not None:
            problems.append(f"{where}: takes any value, model only {sorted(expected)}")
        declared = {
            name: getattr(param, attr)
            for name, attr in (("ge", "min"), ("le", "max"))
            if getattr(param, attr) is not None
        }
        wanted = _bounds(field)
        if declared and any(wanted.get(name) != value for name, value in declared.items()):
            problems.append(f"{where}: bounds {declared}, model {wanted}")
        if field.description and escape(field.description) not in (param.help or ""):
            problems.append(f"{where}: help {param.help!r} is not the model's {field.description!r}")
    return problems


def test_every_command_is_classified() -> None:
    commands = set(_commands())
    assert commands == set(MODELS) | NO_MODEL, "say which options model a new command's flags feed"


@pytest.mark.parametrize("command", sorted(MODELS))
def test_flags_agree_with_the_model_they_feed(command: str) -> None:
    params = _commands()[command].params
    fed = [p for p in params if p.name in MODELS[command].model_fields]
    assert fed, f"{command}: no flag feeds {MODELS[command].__name__}"
    assert knob_problems(command, params, MODELS[command]) == []


def test_the_checker_finds_drift() -> None:
    """The drifts this test was written for, rebuilt: a copied default, an unbounded copy, a free-text choice."""

    class Settings(BaseModel):
        iters: int = pydantic.Field(50, ge=0, description="tuning steps")
        max_extra_memory: float = pydantic.Field(0.10, ge=0.0, le=1.0, description="extra memory")
        dtype: Literal["int8", "f8e4m3"] = pydantic.Field("int8", description="weight dtype")

    drifted = typer.Typer()

    @drifted.command()
    def cmd(
        iters: int = typer.Option(20, "--iters", help="tuning steps"),
        max_extra_memory: float = typer.Option(0.1, "--max-extra-memory", min=0.0, max=5.0, help="extra memory"),
        dtype: str = typer.Option("int8", "--dtype", help="int8 or f8e4m3"),
    ) -> None:
        """A command whose flags were copied by hand."""

    problems = knob_problems("cmd", typer.main.get_command(drifted).params, Settings)
    assert problems == [
        "cmd --iters: default 20, model 50",
        "cmd --max-extra-memory: bounds {'ge': 0.0, 'le': 5.0}, model {'ge': 0.0, 'le': 1.0}",
        "cmd --dtype: takes any value, model only ['f8e4m3', 'int8']",
        "cmd --dtype: help 'int8 or f8e4m3' is not the model's 'weight dtype'",
    ]


# --- the drifted copies the audit found, each refused or fixed ------------------------------------------------

runner = CliRunner()


def test_evaluate_refuses_an_out_of_range_budget_before_loading_anything(tmp_path: Any) -> None:
    """It used to be accepted, then failed at the first cached quantize run pointing at `quantize --help`."""
    result = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "nope"), "--max-extra-memory", "5"])
    assert result.exit_code == 2, result.output
    assert "invalid evaluate options: max_extra_memory" in result.output
    assert "neuronforge evaluate --help" in result.output
    assert not (tmp_path / "nope").exists()


def test_sagemaker_quantize_reads_the_gpu_preset_and_refuses_bad_numbers() -> None:
    argv = ["sagemaker", "quantize", "--model-s3", "s3://bucket/m", "--output-s3", "s3://bucket/o", "--dry-run"]
    argv += ["--role", "arn:aws:iam::123456789012:role/r", "--region", "us-east-1", "--install", "neuronforge"]
    result = runner.invoke(app, [*argv, "--iters", "-5", "--nsamples", "0"])
    assert result.exit_code == 2, result.output
    assert "iters" in result.output and "nsamples" in result.output
    params = {p.name: p for p in _commands()["sagemaker quantize"].params}
    assert params["iters"].default is None and params["nsamples"].default is None
    shown = runner.invoke(app, argv)
    assert shown.exit_code == 0, shown.output
    gpu = PRESETS["gpu"]
    for flag, value in (("--iters", gpu.iters), ("--nsamples", gpu.nsamples), ("--calib-seq-len", gpu.calib_seq_len)):
        assert f'"{flag}",\n' in shown.output and f'"{value}"' in shown.output


def test_compile_defaults_are_the_sdk_and_instance_constants() -> None:
    from neuronforge.neuron.nxdi.config import DEFAULT_INSTANCE
    from neuronforge.neuron.nxdi.versions import DEFAULT_SDK

    for command in ("compile", "neuron-config"):
        params = {p.name: p for p in _commands()[command].params}
        assert params["sdk"].default is None and params["instance"].default is None
        assert CompileOptions(model="m", out="o").sdk is None  # type: ignore[arg-type]  # the host's, else DEFAULT_SDK
        assert DEFAULT_SDK in (CompileOptions.model_fields["sdk"].description or "")
        assert CompileOptions(model="m", out="o").instance == DEFAULT_INSTANCE  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "field"),
    [
        (QuantizeOptions, "model"),
        (QuantizeOptions, "out"),
        (QuantizeOptions, "text"),
        (EvaluateOptions, "out"),
        (EvaluateOptions, "gsm8k"),
        (CompileOptions, "model"),
        (CompileOptions, "neuron_config"),
        (PackageOptions, "compiled"),
        (PackageOptions, "tokenizer"),
        (RunConfig, "model"),
        (RunConfig, "out"),
        (RunConfig, "text"),
    ],
)
def test_the_python_api_refuses_an_empty_path(model: type[BaseModel], field: str) -> None:
    """B15/C09/C20 for `nf.*`: Path('') is the current directory, so '' was taken as '.' without a word."""
    required = {"out": "o", "compiled": "c", "checkpoint": "k", "model": "m"}
    values = {name: value for name, value in required.items() if name in model.model_fields}
    model(**values)  # valid without the empty value
    with pytest.raises(pydantic.ValidationError, match=r"an empty path \(''\)"):
        model(**{**values, field: ""})


# --- every float knob names NaN and infinity (report C14, D07, E03), declared once in core/knobs.py -----------


def _is_float(annotation: Any) -> bool:
    return annotation is float or float in get_args(annotation)


FLOAT_KNOBS = sorted(
    {
        (model.__name__, name, model)
        for model in {*MODELS.values(), RunConfig}
        for name, field in model.model_fields.items()
        if _is_float(field.annotation)
    },
    key=lambda knob: knob[:2],
)


@pytest.mark.parametrize(
    ("model", "name"), [k[2:0:-1] for k in FLOAT_KNOBS], ids=[f"{k[0]}.{k[1]}" for k in FLOAT_KNOBS]
)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "not a number (nan)"),
        (float("inf"), "not a finite number (inf)"),
        ("-inf", "not a finite number (-inf)"),
    ],
)
def test_every_float_knob_names_nan_and_infinity(model: type[BaseModel], name: str, value: Any, message: str) -> None:
    """NaN was reported as "should be less than or equal to 1": the bounds ran first."""
    with pytest.raises(pydantic.ValidationError) as raised:
        model.model_validate({name: value})
    found = [error["msg"] for error in raised.value.errors() if error["loc"] == (name,)]
    assert found == [f"{message}; give a finite number"]
