// A full disk during the checkpoint write (issue 20): the run folder sits on an 8 MiB tmpfs in a private mount
// namespace (`unshare -rmpf --mount-proc`, as test/storage.test.ts does); once a checkpoint is complete the test
// fills the disk up to 256 KiB (room for metrics rows and log lines, not for a 1.3 MB checkpoint), so the next
// checkpoint fails while the worker writes its safetensors files. The CLI must say what README's "Nothing lost"
// promises (the fault, the intact last checkpoint, the fix), that checkpoint must verify against its manifest,
// and after space is freed the same command resumes from it and finishes. Then, with no byte left at all, distill
// (whose first write is its lock) and sample (its images) fail with one line naming the fault.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { execa } from "execa";
import { cliEntry, projectRoot, scratchDir } from "./helpers.js";

const work = scratchDir("dmd2-rf-storage-");
const cache = path.join(os.tmpdir(), "dmd2-test-cache");

const script = [
  "set -u",
  'mnt="$1"; out="$2"',
  'mount -t tmpfs -o size=8m tmpfs "$mnt" || { echo \'{"error":"mount failed"}\'; exit 0; }',
  'run="$mnt/run"',
  'args=(distill "$RECIPE" --set "run_dir=$run" --set placement=colocated --set train.steps=30 --set train.checkpoint_every=10 --set train.sample_every=0 --set train.log_every=10)',
  'node "$CLI" "${args[@]}" >"$out/first.out" 2>"$out/first.err" &',
  "pid=$!",
  'for i in $(seq 1 2400); do [ -n "$(ls "$run"/checkpoints/step-*/manifest.json 2>/dev/null)" ] && break; sleep 0.05; done',
  'avail=$(df --output=avail -B1 "$mnt" | tail -1)',
  'dd if=/dev/zero of="$mnt/filler" bs=4096 count=$(( (avail - 262144) / 4096 )) 2>/dev/null',
  "wait $pid; first=$?",
  'ls "$run/checkpoints" >"$out/checkpoints.txt"',
  'node "$VERIFY" "$run" >"$out/verify.json"',
  'rm -f "$mnt/filler"',
  'node "$CLI" "${args[@]}" >"$out/second.out" 2>"$out/second.err"; second=$?',
  // a disk full to the last byte: the lock is the first write of distill, the PNGs are sample's
  'dd if=/dev/zero of="$mnt/filler" bs=4096 2>/dev/null',
  'node "$CLI" "${args[@]}" --set train.steps=40 >"$out/third.out" 2>"$out/third.err"; third=$?',
  'node "$CLI" sample "$run" --num 64 >"$out/sample.out" 2>"$out/sample.err"; sample=$?',
  'echo "{\\"first\\":$first,\\"second\\":$second,\\"third\\":$third,\\"sample\\":$sample}"',
].join("\n");

// Inside the namespace, before the tmpfs goes: the newest complete checkpoint checked against its manifest.
const verify = `
import { listCheckpoints, verifyCheckpoint } from ${JSON.stringify(path.join(projectRoot, "dist", "src", "run", "checkpoints.js"))};
const last = listCheckpoints(process.argv[2]).at(-1);
console.log(JSON.stringify({ last: last?.dir ?? null, bad: last ? verifyCheckpoint(last.dir) : null }));
`;

test("a full disk during the checkpoint write: the promised message, the last checkpoint intact, the rerun resumes", { timeout: 300_000 }, async () => {
  const mnt = mkdtempSync(path.join(work, "mnt-"));
  const out = mkdtempSync(path.join(work, "out-"));
  const scriptFile = path.join(work, "full-disk.sh");
  const verifyFile = path.join(work, "verify.mjs");
  writeFileSync(scriptFile, script);
  writeFileSync(verifyFile, verify);
  const r = await execa("unshare", ["-rmpf", "--mount-proc", "bash", scriptFile, mnt, out], {
    reject: false,
    env: { DMD2_CACHE: cache, NO_COLOR: "1", CLI: cliEntry, VERIFY: verifyFile, RECIPE: path.join(projectRoot, "recipes", "tiny.yaml") },
    timeout: 280_000,
  });
  assert.equal(r.exitCode, 0, `the namespace script failed (unshare -rmpf needs root or user namespaces): ${r.stderr}`);
  const result = JSON.parse(r.stdout.trim().split("\n").at(-1)!) as { first: number; second: number; third: number; sample: number; error?: string };
  assert.equal(result.error, undefined, `could not mount a tmpfs in the namespace: ${r.stderr}`);
  const read = (f: string) => readFileSync(path.join(out, f), "utf8");
  const err = read("first.err");
  assert.equal(result.first, 1, `first run: exit 1 expected, got ${result.first}: ${err}`);
  // the fault hit a checkpoint being written: its .tmp folder is there, after the complete one
  const listed = read("checkpoints.txt").trim().split("\n");
  const complete = listed.filter((l) => !l.endsWith(".tmp"));
  const partial = listed.filter((l) => l.endsWith(".tmp"));
  assert.equal(partial.length, 1, `one checkpoint was being written: ${listed.join(", ")}`);
  const last = complete.at(-1)!;
  assert.ok(Number(partial[0]!.slice(5, 13)) > Number(last.slice(5)), `${partial[0]} comes after ${last}`);
  assert.match(err, /error: cannot write to the run folder .*: no space left on device \(ENOSPC\)/);
  assert.match(err, new RegExp(`the last complete checkpoint .*${last} is intact; free some space and run the same command again to resume`));
  assert.doesNotMatch(err, /internal error|raised SafetensorError|please report|at .*\.js:\d+/);
  const verified = JSON.parse(read("verify.json")) as { last: string; bad: string[] };
  assert.equal(path.basename(verified.last), last);
  assert.deepEqual(verified.bad, [], "the last checkpoint's files match its manifest");
  assert.equal(result.second, 0, `second run: ${read("second.err")}`);
  const second = read("second.err") + read("second.out");
  assert.match(second, new RegExp(`resuming from .*${last} \\(step ${Number(last.slice(5))}\\)`));
  assert.match(second, /done: 30 steps/);
  // a disk with no byte left: distill fails at its first write (the lock), sample at its images; one line each
  const third = read("third.err");
  assert.equal(result.third, 1, third);
  assert.match(third, /^error: cannot write to the run folder .*: no space left on device \(ENOSPC\)\n.*the last complete checkpoint .*step-00000030 is intact; free some space and run the same command again to resume\n?$/);
  const sample = read("sample.err").trim();
  assert.ok(result.sample === 1 || result.sample === 2, sample);
  const errors = sample.split("\n").filter((l) => l.startsWith("error:"));
  assert.equal(errors.length, 1, sample);
  assert.match(errors[0]!, /^error: (cannot write the samples to .*: no space left on device \(ENOSPC\)|.* is not writable \(ENOSPC\): .*\(no space left on device\))$/, sample);
  assert.match(sample, /free some space/, sample);
  assert.doesNotMatch(third + sample, /internal error|raised|please report|at .*\.js:\d+/);
});
