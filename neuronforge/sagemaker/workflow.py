"""SDK v3 path: a SageMaker Pipeline GPU quantize -> trn1 compile -> model -> endpoint config -> endpoint.

Each step's arguments are the same validated request dicts the boto3 path sends (requests.py), with the job
names dropped (the pipeline names its jobs) and the hand-offs between steps expressed as step properties.
The endpoint config is named per execution (`<endpoint>-<execution id>`) and the Endpoint step is the
pipeline's create-or-update step (sagemaker.mlops.workflow.endpoint_step.EndpointStep docstring), so the
pipeline can run again. The SDK (`pip install 'neuronforge[sagemaker]'`) is imported only here, lazily.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neuronforge.core import s3uri
from neuronforge.core.presets import PRESETS
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.nxdi.versions import DEFAULT_SDK
from neuronforge.sagemaker.code import CodeBundle
from neuronforge.sagemaker.requests import (
    CHECKPOINT_SUBDIR,
    PACKAGE_SUBDIR,
    PIPELINE_NAME,
    JobSettings,
    Request,
    compile_job_request,
    deployment_requests,
    quantize_job_request,
    validate_name,
)

EXECUTION_SUFFIX = 13  # "-" + the 12-character pipeline execution id appended to the endpoint config name

if TYPE_CHECKING:
    from sagemaker.mlops.workflow.pipeline import Pipeline


@dataclass(frozen=True)
class PipelineSettings:
    name: str
    role_arn: str
    region: str
    model_s3: str  # default of the ModelS3Uri pipeline parameter
    output_s3: str
    endpoint_name: str
    tp_degree: int = 2
    dtype: str = "int8"
    kv: str = "fp8"
    seq_len: int = 1024
    sdk: str = DEFAULT_SDK  # the compile's Neuron SDK, whose pinned image compiles and serves
    quantize_instance: str = "ml.g6e.2xlarge"
    compile_instance: str = "ml.trn1.2xlarge"
    endpoint_instance: str = "ml.inf2.xlarge"
    iters: int = PRESETS["gpu"].iters  # the quantize job runs on a GPU instance: AutoRound's GPU budget
    nsamples: int = PRESETS["gpu"].nsamples
    calib_seq_len: int = PRESETS["gpu"].calib_seq_len
    code: CodeBundle | None = None  # the shipped wheel (code.py); or `install`, an explicit pip spec
    install: str | None = None
    pipeline_role_arn: str | None = None  # the pipeline's own role (the stack's PipelineRoleArn); default role_arn

    @property
    def upsert_role(self) -> str:
        """The role the pipeline runs as; its steps' jobs and model run as `role_arn`."""
        return self.pipeline_role_arn or self.role_arn


@contextmanager
def _region_env(region: str) -> Iterator[None]:
    """SDK v3 modules need a region at import time; set one only for the import, then restore the caller's env."""
    before = os.environ.get("AWS_DEFAULT_REGION")
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)


def _require_sdk(region: str) -> None:
    try:
        with _region_env(region):
            import sagemaker.mlops.workflow  # noqa: F401
    except ImportError:
        raise NeuronforgeError(
            "the SageMaker Python SDK v3 is not installed", "pip install 'neuronforge[sagemaker]' (sagemaker>=3.27)"
        ) from None


@functools.cache
def step_classes() -> tuple[type, type]:
    """(RequestStep, EndpointRequestStep), built once after the SDK import and published on this module (picklable).

    RequestStep takes cache_config and retry_policies like the SDK's own steps; the Endpoint step, like the
    SDK's EndpointStep, is not retryable at the pipeline level.
    """
    from sagemaker.core.workflow.properties import Properties
    from sagemaker.mlops.workflow.steps import ConfigurableRetryStep, Step, StepTypeEnum

    class RequestStep(ConfigurableRetryStep):
        """A pipeline step whose arguments are one of our request dicts (pipeline variables allowed inside)."""

        def __init__(self, name: str, step_type: str, shape: str, arguments: Request, **kwargs: Any) -> None:
            cache_config = kwargs.pop("cache_config", None)
            super().__init__(name=name, step_type=StepTypeEnum(step_type), **kwargs)
            self.cache_config = cache_config
            self.request = arguments
            self._properties = Properties(step_name=name, step=self, shape_name=shape)

        @property
        def arguments(self) -> Request:
            return self.request

        @property
        def properties(self) -> Any:
            return self._properties

        def to_request(self) -> Request:
            request = super().to_request()
            return request | (self.cache_config.config if self.cache_config else {})

    class EndpointRequestStep(Step):
        """Create-or-update of the endpoint (the pipeline service picks UpdateEndpoint when it exists)."""

        def __init__(self, name: str, arguments: Request, **kwargs: Any) -> None:
            super().__init__(name=name, step_type=StepTypeEnum.ENDPOINT, **kwargs)
            self.request = arguments
            self._properties = Properties(step_name=name, step=self, shape_name="DescribeEndpointOutput")

        @property
        def arguments(self) -> Request:
            return self.request

        @property
        def properties(self) -> Any:
            return self._properties

    for cls in (RequestStep, EndpointRequestStep):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        globals()[cls.__name__] = cls
    return RequestStep, EndpointRequestStep


def _job_output(step: Any, output_s3: str, subdir: str) -> Any:
    """<output>/<pipeline-named job>/output/model/<subdir>/: where an uncompressed job's /opt/ml/model/<subdir> lands."""
    from sagemaker.core.workflow.functions import Join

    return Join(
        on="/",
        values=[s3uri.prefix(output_s3).rstrip("/"), step.properties.TrainingJobName, "output", "model", subdir, ""],
    )


def build_pipeline(settings: PipelineSettings) -> Pipeline:
    """The Pipeline object (nothing is created in AWS until `upsert`)."""
    _require_sdk(settings.region)
    import boto3
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.pipeline import Pipeline

    s = settings
    if len(s.endpoint_name) > 63 - EXECUTION_SUFFIX:
        raise NeuronforgeError(
            f"endpoint name '{s.endpoint_name}' is longer than {63 - EXECUTION_SUFFIX} characters",
            "the pipeline appends '-<execution id>' to name each execution's endpoint config; shorten --endpoint-name",
        )
    request_step, endpoint_step = step_classes()
    model_s3 = ParameterString(name="ModelS3Uri", default_value=s3uri.prefix(s.model_s3))

    validate_name(s.name, "pipeline", PIPELINE_NAME)

    def job(stage: str, instance: str) -> JobSettings:
        # The pipeline names its jobs itself (the name is dropped below): a placeholder, not `<pipeline>-<stage>`,
        # which would refuse legal pipeline names of 55+ characters.
        return JobSettings(name=f"nf-{stage}", role_arn=s.role_arn, region=s.region, instance_type=instance)

    quantize = quantize_job_request(
        job("quantize", s.quantize_instance),
        model_s3=s.model_s3,
        output_s3=s.output_s3,
        dtype=s.dtype,
        options={"iters": s.iters, "nsamples": s.nsamples, "calib_seq_len": s.calib_seq_len},
        code=s.code,
        install=s.install,
    )
    quantize.pop("TrainingJobName")
    quantize["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = model_s3
    step_q = request_step("Quantize", "Training", "DescribeTrainingJobResponse", quantize)

    compile_ = compile_job_request(
        job("compile", s.compile_instance),
        checkpoint_s3=s.output_s3,
        output_s3=s.output_s3,
        tp_degree=s.tp_degree,
        target_instance=s.endpoint_instance,
        dtype=s.dtype,
        kv=s.kv,
        seq_len=s.seq_len,
        sdk=s.sdk,
        code=s.code,
        install=s.install,
    )
    compile_.pop("TrainingJobName")
    compile_["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = _job_output(
        step_q, s.output_s3, CHECKPOINT_SUBDIR
    )
    step_c = request_step("Compile", "Training", "DescribeTrainingJobResponse", compile_)

    deploy = deployment_requests(
        s.endpoint_name,
        role_arn=s.role_arn,
        region=s.region,
        model_data_s3=s.output_s3,
        instance_type=s.endpoint_instance,
        tp_degree=s.tp_degree,
        sdk=s.sdk,
    )
    model = deploy["create_model"]
    model.pop("ModelName")
    model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] = _job_output(
        step_c, s.output_s3, PACKAGE_SUBDIR
    )
    step_m = request_step("Model", "Model", "DescribeModelOutput", model)

    config = deploy["create_endpoint_config"]
    config["ProductionVariants"][0]["ModelName"] = step_m.properties.ModelName
    config["EndpointConfigName"] = Join(on="-", values=[s.endpoint_name, ExecutionVariables.PIPELINE_EXECUTION_ID])
    step_ec = request_step("EndpointConfig", "EndpointConfig", "DescribeEndpointConfigOutput", config)

    endpoint = deploy["create_endpoint"]
    endpoint["EndpointConfigName"] = step_ec.properties.EndpointConfigName
    step_e = endpoint_step("Endpoint", endpoint)

    session = PipelineSession(
        boto_session=boto3.session.Session(region_name=s.region), default_bucket=s3uri.split(s.output_s3)[0]
    )
    return Pipeline(
        name=s.name, parameters=[model_s3], steps=[step_q, step_c, step_m, step_ec, step_e], sagemaker_session=session
    )


@contextmanager
def sdk_errors() -> Iterator[None]:
    """SDK v3 failures (role validation, pydantic validation of our arguments) become error:/fix:, not tracebacks."""
    try:
        yield
    except NeuronforgeError:
        raise
    except Exception as exc:
        module = type(exc).__module__
        if not module.startswith(("sagemaker", "pydantic")):
            raise
        raise NeuronforgeError(
            f"the SageMaker SDK refused: {type(exc).__name__}: {str(exc)[:500]}",
            "check --role (it must exist and trust sagemaker.amazonaws.com) and the region",
        ) from None
