"""Fake artifacts shaped like the real ones, for tests that need one without running its producer."""

from __future__ import annotations

import json
import os
from pathlib import Path


def make_compiled(root: Path, tp_degree: int = 2, dtype: str = "int8", sdk: str = "2.28") -> Path:
    """A compiled directory shaped like `neuronforge compile`'s: model.pt, neuron_config.json (NxDI's nested form,
    kv_quant_config as neuronforge rewrites it), presharded weights, the record, and NxDI's quantized_checkpoint/
    (compiles before R6 left it there)."""
    compiled = root / "compiled-src"
    (compiled / "weights").mkdir(parents=True)
    (compiled / "quantized_checkpoint").mkdir()
    (compiled / "quantized_checkpoint" / "model.safetensors").write_bytes(os.urandom(7000))
    nxdi = {"2.28": "0.8.16251+f3ca5575", "2.31": "0.10.18399+ed62453e"}[sdk]  # as the serving images install it
    record = {"sdk": sdk, "installed": {"neuronx-distributed-inference": nxdi}}
    (compiled / "neuronforge_compile.json").write_text(json.dumps(record))
    (compiled / "model.pt").write_bytes(os.urandom(3000))
    (compiled / "weights" / "tp0_sharded_checkpoint.safetensors").write_bytes(os.urandom(5000))
    config = {
        "neuron_config": {
            "tp_degree": tp_degree,
            "seq_len": 256,
            "batch_size": 1,
            "quantized": True,
            "quantization_dtype": dtype,
            "kv_cache_quant": True,
            "kv_quant_config": {"direct_cast": True},
        }
    }
    (compiled / "neuron_config.json").write_text(json.dumps(config))
    return compiled


def push_neuron_image(region: str = "us-east-1") -> str:
    """Put the pinned Neuron image's tag into (moto's) ECR, as `docker push` would; return its URI."""
    import boto3

    from neuronforge.sagemaker.images import image_uri

    uri = image_uri("neuron", region, "123456789012")
    repository, tag = uri.split("/", 1)[1].split(":")
    ecr = boto3.client("ecr", region_name=region)
    ecr.create_repository(repositoryName=repository)
    config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 1, "digest": "sha256:" + "0" * 64}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    ecr.put_image(
        repositoryName=repository, imageManifest=json.dumps(manifest | {"config": config, "layers": []}), imageTag=tag
    )
    return uri


def deploy_stack(name: str, region: str, template: Path) -> dict[str, str]:
    """Deploy infra/neuronforge.yaml to (moto's) CloudFormation; return its outputs.

    moto resolves SSM-typed parameter defaults before overrides and holds no /aws/service/* parameters, so the two
    AMI defaults point at test parameters in this copy of the template."""
    import boto3
    from cfnlint.decode.cfn_yaml import load

    body = template.read_text()
    ec2, ssm = boto3.client("ec2", region_name=region), boto3.client("ssm", region_name=region)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    parameters = load(str(template))["Parameters"]
    for key in ("GpuAmiId", "NeuronAmiId"):
        body = body.replace(parameters[key]["Default"], f"/test/{key}")
        ssm.put_parameter(Name=f"/test/{key}", Value=ami, Type="String", Overwrite=True)
    cfn = boto3.client("cloudformation", region_name=region)
    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Capabilities=["CAPABILITY_NAMED_IAM"],
        Parameters=[{"ParameterKey": "NeuronforgeSource", "ParameterValue": "s3://b/code/x/neuronforge.whl"}],
    )
    described = cfn.describe_stacks(StackName=name)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in described["Outputs"]}
