"""Stand-in for neuronx_distributed_inference.models.model_base: what every NxDI causal-LM class shares.

What it reproduces, each from aws-neuron/neuronx-distributed-inference@cd3abf3 (prefix src/neuronx_distributed_inference/):
- `Cls(path)` with no config reads `<path>/neuron_config.json` through the JSON round trip
  (models/application_base.py:82-83, models/config.py:925-1001), as vllm-neuron does for precompiled artifacts.
- compile() saves the whole InferenceConfig with to_dict first (application_base.py:299), then traces, then
  preshards weights (:311-314); sharding runs NxDI's GQA scale helpers on q/k/v scales (modules/attention/gqa.py:130-155),
  which raise for the 0-dim scale of NxD's fp8 per-tensor quantizer, and splits q/k/v/o by the head size the class
  builds (`attention_head_dim`: a checkpoint of another head size cannot be split, NEW-2 of the 2026-12-07 audit).
- save_quantized_state_dict loads the HF model with no dtype (modeling_llama.py:1450-1451), which transformers 4.57
  loads in fp32 (modeling_utils.py:1287-1293 in 4.57.6), quantizes each Linear outside modules_to_not_convert the way
  NxD does (scale shapes: per-channel [out, 1]; int8 per-tensor [1]; fp8 per-tensor 0-dim, NxD
  quantization_utils.py:126-152; int8 keeps Linear biases, fp8 drops them: :110-119 vs :154-181) and writes
  safetensors into an existing directory, else a pickle file (application_base.py:754-768).
- load() needs NeuronCores: the real one runs torch.jit.load and nxd_model.initialize on the device (:317-414).
  Here the devices are the neuron<N> entries of $NEURONFORGE_DEV_ROOT (default /dev), the folder neuronforge's
  own host check reads; tests point it at a folder they fill.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from neuronx_distributed_inference import record
from neuronx_distributed_inference.models.config import InferenceConfig

COMPILED_MODEL_FILE_NAME = "model.pt"


# modules/attention/gqa.py:130-155, verbatim.
def is_per_channel(scale: torch.Tensor) -> bool:
    """See if the scale is per channel"""
    if scale.shape == (1,):
        return False
    return True


def get_tensor_per_channel_scale_axis(scale: torch.Tensor) -> int:
    """Get the channel axis for the per channel scale"""
    scale_shape = scale.shape
    for i, dim_length in enumerate(scale_shape):
        if dim_length > 1:
            return i
    raise RuntimeError(f"Cannot get channel axis for the scale: {scale}")


def should_pad_scale(tensor_scale: torch.Tensor, pad_dim: int) -> bool:
    """Should scale be padded"""
    if (
        (tensor_scale is not None)
        and (is_per_channel(tensor_scale))
        and (get_tensor_per_channel_scale_axis(tensor_scale) == pad_dim)
    ):
        return True
    return False


def _nxd_quantize(weight: torch.Tensor, dtype: str, qtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and a scale shaped as NxD's offline quantizer shapes them (values are not what this stand-in checks)."""
    if dtype == "int8":
        amax = (
            weight.abs().amax(dim=1, keepdim=True)
            if qtype == "per_channel_symmetric"
            else weight.abs().max().reshape(1)
        )
        scale = torch.clamp(amax / 127.0, min=torch.finfo(torch.float32).eps)
        return torch.clamp(torch.round(weight / (scale if scale.dim() == 2 else scale)), -128, 127).to(
            torch.int8
        ), scale
    fp8 = torch.float8_e4m3fn if dtype == "f8e4m3" else torch.float8_e5m2
    fp8_max = 240.0 if fp8 is torch.float8_e4m3fn else torch.finfo(fp8).max
    if qtype == "per_channel_symmetric":  # quantize_fp8_per_channel, channel_axis=0
        scale = torch.max(weight.abs().amax(dim=1, keepdim=True) / fp8_max, torch.tensor(1e-05))
        return torch.clamp(weight / scale, -fp8_max, fp8_max).to(fp8), scale.to(torch.float32)
    scale = torch.max(torch.abs(weight)) / fp8_max  # quantize_fp8_per_tensor: a 0-dim scale
    return torch.clamp(weight / scale, -fp8_max, fp8_max).to(fp8), scale


class NeuronBaseForCausalLM:
    def __init__(self, model_path: str, config: InferenceConfig | None = None) -> None:
        if config is None:
            config = self.get_config_cls().load(model_path)
        record(type(self).__name__, model_path=model_path, config=config)
        self.model_path, self.config = model_path, config
        self.loaded = False

    @classmethod
    def get_config_cls(cls) -> type[InferenceConfig]:
        raise NotImplementedError

    @staticmethod
    def attention_head_dim(config: InferenceConfig) -> int:
        """The head size the class builds attention with: hidden_size // num_attention_heads unless it reads
        config.head_dim (Llama, Qwen3). NXDI8 models/qwen2/modeling_qwen2.py:87,97; NXDI9
        models/mistral/modeling_mistral.py:85,94."""
        return config.hidden_size // config.num_attention_heads

    qkv_bias = False  # the class builds q/k/v biases (Qwen2: modeling_qwen2.py:59-62)

    @classmethod
    def save_quantized_state_dict(cls, model_path: str, config: InferenceConfig) -> None:
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM

        neuron_config = config.neuron_config
        hf_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)  # 4.57's default: no dtype
        state: dict[str, torch.Tensor] = {}
        skipped = neuron_config.modules_to_not_convert or []
        for name, module in hf_model.model.named_modules():
            if isinstance(module, torch.nn.Linear) and not any(entry in name for entry in skipped):
                codes, scale = _nxd_quantize(
                    module.weight.detach(), neuron_config.quantization_dtype, neuron_config.quantization_type
                )
                state[f"{name}.weight"], state[f"{name}.scale"] = codes, scale
                # int8: torch's dynamic Linear keeps the bias; fp8: NxD's QuantizedLinear stores weight and scale only
                # (NxD v2.28.0 quantization/quantization_utils.py:110-119 vs 154-181).
                if module.bias is not None and neuron_config.quantization_dtype == "int8":
                    state[f"{name}.bias"] = module.bias.detach()
            elif isinstance(module, torch.nn.Linear):  # kept: NxDI writes the float tensors (fp32 from the fp32 load)
                state.update({f"{name}.{k}": v.detach() for k, v in module.named_parameters(recurse=False)})
        target = Path(neuron_config.quantized_checkpoints_path)
        record(
            "save_quantized_state_dict",
            model_path=model_path,
            config=config,
            target_is_dir=target.is_dir(),
            hf_dtype=next(hf_model.parameters()).dtype,
        )
        if target.is_dir():
            save_file({k: v.contiguous() for k, v in state.items()}, str(target / "model.safetensors"))
        else:
            torch.save(state, target)

    def compile(self, path: str) -> None:
        record("compile", path=path)
        self.config.save(path)
        (Path(path) / COMPILED_MODEL_FILE_NAME).write_bytes(b"standin")
        self._shard_weights(Path(path))

    def _shard_weights(self, path: Path) -> None:
        """Presharding runs the GQA scale helpers on every q/k/v scale (gqa.py:1024-1080 via maybe_pad_*)."""
        from safetensors.torch import load_file, save_file

        neuron_config = self.config.neuron_config
        source = Path(neuron_config.quantized_checkpoints_path)
        if not source.exists():
            raise FileNotFoundError(f"Quantized checkpoint file not found: {source}")  # application_base.py:637-640
        state = load_file(str(source / "model.safetensors")) if source.is_dir() else torch.load(source)
        for key, tensor in state.items():
            if re.search(r"self_attn\.[qkv]_proj\.scale$", key):
                should_pad_scale(tensor, pad_dim=0)
        self._check_attention(state)
        (path / "weights").mkdir(exist_ok=True)
        for rank in range(neuron_config.tp_degree):
            save_file(
                {"rank": torch.tensor([rank])}, str(path / "weights" / f"tp{rank}_sharded_checkpoint.safetensors")
            )

    def _check_attention(self, state: dict[str, torch.Tensor]) -> None:
        """Sharding splits q/k/v/o by the class's head size (GQA preshard_hook, gqa.py:1024-1080): weights of another
        head size cannot be split into its shapes. A class that builds q/k/v biases needs them in the checkpoint
        (an fp8 checkpoint of a non-excluded biased projection has none: see save_quantized_state_dict)."""
        config = self.config
        head_dim = self.attention_head_dim(config)
        rows = {"q": config.num_attention_heads * head_dim, "k": config.num_key_value_heads * head_dim}
        rows["v"] = rows["k"]
        for key, tensor in state.items():
            if (m := re.search(r"self_attn\.([qkv])_proj\.weight$", key)) and tensor.shape[0] != rows[m[1]]:
                raise RuntimeError(
                    f"{key} has {tensor.shape[0]} rows but {type(self).__name__} builds {rows[m[1]]} "
                    f"(head_dim {head_dim}): the weight cannot be sharded"
                )
            if self.qkv_bias and (m := re.search(r"^(.*self_attn\.[qkv]_proj)\.weight$", key)):
                if f"{m[1]}.bias" not in state:
                    raise RuntimeError(f"{m[1]}.bias is missing from the quantized checkpoint: the class adds a bias")

    def load(self, path: str) -> None:
        root = Path(os.environ.get("NEURONFORGE_DEV_ROOT", "/dev"))
        devices = [p for p in root.glob("neuron*") if re.fullmatch(r"neuron\d+", p.name)]
        record("load", path=path, compiled=os.path.exists(Path(path) / COMPILED_MODEL_FILE_NAME))
        if 2 * len(devices) < self.config.neuron_config.tp_degree:
            raise RuntimeError(
                f"nrt_init failed: {len(devices)} Neuron device(s), tp_degree "
                f"{self.config.neuron_config.tp_degree} needs NeuronCores"
            )
        self.loaded = True

    def generate_tokens(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        assert self.loaded, "generate before load"
        new = torch.arange(3, 3 + max_new_tokens, dtype=input_ids.dtype).unsqueeze(0)
        return torch.cat([input_ids, new], dim=1)
