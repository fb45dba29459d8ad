"""What the Neuron device computes, on CPU: dtype names, NxD's weight grids, the quantized Linear, the fp8 KV cache and the emulator."""
