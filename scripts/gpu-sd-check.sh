#!/usr/bin/env bash
# GPU check for SD-sized models (issue 4): builds SD 1.5- and SDXL-sized pipeline folders from the published
# configurations with random weights (scripts/sd_pipelines.py: nothing is downloaded), then runs a few `dmd2 distill`
# steps of recipes/sd15-1step.yaml, recipes/sdxl-4step.yaml and (when it exists) recipes/sdxl-4step-lora.yaml on them
# in bf16, one worker process per role, on a prompts file and a handful of random captioned images written here.
# Prints per run: median step time after warm-up (and apart: steps with and without a generator update), peak CUDA
# MiB per worker process, the last losses. A failed run prints the tail of its log; the next run goes on.
#
# Usage: DMD2_PYTHON=/path/to/cuda/python scripts/gpu-sd-check.sh [steps]      (default 6 steps per recipe)
#        DMD2_CHECK_DEVICE=cpu scripts/gpu-sd-check.sh 2      (a dry run on the CPU with the TINY test pipelines: the
#                                                              whole script path, 45-60 s on 2 cores; test/gpu-sd-check)
# Environment:
#   DMD2_CHECK_BATCH=2       train.batch_size (each role's batch: one replica per role)
#   DMD2_CHECK_GPUS=N        GPUs the roles spread over (default: those visible, at most 3): 1: every role on
#                            cuda:0; 2: teacher and generator on cuda:0, fake score on cuda:1; 3: one each
#   DMD2_CHECK_ONLY=REGEX    only the runs whose name matches (sd15-1step, sdxl-4step, sdxl-4step-lora)
#   DMD2_CHECK_SETS="k=v .." more --set overrides for every run (e.g. "ttur.ratio=2 gradient_checkpointing=false")
#   DMD2_CHECK_SIZE=full|tiny  the pipelines' size (default: full on cuda, tiny on cpu)
#   DMD2_CHECK_DIR=DIR       where the pipelines (SDXL: ~6.9 GB in fp16) and runs go (default: a new folder in $TMPDIR)
#   DMD2_CHECK_KEEP=1        keep that folder (default: removed at the end unless DMD2_CHECK_DIR was given)
#   DMD2_CHECK_FINAL_CHECKPOINT=1  let each run write its end-of-run checkpoint (see below)
#   DMD2_CHECK_FORCE=1       run sdxl-4step even when every role shares one GPU of less than 100 GiB (see below)
#
# Memory, roughly, before activations (weights, gradients and AdamW moments stay float32 under bf16 autocast): a
# fully trained UNet costs 16 bytes per parameter. SD 1.5 (UNet 0.86B): ~14 GB per trained role, ~3.4 GB for the
# teacher's UNet, ~32 GB in all: one 80 GB GPU holds every role. SDXL (UNet 2.57B, text encoders 0.82B): ~41 GB per
# trained role (+3.6 GB of text encoders and VAE in the generator), ~10 GB for the teacher's UNet, ~96 GB in all: on
# one GPU of less than 100 GiB sdxl-4step is skipped (it fits a 141 GB H200, or 2-3 GPUs); sdxl-4step-lora trains
# 191M adapter parameters on a frozen UNet instead of the generator's whole UNet: ~68 GB in all.
#
# Checkpoints: `dmd2 distill` always writes a checkpoint at its last step and then samples a grid; the recipes have
# no key to turn that off. For SDXL that checkpoint is ~62 GB (both trained UNets with their AdamW moments, float32),
# more than some GPU boxes' disks. Unless DMD2_CHECK_FINAL_CHECKPOINT=1, the script puts a plain file named
# `checkpoints` in the run folder once the run has started (after it looked for checkpoints to resume from), so the
# final checkpoint fails to be written; a run whose metrics have every step is then counted as done ("end-of-run
# checkpoint skipped"), and its end-of-run sampling does not happen.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
PY=${DMD2_PYTHON:-.venv/bin/python}
DEVICE=${DMD2_CHECK_DEVICE:-cuda}
BATCH=${DMD2_CHECK_BATCH:-2}
SIZE=${DMD2_CHECK_SIZE:-$([ "$DEVICE" = cpu ] && echo tiny || echo full)}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 NO_COLOR=1
if [ -n "${DMD2_CHECK_DIR:-}" ]; then WORK=$DMD2_CHECK_DIR; mkdir -p "$WORK"; KEEP=${DMD2_CHECK_KEEP:-1}
else WORK=$(mktemp -d "${TMPDIR:-/tmp}/dmd2-gpu-sd-check-XXXXXX"); KEEP=${DMD2_CHECK_KEEP:-0}; fi
if [ "$KEEP" != 1 ]; then trap 'rm -rf "$WORK"' EXIT; fi

if [ "$DEVICE" = cpu ]; then
  "$PY" -c "import torch; print('torch', torch.__version__, 'cpu (dry run)')"
  GPUS=0 MEM0=0
else
  "$PY" -c "
import torch
assert torch.cuda.is_available(), 'no CUDA in torch ' + torch.__version__
print('torch', torch.__version__, 'CUDA', torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f'  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB')"
  GPUS=${DMD2_CHECK_GPUS:-$("$PY" -c "import torch; print(min(3, torch.cuda.device_count()))")}
  MEM0=$("$PY" -c "import torch; print(int(torch.cuda.get_device_properties(0).total_memory / 2**30))")
fi
node --version
T0=$(date +%s)
case "$GPUS" in
  0) ROLE_DEV=(cpu cpu cpu) ;;
  1) ROLE_DEV=(cuda:0 cuda:0 cuda:0) ;;
  2) ROLE_DEV=(cuda:0 cuda:0 cuda:1) ;;
  *) ROLE_DEV=(cuda:0 cuda:1 cuda:2) ;;
esac
echo "== dmd2 GPU check for SD-sized models: $SIZE pipelines, $STEPS steps per recipe, batch $BATCH, bf16, per_role" \
     "(teacher ${ROLE_DEV[0]}, generator ${ROLE_DEV[1]}, fake score ${ROLE_DEV[2]}); work folder $WORK"

wanted() { [ -z "${DMD2_CHECK_ONLY:-}" ] || [[ $1 =~ $DMD2_CHECK_ONLY ]]; }

# --- data: prompts (one longer than CLIP's 77 tokens, to exercise the truncation) and a few captioned images ---
mkdir -p "$WORK/data"
cat > "$WORK/data/prompts.txt" <<'EOF'
# prompts for the GPU check (the tokenizer is a tiny printable-ASCII vocabulary: most characters are one token)
a photo of a cat
the dog on a mat
a watercolor painting of a lighthouse at dusk
an astronaut riding a horse on the moon, highly detailed
a bowl of fruit on a wooden table, soft morning light
a red bicycle leaning against a brick wall
a very long prompt that goes on and on, well past the seventy-seven tokens that the CLIP text encoders read, so that it has to be cut: mountains, rivers, clouds, a small village, people walking, a market, lanterns, evening
EOF

# --- the pipelines (one process builds both, on the device the teacher runs on: SDXL's random initialisation takes
# minutes on a CPU) and the images ---
PAIRS=()
for family in sd15 sdxl; do
  if [ "$family" = sd15 ]; then wanted sd15-1step || continue
  else { wanted sdxl-4step || wanted sdxl-4step-lora; } || continue; fi
  if [ -f "$WORK/$family-$SIZE/model_index.json" ]; then echo "$family: reusing $WORK/$family-$SIZE"
  else PAIRS+=("$family" "$WORK/$family-$SIZE"); fi
done
if [ ${#PAIRS[@]} -gt 0 ] || [ ! -d "$WORK/data/images" ]; then
  if "$PY" scripts/sd_pipelines.py build "${PAIRS[@]}" --size "$SIZE" --dtype fp16 --device "${ROLE_DEV[0]}" \
       --images "$WORK/data/images" > "$WORK/build.out" 2>&1; then grep -E '^(sd15|sdxl) ' "$WORK/build.out" || true
  else echo "building the pipelines FAILED:"; tail -15 "$WORK/build.out"; fi
fi

report() { # run_dir name wall_s rc log blocked(0/1)
  "$PY" - "$@" <<'PY'
import json, statistics, sys
from pathlib import Path
run_dir, name, wall, rc, log = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
blocked = sys.argv[6] == "1"
tail = open(log, errors="replace").read().splitlines()[-15:]
rows = [json.loads(l) for l in open(run_dir / "metrics.jsonl")] if (run_dir / "metrics.jsonl").exists() else []
recipe = json.load(open(run_dir / "recipe.resolved.json"))
steps = recipe["train"]["steps"]
if len(rows) < steps:
    print(f"{name} FAILED after {len(rows)} of {steps} steps (exit {rc}):")
    print("\n".join(tail), flush=True)
    sys.exit(0)
warm = max(1, len(rows) // 3)   # the first third (at least the first step) is warm-up: CUDA init, cuDNN autotune
timed = rows[warm:]
ms = lambda rs: statistics.median(r["step_time_s"] for r in rs) * 1e3
gen = [r for r in timed if r.get("generator_update")]
fake = [r for r in timed if not r.get("generator_update")]
parts = [f"fake score only {ms(fake):.0f} ms ({len(fake)})" if fake else None,
         f"with generator update {ms(gen):.0f} ms ({len(gen)})" if gen else
         f"generator update only in warm-up: step 1 {rows[0]['step_time_s'] * 1e3:.0f} ms"]
peaks = {}
for r in rows:
    for k, v in r.items():
        if k.startswith("cuda_peak_mb_") and v is not None:
            peaks[k[13:]] = max(peaks.get(k[13:], 0.0), v)
mem = ", ".join(f"{w} {mb:,.0f}" for w, mb in sorted(peaks.items())) or "- (no CUDA)"
last = {}
for r in rows:   # the latest value of each loss (the generator's come from its update steps)
    for k, v in r.items():
        if k.startswith("loss") and isinstance(v, (int, float)):
            last[k] = v
losses = " ".join(f"{k} {v:.4g}" for k, v in sorted(last.items())) or "-"
skipped = sum(r.get(k) or 0 for r in rows for k in ("skipped_nonfinite", "skipped_nonfinite_fake"))  # on_nonfinite: skip
setup = wall - sum(r["step_time_s"] for r in rows)
if rc == 0:
    note = ""
elif blocked and any("checkpoints/step-" in line for line in tail[-4:]):
    note = "  (end-of-run checkpoint skipped, as intended)"
else:
    err = next((l for l in reversed(tail) if "error" in l.lower()), tail[-1] if tail else "")
    note = f"  exit {rc} after every step: {err}"
print(f"{name:<16} batch {recipe['train']['batch_size']}  median {ms(timed):.0f} ms over steps {warm + 1}-{len(rows)} "
      f"[{'; '.join(p for p in parts if p)}]  set-up and end {setup:.0f} s{note}", flush=True)
print(f"{'':<16} peak CUDA MiB: {mem}  | {losses}" + (f"  skipped_nonfinite {skipped}" if skipped else ""), flush=True)
PY
}

run() { # name recipe family
  local name=$1 recipe=$2 family=$3 dir="$WORK/runs/$1"
  if ! wanted "$name"; then return 0; fi
  if [ ! -f "$recipe" ]; then echo "$name: $recipe not found, skipped"; return 0; fi
  if [ ! -f "$WORK/$family-$SIZE/model_index.json" ]; then echo "$name: no $family pipeline, skipped"; return 0; fi
  if [ "$name" = sdxl-4step ] && [ "$SIZE" = full ] && [ "$GPUS" = 1 ] && [ "$MEM0" -lt 100 ] \
     && [ "${DMD2_CHECK_FORCE:-0}" != 1 ]; then
    echo "$name: skipped: two trained SDXL UNets with AdamW and the teacher hold ~96 GB before activations; cuda:0 has" \
         "$MEM0 GiB (DMD2_CHECK_GPUS=2 or 3 spreads the roles over more GPUs; DMD2_CHECK_FORCE=1 tries anyway)"
    return 0
  fi
  local sets=(--set name="$name" --set run_dir="$dir" --set device="$DEVICE" --set placement=per_role
              --set precision=bf16 --set teacher.path="$WORK/$family-$SIZE"
              --set data.prompts.file="$WORK/data/prompts.txt" --set data.prompts.images="$WORK/data/images"
              --set train.steps="$STEPS" --set train.batch_size="$BATCH" --set train.log_every=1
              --set train.checkpoint_every=1000000 --set train.sample_every=0 --set sample.num=1
              --set roles.teacher.device="${ROLE_DEV[0]}" --set roles.generator.device="${ROLE_DEV[1]}"
              --set roles.fake_score.device="${ROLE_DEV[2]}"
              --set 'stages=[]')  # every op of a step: sd15-1step.yaml's first stage has the GAN off
  for s in ${DMD2_CHECK_SETS:-}; do sets+=(--set "$s"); done
  rm -rf "$dir"; mkdir -p "$WORK/runs"
  local t0 rc=0 blocked=0
  t0=$(date +%s.%N)
  node bin/dmd2.js distill "$recipe" "${sets[@]}" > "$dir.out" 2>&1 &
  local pid=$!
  if [ "${DMD2_CHECK_FINAL_CHECKPOINT:-0}" != 1 ]; then
    blocked=1
    # recipe.resolved.json is written once the recipe is checked against the run folder and the workers are set
    # up (the resume decision is made by then, on an empty checkpoints/); the first checkpoint comes after every
    # step: a file in place of the empty checkpoints/ folder makes that write fail on purpose
    while kill -0 "$pid" 2> /dev/null && [ ! -f "$dir/recipe.resolved.json" ]; do sleep 0.02; done
    if kill -0 "$pid" 2> /dev/null; then
      if [ -d "$dir/checkpoints" ]; then rmdir "$dir/checkpoints" 2> /dev/null || true; fi
      if [ ! -e "$dir/checkpoints" ]; then : > "$dir/checkpoints"; fi
    fi
  fi
  wait "$pid" || rc=$?
  if [ ! -f "$dir/recipe.resolved.json" ]; then echo "$name FAILED (exit $rc):"; tail -15 "$dir.out"; return 0; fi
  report "$dir" "$name" "$(awk "BEGIN{print $(date +%s.%N) - $t0}")" "$rc" "$dir.out" "$blocked"
}

run sd15-1step recipes/sd15-1step.yaml sd15
run sdxl-4step recipes/sdxl-4step.yaml sdxl
run sdxl-4step-lora recipes/sdxl-4step-lora.yaml sdxl
echo "== done in $(( $(date +%s) - T0 )) s"
