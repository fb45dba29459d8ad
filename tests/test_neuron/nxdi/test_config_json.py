"""kv_quant_config through NxDI's JSON round trip, with NxD's KVQuantizationConfig and NxDI's to_dict (copied into
tests/nxdi_standin from the real source): what NxDI writes fails its own loader; what we write loads back the same."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from neuronforge.errors import NeuronforgeError
from neuronforge.neuron.nxdi.config_json import kv_settings, loadable_kv_quant_config, unloadable_kv_quant_config

STANDIN = Path(__file__).resolve().parents[2] / "nxdi_standin"
FP8_DIRECT = {
    "k_quant_method": "per_tensor_symmetric",
    "v_quant_method": "per_tensor_symmetric",
    "quant_dtype": "float8_e4m3fn",
    "direct_cast": True,
}


@pytest.fixture()
def nxd(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(STANDIN))
    from neuronx_distributed.quantization import quantization_config

    yield quantization_config
    for name in [m for m in sys.modules if m.split(".")[0] in ("neuronx_distributed", "neuronx_distributed_inference")]:
        del sys.modules[name]


def _written_by_nxdi(kv: object) -> dict:
    """What NxDI's InferenceConfig.save puts in neuron_config.json for this object (to_dict + json.dumps)."""
    from neuronx_distributed_inference.models.config import to_dict

    return json.loads(json.dumps(to_dict({"kv": kv})))["kv"]


def test_nxdi_written_json_fails_nxd_and_the_rewrite_loads_back_the_same(nxd: ModuleType) -> None:
    kv = nxd.KVQuantizationConfig(
        k_quant_method=nxd.QuantizationType.PER_TENSOR_SYMMETRIC,
        v_quant_method=nxd.QuantizationType.PER_TENSOR_SYMMETRIC,
        quant_dtype=torch.float8_e4m3fn,
        direct_cast=True,
    )
    written = _written_by_nxdi(kv)
    assert written["k_quant_method"]["_value_"] == "per_tensor_symmetric" and written["quant_dtype"] == "float8_e4m3fn"
    assert "k_quant_method" in (unloadable_kv_quant_config({"kv_quant_config": written}) or "")
    with pytest.raises(AssertionError, match="PER_TENSOR_SYMMETRIC"):
        nxd.KVQuantizationConfig(**written)

    loadable = loadable_kv_quant_config(written, kv_settings(nxd.KVQuantizationConfig()))
    assert loadable == {"direct_cast": True} and unloadable_kv_quant_config({"kv_quant_config": loadable}) is None
    reloaded = nxd.KVQuantizationConfig(**json.loads(json.dumps(loadable)))
    assert reloaded.k_quant_method is reloaded.v_quant_method is nxd.QuantizationType.PER_TENSOR_SYMMETRIC
    assert reloaded.quant_dtype is torch.float8_e4m3fn
    assert kv_settings(reloaded) == kv_settings(kv) == kv_settings(written) == FP8_DIRECT


def test_settings_that_json_cannot_carry_are_refused(nxd: ModuleType) -> None:
    defaults = kv_settings(nxd.KVQuantizationConfig())
    per_channel = _written_by_nxdi(
        nxd.KVQuantizationConfig(k_quant_method=nxd.QuantizationType.PER_CHANNEL_SYMMETRIC, direct_cast=False)
    )
    with pytest.raises(NeuronforgeError, match="k_quant_method='per_channel_symmetric'"):
        loadable_kv_quant_config(per_channel, defaults)
    e5m2 = _written_by_nxdi(nxd.KVQuantizationConfig(quant_dtype=torch.float8_e5m2))
    with pytest.raises(NeuronforgeError, match="quant_dtype='float8_e5m2'"):
        loadable_kv_quant_config(e5m2, defaults)


def test_unloadable_detects_string_dtypes_and_passes_bf16_kv() -> None:
    assert "quant_dtype" in (unloadable_kv_quant_config({"kv_quant_config": {"quant_dtype": "float8_e4m3fn"}}) or "")
    assert unloadable_kv_quant_config({"kv_quant_config": None}) is None
    assert unloadable_kv_quant_config({}) is None
