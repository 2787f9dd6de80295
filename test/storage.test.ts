// Storage faults (issue 5): a disk that fills up during a run. The run folder sits on a small tmpfs mounted in a
// private mount namespace (`unshare -rmpf --mount-proc`: as root or as a user with user
// namespaces; its own PID namespace, so a left-over worker would show); once the first checkpoint
// is complete the test fills the disk, so the next write fails. The CLI must stop with one clear line, exit 1,
// leave no worker behind, and keep the previous checkpoint intact: after space is freed, the same command
// resumes from it and finishes.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-storage-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache");

// Runs inside the namespace; prints one JSON line with what happened.
const script = [
  'set -u',
  'mnt="$1"; out="$2"',
  'mount -t tmpfs -o size=8m tmpfs "$mnt" || { echo \'{"error":"mount failed"}\'; exit 0; }',
  'run="$mnt/run"',
  'args=(distill "$RECIPE" --set "run_dir=$run" --set train.steps=600 --set train.checkpoint_every=100 --set train.sample_every=0 --set train.log_every=50)',
  'node "$CLI" "${args[@]}" >"$out/first.out" 2>"$out/first.err" &',
  'pid=$!',
  'for i in $(seq 1 1200); do [ -f "$run/checkpoints/step-00000100/manifest.json" ] && break; sleep 0.05; done',
  'dd if=/dev/zero of="$mnt/filler" bs=64k 2>/dev/null',
  'wait $pid; first=$?',
  'ls "$run/checkpoints" >"$out/checkpoints.txt"',
  'pgrep -f "dmd2_worker" >"$out/leftover.txt"',
  'rm -f "$mnt/filler"',
  'node "$CLI" "${args[@]}" >"$out/second.out" 2>"$out/second.err"; second=$?',
  'echo "{\\"first\\":$first,\\"second\\":$second}"',
].join("\n");

test("storage: a disk that fills up mid-run stops with a clear error and keeps the last checkpoint; the rerun resumes", { timeout: 300_000 }, async () => {
  const mnt = mkdtempSync(path.join(work, "mnt-"));
  const out = mkdtempSync(path.join(work, "out-"));
  const scriptFile = path.join(work, "full-disk.sh");
  writeFileSync(scriptFile, script);
  const r = await execa("unshare", ["-rmpf", "--mount-proc", "bash", scriptFile, mnt, out], {
    reject: false,
    env: { DMD2_CACHE: cache, NO_COLOR: "1", CLI: cliEntry, RECIPE: path.join(projectRoot, "recipes", "tiny.yaml") },
    timeout: 280_000,
  });
  assert.equal(r.exitCode, 0, `the namespace script failed (unshare -rmpf needs root or user namespaces): ${r.stderr}`);
  const result = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { first: number; second: number; error?: string };
  assert.equal(result.error, undefined, `could not mount a tmpfs in the namespace: ${r.stderr}`);
  const read = (f: string) => readFileSync(path.join(out, f), "utf8");
  const err = read("first.err");
  assert.equal(result.first, 1, `first run: exit 1 expected, got ${result.first}: ${err}`);
  assert.match(err, /error: cannot write to the run folder .*: no space left on device \(ENOSPC\)/);
  assert.match(err, /last complete checkpoint .*step-00000100 is intact; free some space and run the same command again to resume/);
  assert.doesNotMatch(err, /internal error|at .*\.js:\d+/, "no stack trace, no internal error");
  assert.equal(read("leftover.txt").trim(), "", "no worker process is left behind");
  assert.deepEqual(read("checkpoints.txt").trim().split("\n").filter((l) => !l.endsWith(".tmp")), ["step-00000100"]);
  assert.equal(result.second, 0, `second run: ${read("second.err")}`);
  assert.match(read("second.err") + read("second.out"), /resuming from .*step-00000100 \(step 100\)/);
  assert.match(read("second.err") + read("second.out"), /done: 600 steps/);
});
