"""Neuron stage: NxD-exact quantizer, CPU emulation of Neuron numerics, NeuronConfig, compile.

The real Neuron packages (neuronx-distributed-inference, torch-neuronx) are imported lazily and
only by the compile step; everything else here is pure torch.
"""
