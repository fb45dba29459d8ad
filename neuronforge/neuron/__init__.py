"""Neuron stage, by concern: `numerics` (what the device computes, emulated on CPU), `nxdi` (NxD Inference integration,
compile), `planner` (instances, memory, deployment plans) and `host` (can this host run the Neuron stage).

The real Neuron packages (neuronx-distributed-inference, torch-neuronx) are imported lazily and only by the compile
step; everything else here is pure torch.
"""
