"""Cost of each sensitivity method, in units of one forward+backward pass over the calibration set.

The default (`first_order`) must stay within ~3 passes whatever the number of blocks; `measured`
costs one forward pass per block. Prints a table; not a test (timings depend on the machine).

    python benchmarks/bench_sensitivity.py --model smollm2 --nsamples 8 --seqlen 64
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="embedded model name or HF folder")
    parser.add_argument("--dtype", default="int8", choices=["int8", "f8e4m3"])
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--methods", default="variance,first_order,measured")
    args = parser.parse_args()

    import torch

    from neuronforge.assets.models import resolve_model
    from neuronforge.assets.texts import calibration_samples, embedded_splits
    from neuronforge.hf.folders import load_model, load_tokenizer
    from neuronforge.pipeline.quantize.sensitivity import analyze, calibration_batches

    path = resolve_model(args.model)
    model = load_model(path, torch.float32).requires_grad_(True)  # the baseline: a plain whole-model fwd+bwd
    samples = calibration_samples(load_tokenizer(path), embedded_splits().calibration, args.nsamples, args.seqlen)

    def forward_backward() -> float:
        start = time.perf_counter()
        for batch in calibration_batches(samples):
            model(input_ids=batch, labels=batch).loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    forward_backward()  # warm-up: first-call allocation and kernel selection
    baseline = forward_backward()

    print(f"model={path.name} tokens={args.nsamples}x{args.seqlen} torch_threads={torch.get_num_threads()}")
    print(f"{'method':<12} {'seconds':>9} {'x fwd+bwd':>10} {'blocks':>7}  spearman vs measured")
    print(f"{'fwd+bwd':<12} {baseline:>9.2f} {1.0:>10.2f}")
    model.requires_grad_(False)  # as quantize loads it
    for method in args.methods.split(","):
        result = analyze(model, samples, args.dtype, method)
        rho = ", ".join(f"{k}={v:+.3f}" for k, v in result.spearman.items())
        print(f"{method:<12} {result.seconds:>9.2f} {result.seconds / baseline:>10.2f} {len(result.scores):>7}  {rho}")


if __name__ == "__main__":
    main()
