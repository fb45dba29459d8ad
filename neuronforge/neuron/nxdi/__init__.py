"""NxD Inference integration: NeuronConfig rules, SDK pins, NxDI's module names, the quantized checkpoint, compile."""
