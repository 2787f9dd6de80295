#!/usr/bin/env bash
# GPU check: runs the tiny recipe (and a wider variant whose step is compute-bound) with every role on CUDA,
# in both placements, and prints step time, throughput and peak CUDA memory per worker process.
# Usage: DMD2_PYTHON=/path/to/cuda/python scripts/gpu-check.sh [steps]     (a few minutes on one GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-300}
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/dmd2-gpu-check-XXXXXX")
PY=${DMD2_PYTHON:-.venv/bin/python}
DEVICE=${DMD2_CHECK_DEVICE:-cuda}   # cpu: a dry run of this script on a machine without a GPU
if [ "$DEVICE" = cpu ]; then "$PY" -c "import torch; print('torch', torch.__version__, 'cpu (dry run)')"
else "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA in torch ' + torch.__version__; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; fi
node --version

run() { # name placement extra-sets...
  local name=$1 placement=$2; shift 2
  local sets=(--set device="$DEVICE" --set placement="$placement" --set run_dir="$RUNS/$name" --set train.steps="$STEPS"
              --set train.checkpoint_every=100000 --set train.log_every=50)
  for s in "$@"; do sets+=(--set "$s"); done
  local t0=$(date +%s.%N)
  node bin/dmd2.js distill recipes/tiny.yaml "${sets[@]}" > "$RUNS/$name.out"
  local t1=$(date +%s.%N)
  "$PY" - "$RUNS/$name" "$name" "$t0" "$t1" <<'PY'
import json, statistics, sys
run_dir, name, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(l) for l in open(f"{run_dir}/metrics.jsonl")]
recipe = json.load(open(f"{run_dir}/recipe.resolved.json"))
times = sorted(r["step_time_s"] for r in rows[len(rows) // 5:])  # skip the first 20% (warm-up)
med = statistics.median(times)
p90 = times[int(0.9 * (len(times) - 1))]
batch = recipe["train"]["batch_size"]
peaks = {}
for r in rows:
    for k, v in r.items():
        if k.startswith("cuda_peak_mb_") and v is not None:
            peaks[k[len("cuda_peak_mb_"):]] = max(peaks.get(k[len("cuda_peak_mb_"):], 0.0), v)
mem = ", ".join(f"{w} {mb:.0f} MiB" for w, mb in sorted(peaks.items()))
print(f"{name:<24} {recipe['placement']:<10} batch {batch:<4} step median {med*1e3:7.1f} ms  p90 {p90*1e3:7.1f} ms  "
      f"{batch/med:8.0f} samples/s  wall {t1-t0:5.1f} s  peak: {mem}")
PY
}

echo "== dmd2 GPU check: $STEPS steps each; runs in $RUNS"
run tiny-per_role per_role
run tiny-colocated colocated
run wide-per_role per_role teacher.builtin.channels=128 train.batch_size=512 teacher.builtin.train_steps=300
run wide-colocated colocated teacher.builtin.channels=128 train.batch_size=512 teacher.builtin.train_steps=300
echo "== done"
