"""Stand-in for neuronx_distributed_inference.models.config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neuronx_distributed_inference import record


class NeuronConfig:
    def __init__(self, **kwargs: Any) -> None:
        record("NeuronConfig", kwargs=dict(kwargs))
        self.__dict__.update(kwargs)


class InferenceConfig:
    def __init__(
        self, neuron_config: NeuronConfig, load_config: Callable[[InferenceConfig], None] | None = None
    ) -> None:
        record("InferenceConfig", neuron_config=neuron_config)
        self.neuron_config = neuron_config
        if load_config is not None:
            load_config(self)
