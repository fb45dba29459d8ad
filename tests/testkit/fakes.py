"""Fake artifacts shaped like the real ones, for tests that need one without running its producer."""

from __future__ import annotations

import json
import os
from pathlib import Path


def make_compiled(root: Path, tp_degree: int = 2, dtype: str = "int8") -> Path:
    """An NxDI-shaped compiled directory: model.pt, neuron_config.json (NxDI's nested form) and sharded weights."""
    compiled = root / "compiled-src"
    (compiled / "weights").mkdir(parents=True)
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
        }
    }
    (compiled / "neuron_config.json").write_text(json.dumps(config))
    return compiled
