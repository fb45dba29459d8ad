#!/usr/bin/env bash
# GPU check (issue 14). On a CUDA host: stage 1 on the default model at GPU settings for int8 and f8e4m3
# (through `neuronforge evaluate`, which quantizes RTN+selective, AutoRound and AutoRound+selective and writes
# the accuracy report), then the scale benchmark; prints one table. Meant to finish in under 8 minutes.
# It answers: at GPU settings, does AutoRound beat RTN on held-out KL for int8, as it does for f8e4m3?
#
#   benchmarks/gpu_check.sh [--out DIR]                 # on a CUDA host
#   benchmarks/gpu_check.sh --dry-run [--model DIR] [--dtype int8]   # anywhere: CPU, tiny settings, no scale benchmark
#
# --dry-run proves the script end to end (commands, flags, the table) on the CPU in a minute or two.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
out="gpu-check"
model="smollm2"
dtypes=(int8 f8e4m3)
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --out) out="$2"; shift ;;
    --model) model="$2"; shift ;;
    --dtype) dtypes=("$2"); shift ;;
    *) echo "error: unknown argument $1" >&2; echo "fix: use --dry-run, --out DIR, --model NAME|DIR or --dtype D" >&2; exit 2 ;;
  esac
  shift
done

if [ "$dry" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the CPU path, whatever the host
  settings=(--iters 1 --nsamples 2 --calib-seq-len 32 --eval-tokens 64 --eval-seq-len 32)
else
  if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "error: no CUDA device is visible to torch" >&2
    echo "fix: run on a GPU host with a CUDA build of torch, or pass --dry-run" >&2
    exit 2
  fi
  # quantize's own defaults (the GPU-host settings), and evaluate's full held-out text
  settings=(--iters 50 --nsamples 32 --calib-seq-len 256 --eval-tokens 1024 --eval-seq-len 256)
fi

mkdir -p "$out"
start=$SECONDS
for dtype in "${dtypes[@]}"; do
  "$python" -m neuronforge.cli evaluate --model "$model" --dtype "$dtype" --out "$out/eval-$dtype" "${settings[@]}" \
    > "$out/eval-$dtype.log" 2>&1 || { tail -20 "$out/eval-$dtype.log" >&2; exit 1; }
done
if [ "$dry" = 0 ]; then
  "$python" "$here/bench_scale.py" --repeat 1 --json "$out/scale.json" > "$out/scale.log" 2>&1 || { tail -20 "$out/scale.log" >&2; exit 1; }
fi

"$python" - "$out" "$((SECONDS - start))" "$dry" <<'EOF'
import json
import sys
from pathlib import Path

out, seconds, dry = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
print(f"| dtype | variant | KL to bf16 (nats/token) | top-1 agreement | weights (% of bf16) |")
print("|---|---|---|---|---|")
verdicts = []
for dtype in ("int8", "f8e4m3"):
    if not (out / f"eval-{dtype}" / "report.json").exists():
        continue
    variants = {v["key"]: v for v in json.loads((out / f"eval-{dtype}" / "report.json").read_text())["variants"]}
    for v in variants.values():
        if v["key"] != "bf16":
            print(f"| {dtype} | {v['label']} | {v['kl']:.5f} | {100 * v['agreement']:.2f}% | {v['weight_percent']:.1f} |")
    rtn, tuned = variants["rtn"]["kl"], variants["autoround"]["kl"]
    verdicts.append(f"{dtype}: AutoRound {'beats' if tuned < rtn else 'does not beat'} RTN on held-out KL "
                    f"({tuned:.5f} vs {rtn:.5f}, {100 * (1 - tuned / rtn):+.1f}%)")
scale = out / "scale.json"
if scale.exists():
    print("\n| size | stage | peak RSS | bytes/param | wall | s per 1e9 params |")
    print("|---|---|---|---|---|---|")
    for r in json.loads(scale.read_text()):
        print(f"| {r['size']} | {r['stage']} | {r['peak_rss'] / 1e9:.2f} GB | {r['peak_rss'] / r['params']:.2f} | "
              f"{r['wall_s']:.0f} s | {r['wall_s'] / r['params'] * 1e9:.0f} |")
print()
for line in verdicts:
    print(line)
print(f"{'dry run (CPU, tiny settings: the verdicts mean nothing)' if dry else 'GPU settings'}; {seconds} s in all")
EOF
