"""What each `run` stage records in manifest.json, as a model: the stages write them, the CLI table and the
variant lines read them back by attribute, never by string key. The JSON is what the dicts were before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from neuronforge.pipeline.evaluate.report import VariantResult


class ModelSummary(BaseModel):
    path: str  # the local model folder
    model_type: str | None
    layers: int | None
    hidden_size: int | None
    source: str  # as the config gave it (embedded name, folder or s3:// prefix)

    def note(self, run_dir: Path) -> str:
        return f"{self.model_type}, {self.layers} layers"


class QuantizeSummary(BaseModel):
    modules_to_not_convert: list[str]
    grid_agreement: float | None  # None: nothing was quantized
    naive_agreement: float | None
    value_agreement: float | None
    naive_value_agreement: float | None
    timings: dict[str, float]
    accuracy_target: dict[str, Any] | None = None  # with --target-kl: the chosen point of the frontier
    device: dict[str, Any] = {}  # core/devices.py device_info

    def note(self, run_dir: Path) -> str:
        note = "bf16 blocks: " + (", ".join(self.modules_to_not_convert) or "none")
        if target := self.accuracy_target:
            note += (
                f"; target KL {target['target_kl']:g}: validation {target['validation']['kl']:.5f}, test "
                f"{target['test']['kl']:.5f}, deploys on {target['instance']} (see quantize/checkpoint/frontier.md)"
            )
        return note


class EmulateSummary(BaseModel):
    perplexity: dict[str, dict[str, float]]  # variant ("bf16" | "neuron") -> text -> perplexity
    delta_percent: dict[str, float]  # text -> neuron vs bf16, in percent
    kv_risk: dict[str, int | float]  # {} without an fp8 KV cache
    dtype: str
    kv: str
    tp_degree: int
    tokens_per_text: dict[str, int]
    modules_to_not_convert: list[str]
    quantized_linears: int
    device: dict[str, Any] = {}  # core/devices.py device_info, plus where each variant ran

    def note(self, run_dir: Path) -> str:
        return ""

    def markdown(self) -> str:
        """emulation.md: per held-out text, perplexity in bf16 and under emulated Neuron numerics."""
        kv = "fp8 (e4m3) KV cache" if self.kv == "fp8" else "bf16 KV cache"
        weights = f"{self.dtype} weights"
        if self.quantized_linears == 0:
            weights = "bf16 weights (nothing quantized: every block is in modules_to_not_convert)"
        lines = [
            f"# CPU emulation of Neuron numerics: {weights}, {kv}, tp_degree {self.tp_degree}",
            "",
            "| text | tokens | bf16 ppl | Neuron-emulated ppl | change |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, base in self.perplexity["bf16"].items():
            lines.append(
                f"| {name} | {self.tokens_per_text[name]} | {base:.3f} | "
                f"{self.perplexity['neuron'][name]:.3f} | {self.delta_percent[name]:+.2f}% |"
            )
        kept = ", ".join(self.modules_to_not_convert) or "none"
        lines += ["", f"Blocks kept in bf16 (modules_to_not_convert): {kept}"]
        if self.kv_risk:
            lines.append(f"KV values beyond fp8's +-240 (undefined on Neuron): {json.dumps(self.kv_risk)}")
        return "\n".join(lines) + "\n"


class EvaluateSummary(BaseModel):
    """The report's path plus every field of the EvaluationReport (report.json's content)."""

    model_config = ConfigDict(extra="allow")

    report: str  # relative to the stage's directory
    variants: list[VariantResult]

    def note(self, run_dir: Path) -> str:
        return str(run_dir / "evaluate" / self.report)


class CompileSummary(BaseModel):
    smoke: Any  # neuronforge_compile.json's record, as written by neuron/compile.py
    timings: Any
    sdk: Any

    def note(self, run_dir: Path) -> str:
        return ""


class PackageSummary(BaseModel):
    kind: Literal["endpoint", "compile_input"]
    path: str  # relative to the stage's directory
    next: str  # the command to run next

    def note(self, run_dir: Path) -> str:
        return f"{self.kind}: {run_dir / 'package' / self.path}"


SUMMARIES: dict[str, type[BaseModel]] = {
    "model": ModelSummary,
    "quantize": QuantizeSummary,
    "emulate": EmulateSummary,
    "evaluate": EvaluateSummary,
    "compile": CompileSummary,
    "package": PackageSummary,
}
