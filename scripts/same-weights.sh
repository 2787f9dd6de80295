#!/usr/bin/env bash
# Do two checkouts train the same thing? Runs, in each, a short digits teacher (300 steps) and the 1-step and
# 4-step digits students on it (100 steps each, colocated, one thread), then compares the sha256 of every weight,
# optimizer-state and sample file. Equal hashes: the change under test left training bit for bit as it was.
# Usage: scripts/same-weights.sh <checkout A> <checkout B> [work folder]   (each checkout built: npm run build)
# e.g.  git worktree add /tmp/base <old commit> && (cd /tmp/base && ln -s "$PWD/../main/node_modules" . && npm run build)
set -euo pipefail
A=$(cd "$1" && pwd); B=$(cd "$2" && pwd); WORK=${3:-$(mktemp -d -t dmd2-same-weights-XXXXXX)}
run() { # checkout out
  local out=$2
  rm -rf "$out"; mkdir -p "$out"
  (cd "$1" && export HF_HUB_OFFLINE=1 PYTHONPATH="$1/python-worker" \
    && node bin/dmd2.js train-teacher recipes/digits-teacher.yaml --out "$out/teacher" --set train.steps=300 --set torch_threads=1 -q >/dev/null \
    && for r in digits-1step digits; do
         node bin/dmd2.js distill recipes/$r.yaml --set run_dir="$out/$r" --set teacher.path="$out/teacher" \
           --set placement=colocated --set torch_threads=1 --set train.steps=100 --set train.checkpoint_every=100 -q >/dev/null
       done)
  (cd "$out" && find . -name "*.safetensors" | sort | xargs sha256sum)
}
run "$A" "$WORK/a" > "$WORK/a.sha256"
run "$B" "$WORK/b" > "$WORK/b.sha256"
if diff "$WORK/a.sha256" "$WORK/b.sha256"; then echo "same weights: $(wc -l < "$WORK/a.sha256") files identical ($WORK)"; else echo "weights differ ($WORK)"; exit 1; fi
