"""SDK v3 path: a SageMaker Pipeline GPU quantize -> trn1 compile -> model -> endpoint config -> endpoint.

Each step's arguments are the same validated request dicts the boto3 path sends (requests.py), with the job
names dropped (the pipeline names its jobs) and the hand-offs between steps expressed as step properties.
The SDK (`pip install 'neuronforge[sagemaker]'`) is imported only here, lazily.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neuronforge.core import s3uri
from neuronforge.errors import NeuronforgeError
from neuronforge.sagemaker.requests import (
    CHECKPOINT_SUBDIR,
    PACKAGE_SUBDIR,
    JobSettings,
    Request,
    compile_job_request,
    deployment_requests,
    quantize_job_request,
)

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
    quantize_instance: str = "ml.g6e.2xlarge"
    compile_instance: str = "ml.trn1.2xlarge"
    endpoint_instance: str = "ml.inf2.xlarge"
    iters: int = 50
    nsamples: int = 32
    calib_seq_len: int = 256


def _require_sdk() -> None:
    try:
        import sagemaker.mlops.workflow  # noqa: F401
    except ImportError:
        raise NeuronforgeError(
            "the SageMaker Python SDK v3 is not installed", "pip install 'neuronforge[sagemaker]' (sagemaker>=3.27)"
        ) from None


def _request_step(
    name: str, step_type: str, shape: str, arguments: Request, depends_on: list[Any] | None = None
) -> Any:
    """A pipeline step whose arguments are one of our request dicts (pipeline variables allowed inside)."""
    from sagemaker.core.workflow.properties import Properties
    from sagemaker.mlops.workflow.steps import ConfigurableRetryStep, StepTypeEnum

    class RequestStep(ConfigurableRetryStep):
        def __init__(self) -> None:
            super().__init__(name=name, step_type=StepTypeEnum(step_type), depends_on=depends_on)
            self._properties = Properties(step_name=name, step=self, shape_name=shape)

        @property
        def arguments(self) -> Request:
            return arguments

        @property
        def properties(self) -> Any:
            return self._properties

    return RequestStep()


def _job_output(step: Any, output_s3: str, subdir: str) -> Any:
    """<output>/<pipeline-named job>/output/model/<subdir>/: where an uncompressed job's /opt/ml/model/<subdir> lands."""
    from sagemaker.core.workflow.functions import Join

    return Join(
        on="/",
        values=[s3uri.prefix(output_s3).rstrip("/"), step.properties.TrainingJobName, "output", "model", subdir, ""],
    )


def build_pipeline(settings: PipelineSettings) -> Pipeline:
    """The Pipeline object (nothing is created in AWS until `upsert`)."""
    os.environ.setdefault("AWS_DEFAULT_REGION", settings.region)  # SDK v3 modules need a region at import time
    _require_sdk()
    import boto3
    from sagemaker.core.workflow.parameters import ParameterString
    from sagemaker.core.workflow.pipeline_context import PipelineSession
    from sagemaker.mlops.workflow.pipeline import Pipeline

    s = settings
    model_s3 = ParameterString(name="ModelS3Uri", default_value=s3uri.prefix(s.model_s3))

    def job(stage: str, instance: str) -> JobSettings:
        return JobSettings(name=f"{s.name}-{stage}", role_arn=s.role_arn, region=s.region, instance_type=instance)

    quantize = quantize_job_request(
        job("quantize", s.quantize_instance),
        model_s3=s.model_s3,
        output_s3=s.output_s3,
        dtype=s.dtype,
        options={"iters": s.iters, "nsamples": s.nsamples, "calib_seq_len": s.calib_seq_len},
    )
    quantize.pop("TrainingJobName")
    quantize["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = model_s3
    step_q = _request_step("Quantize", "Training", "DescribeTrainingJobResponse", quantize)

    compile_ = compile_job_request(
        job("compile", s.compile_instance),
        checkpoint_s3=s.output_s3,
        output_s3=s.output_s3,
        tp_degree=s.tp_degree,
        target_instance=s.endpoint_instance,
        dtype=s.dtype,
        kv=s.kv,
        seq_len=s.seq_len,
    )
    compile_.pop("TrainingJobName")
    compile_["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = _job_output(
        step_q, s.output_s3, CHECKPOINT_SUBDIR
    )
    step_c = _request_step("Compile", "Training", "DescribeTrainingJobResponse", compile_)

    deploy = deployment_requests(
        s.endpoint_name,
        role_arn=s.role_arn,
        region=s.region,
        model_data_s3=s.output_s3,
        instance_type=s.endpoint_instance,
        tp_degree=s.tp_degree,
    )
    model = deploy["create_model"]
    model.pop("ModelName")
    model["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]["S3Uri"] = _job_output(
        step_c, s.output_s3, PACKAGE_SUBDIR
    )
    step_m = _request_step("Model", "Model", "DescribeModelOutput", model)

    config = deploy["create_endpoint_config"]
    config["ProductionVariants"][0]["ModelName"] = step_m.properties.ModelName
    step_ec = _request_step("EndpointConfig", "EndpointConfig", "DescribeEndpointConfigOutput", config)

    endpoint = deploy["create_endpoint"]
    endpoint["EndpointConfigName"] = step_ec.properties.EndpointConfigName
    step_e = _request_step("Endpoint", "Endpoint", "DescribeEndpointOutput", endpoint)

    session = PipelineSession(
        boto_session=boto3.session.Session(region_name=s.region), default_bucket=s3uri.split(s.output_s3)[0]
    )
    return Pipeline(
        name=s.name, parameters=[model_s3], steps=[step_q, step_c, step_m, step_ec, step_e], sagemaker_session=session
    )


def pipeline_definition(settings: PipelineSettings) -> dict[str, Any]:
    return json.loads(build_pipeline(settings).definition())
