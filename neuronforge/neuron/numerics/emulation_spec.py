"""What the CPU emulator runs (`EmulationSpec`) and the `emulate` command's options, without importing torch.

`EmulationSpec` says what the device would run; `EmulateOptions` adds how much held-out text a perplexity
report scores, with the emulate command's defaults (int8 weights, fp8 KV: what `neuronforge compile` builds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from neuronforge.core.devices import DeviceField
from neuronforge.core.knobs import EvalSeqLen, EvalTokens
from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.numerics.dtypes import (
    KV_DTYPES,
    QUANT_DTYPES,
    QUANT_TYPES,
    KvDtype,
    KvOption,
    QuantDtype,
    QuantType,
    QuantTypeOption,
)


@dataclass(frozen=True)
class EmulationSpec:
    """What the device would run: weight dtype (None = bf16), fp8 KV cache, bf16 modules, quantization type.

    Validated on construction: a spec that exists is one the device can run.
    """

    dtype: QuantDtype | None = None
    kv: KvDtype = "bf16"  # NxDI's direct-cast fp8 (e4m3) cache, or bf16
    modules_to_not_convert: tuple[str, ...] = ()
    qtype: QuantType = "per_channel_symmetric"
    # bf16 Linears as fp32 GEMMs rounded once to bf16 (device-like fp32 accumulation, ~6x faster on CPUs
    # without native bf16); every command uses it. Off: HF's own bf16 kernels, bit-identical to the unmodified model.
    fast_bf16: bool = True
    # NeuronCores the model is sharded over: row-parallel layers (o_proj, down_proj) round per-rank partials (qlinear.py).
    tp_degree: int = 1

    @property
    def kv_fp8(self) -> bool:
        return self.kv == "fp8"

    def __post_init__(self) -> None:
        if self.kv not in KV_DTYPES:
            raise NeuronforgeError(f"unknown KV cache dtype '{self.kv}'", f"choose one of: {', '.join(KV_DTYPES)}")
        if self.tp_degree < 1:
            raise NeuronforgeError(f"tp_degree {self.tp_degree} is not a NeuronCore count", "pass --tp-degree >= 1")
        if self.dtype is not None and self.dtype not in QUANT_DTYPES:
            raise NeuronforgeError(
                f"unknown weight dtype '{self.dtype}'", f"choose one of: {', '.join(QUANT_DTYPES)} or none"
            )
        if self.qtype not in QUANT_TYPES:
            raise NeuronforgeError(
                f"unknown quantization type '{self.qtype}'", f"choose one of: {', '.join(QUANT_TYPES)}"
            )
        if self.dtype is not None and self.qtype == "per_tensor_symmetric" and self.modules_to_not_convert:
            raise NeuronforgeError(
                "per_tensor_symmetric ignores modules_to_not_convert when NxDI writes the checkpoint but honours it at "
                "runtime, so the listed layers would run on int8/fp8 codes without their scale",
                "use per_channel_symmetric when excluding modules",
            )

    def describe(self, quantized: int, linears: int) -> str:
        """One line for `quantized` of `linears` Linears converted; a conversion that quantized nothing says so."""
        kv = "fp8 e4m3" if self.kv_fp8 else "bf16"
        if self.dtype is None or quantized == 0:
            nothing = "" if self.dtype is None else " (nothing quantized: every Linear is in modules_to_not_convert)"
            return f"bf16 weights{nothing}, {kv} KV cache, tp_degree {self.tp_degree}"
        return (
            f"{self.dtype} {self.qtype} weights: {quantized} of {linears} Linears quantized, "
            f"{linears - quantized} kept bf16, {kv} KV cache, tp_degree {self.tp_degree}"
        )


class EmulateOptions(BaseModel):
    """`neuronforge emulate`: the numerics to emulate (`spec()`) and the held-out text its report scores."""

    model_config = ConfigDict(extra="forbid")

    dtype: QuantDtype | Literal["none"] = Field(
        "int8", description="weight dtype on the device: int8, f8e4m3, f8e5m2 or none (bf16)"
    )
    kv: KvOption = "fp8"
    qtype: QuantTypeOption = "per_channel_symmetric"
    modules_to_not_convert: tuple[str, ...] = ()
    tp_degree: int = Field(
        1, ge=1, description="NeuronCores the compiled model is sharded over (row-parallel rounding)"
    )
    fast_bf16: bool = True
    device: DeviceField = "auto"
    eval_tokens: EvalTokens = 1024
    eval_seq_len: EvalSeqLen = Field(
        256, description="tokens per evaluation window; the second half of each window decodes"
    )

    def spec(self) -> EmulationSpec:
        return EmulationSpec(
            dtype=None if self.dtype == "none" else self.dtype,
            kv=self.kv,
            modules_to_not_convert=self.modules_to_not_convert,
            qtype=self.qtype,
            fast_bf16=self.fast_bf16,
            tp_degree=self.tp_degree,
        )
