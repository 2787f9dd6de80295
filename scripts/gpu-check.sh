#!/usr/bin/env bash
# GPU check (issue 6): runs the tiny recipe, a wider compute-bound variant of it and the digits recipe (teacher
# trained on the GPU first) with every role on CUDA, in fp32 and bf16, in both placements, with gradient
# checkpointing and with 2 gloo replicas per trained role; prints step time, throughput and peak CUDA memory
# per worker process, and the last losses (to see that bf16 trains).
# Usage: DMD2_PYTHON=/path/to/cuda/python scripts/gpu-check.sh [steps]      (default 100 steps: about 4 minutes on one
#        H100, estimated from a 200-step run of every configuration, which took 6.5 minutes with DMD2_CHECK_FULL=1)
#        DMD2_CHECK_DEVICE=cpu scripts/gpu-check.sh 4                        (a dry run of the script on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-100}
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/dmd2-gpu-check-XXXXXX")
PY=${DMD2_PYTHON:-.venv/bin/python}
DEVICE=${DMD2_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then "$PY" -c "import torch; print('torch', torch.__version__, 'cpu (dry run)')"
else "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA in torch ' + torch.__version__; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; fi
node --version
T0=$(date +%s)

report() { # run_dir name wall_s
  "$PY" - "$@" <<'PY'
import json, statistics, sys
run_dir, name, wall = sys.argv[1], sys.argv[2], float(sys.argv[3])
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
mem = ", ".join(f"{w} {mb:.0f}" for w, mb in sorted(peaks.items())) or "-"
last = {k: rows[-1].get(k) for k in ("loss_dmd", "loss_fake")}
for r in reversed(rows):
    if r.get("loss_dmd") is not None:
        last["loss_dmd"] = r["loss_dmd"]; break
losses = " ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} -" for k, v in last.items())
print(f"{name:<28} {recipe['placement']:<9} {recipe['precision']:<4} batch {batch:<4} median {med*1e3:7.1f} ms  "
      f"p90 {p90*1e3:7.1f} ms  {batch/med:8.0f} samples/s  wall {wall:5.1f} s  peak MiB: {mem}  | {losses}", flush=True)
PY
}

run() { # name recipe extra-sets...       (DMD2_CHECK_ONLY=<regex>: only the runs whose name matches)
  local name=$1 recipe=$2; shift 2
  if [ -n "${DMD2_CHECK_ONLY:-}" ] && ! [[ $name =~ $DMD2_CHECK_ONLY ]]; then return 0; fi
  local sets=(--set device="$DEVICE" --set run_dir="$RUNS/$name" --set train.steps="$STEPS"
              --set train.checkpoint_every=100000 --set train.log_every=50 --set train.sample_every=0)
  for s in "$@"; do sets+=(--set "$s"); done
  local t0=$(date +%s.%N)
  if ! node bin/dmd2.js distill "$recipe" "${sets[@]}" > "$RUNS/$name.out" 2>&1; then
    echo "$name FAILED:"; tail -5 "$RUNS/$name.out"; return 0
  fi
  local t1=$(date +%s.%N)
  report "$RUNS/$name" "$name" "$(awk "BEGIN{print $t1 - $t0}")"
}

echo "== dmd2 GPU check: $STEPS steps each; runs in $RUNS"
DEV0=$([ "$DEVICE" = cpu ] && echo cpu || echo cuda:0)
WIDE=(teacher.builtin.channels=128 train.batch_size=512 teacher.builtin.train_steps=300)
FULL=${DMD2_CHECK_FULL:-0}   # 1: also the fp32 baselines of tiny and digits (about 6.5 minutes at 200 steps)
if [ "$FULL" = 1 ]; then
run tiny-per_role-fp32       recipes/tiny.yaml placement=per_role
run tiny-colocated-fp32      recipes/tiny.yaml placement=colocated
fi
run tiny-per_role-bf16       recipes/tiny.yaml placement=per_role precision=bf16
run tiny-colocated-bf16      recipes/tiny.yaml placement=colocated precision=bf16
run wide-per_role-fp32       recipes/tiny.yaml placement=per_role "${WIDE[@]}"
run wide-colocated-fp32      recipes/tiny.yaml placement=colocated "${WIDE[@]}"
run wide-per_role-bf16       recipes/tiny.yaml placement=per_role precision=bf16 tf32=true "${WIDE[@]}"
run wide-colocated-bf16      recipes/tiny.yaml placement=colocated precision=bf16 tf32=true "${WIDE[@]}"
run wide-per_role-bf16-ckpt  recipes/tiny.yaml placement=per_role precision=bf16 gradient_checkpointing=true "${WIDE[@]}"
# two ranks per trained role on the one GPU (gloo: NCCL needs one GPU per rank)
run wide-per_role-2replicas  recipes/tiny.yaml placement=per_role precision=bf16 "${WIDE[@]}" \
    roles.generator.replicas=2 roles.generator.backend=gloo roles.generator.device="$DEV0" \
    roles.fake_score.replicas=2 roles.fake_score.backend=gloo roles.fake_score.device="$DEV0"

# digits: a teacher trained here (shortened), then the 4-step recipe
TEACHER_STEPS=$(( STEPS * 10 ))
t0=$(date +%s.%N)
if [ -n "${DMD2_CHECK_ONLY:-}" ] && ! [[ digits =~ $DMD2_CHECK_ONLY ]]; then :
elif node bin/dmd2.js train-teacher recipes/digits-teacher.yaml --set device="$DEVICE" --set train.steps="$TEACHER_STEPS" \
     --set out="$RUNS/digits-teacher" > "$RUNS/digits-teacher.out" 2>&1; then
  echo "digits teacher: $TEACHER_STEPS steps in $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $t0}") s"
  run digits-per_role-bf16   recipes/digits.yaml placement=per_role precision=bf16 teacher.path="$RUNS/digits-teacher"
  run digits-colocated-bf16  recipes/digits.yaml placement=colocated precision=bf16 teacher.path="$RUNS/digits-teacher"
  if [ "$FULL" = 1 ]; then run digits-colocated-fp32  recipes/digits.yaml placement=colocated teacher.path="$RUNS/digits-teacher"; fi
else
  echo "digits teacher FAILED:"; tail -5 "$RUNS/digits-teacher.out"
fi
echo "== done in $(( $(date +%s) - T0 )) s"
