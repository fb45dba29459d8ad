"""neuronforge: quantize a Hugging Face causal LM and ship it to AWS Inferentia2/Trainium.

Stage 1 (GPU or CPU) writes a fake-quantized bf16 checkpoint on NxD's exact grid plus the list of
blocks that stay bf16; stage 2 (inf2/trn1) compiles it with NxD Inference. The CPU reference path
emulates Neuron numerics so CI can check stage 2's output without Neuron hardware.
"""

__version__ = "0.1.0"
