// Output details (issue 24): log lines show only the losses computed at their step, a summary line stays after
// the progress bar, --json names each field one way and reports errors as events, --set errors say "--set" once.
import assert from "node:assert/strict";
import { Writable } from "node:stream";
import { test } from "node:test";
import { execa } from "execa";
import { snakeKeys } from "../src/cli/main.js";
import { Reporter } from "../src/run/reporter.js";
import { cliEntry, projectRoot } from "./helpers.js";

function capture(tty: boolean): { stream: NodeJS.WriteStream; text: () => string } {
  let out = "";
  const w = new Writable({
    write(chunk, _enc, cb) {
      out += String(chunk);
      cb();
    },
  }) as unknown as NodeJS.WriteStream & Record<string, unknown>;
  if (tty) Object.assign(w, { isTTY: true, columns: 120, cursorTo: () => true, clearLine: () => true, moveCursor: () => true });
  return { stream: w, text: () => out };
}

const G = { loss_dmd: 0.5, loss_gan_g: 0.25, loss_fake: 0.1, loss_gan_d: 1.4 };
const F = { loss_fake: 0.05, loss_gan_d: 1.3 };

test("plain log lines: a fake-score-only step shows only its own losses; a summary line ends the steps", () => {
  const out = capture(false);
  const r = new Reporter({ mode: "plain", stream: out.stream });
  r.startSteps(3, 0);
  r.step(0, 3, 1, G, true);
  r.step(1, 3, 1, F, true);
  r.step(2, 3, 1, F, true);
  r.endSteps();
  const lines = out.text().trim().split("\n").map((l) => l.slice(20));
  assert.equal(lines[0], "step 1/3 G updates 1 dmd 0.5000 gan_g 0.2500 fake 0.1000 gan_d 1.400");
  assert.equal(lines[1], "step 2/3 G updates 1 fake 0.05000 gan_d 1.300");
  assert.match(lines[3]!, /^trained 3\/3 steps \(3 in \d+\.\d s(, [\d.]+ it\/s)?\), G updates 1; latest losses dmd 0\.5000 gan_g 0\.2500 fake 0\.05000 gan_d 1\.300$/);
  assert.equal(lines.length, 4);
});

test("tty: the summary line is written after the bar is gone", () => {
  const out = capture(true);
  const r = new Reporter({ mode: "tty", stream: out.stream });
  r.startSteps(2, 0);
  r.step(0, 2, 1, G, false);
  r.step(1, 2, 1, F, false);
  r.endSteps();
  const text = out.text();
  const at = text.lastIndexOf("trained 2/2 steps");
  assert.ok(at >= 0, text);
  assert.doesNotMatch(text.slice(at), /steps \|/); // nothing of the bar after it
  assert.ok(text.endsWith("\n"));
  // quiet: no summary
  const q = capture(false);
  const quiet = new Reporter({ mode: "plain", quiet: true, stream: q.stream });
  quiet.startSteps(1, 0);
  quiet.step(0, 1, 1, G, true);
  quiet.endSteps();
  assert.equal(q.text(), "");
});

test("--json: result fields are snake_case like every other event's; an error is a JSON event; --set says --set once", async () => {
  assert.deepEqual(snakeKeys({ runDir: "r", resumedFrom: 6, steps: 12, outDir: "o" }), { run_dir: "r", resumed_from: 6, steps: 12, out_dir: "o" });
  const r = await execa("node", [cliEntry, "distill", "recipes/tiny.yaml", "--json", "--set", "train.stepz=3"], { cwd: projectRoot, reject: false, env: { NO_COLOR: "1" } });
  assert.equal(r.exitCode, 2);
  const events = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(events.length, 1, r.stdout);
  const e = events[0]!;
  assert.equal(e.event, "error");
  assert.equal(e.code, "RECIPE_INVALID");
  assert.equal(e.exit_code, 2);
  assert.equal(e.message, '--set: train.stepz: unknown key (did you mean "steps"?)');
  assert.deepEqual(e.issues, [{ file: "--set", line: null, path: "", message: 'train.stepz: unknown key (did you mean "steps"?)' }]);
  assert.equal(r.stderr.trim(), 'error: --set: train.stepz: unknown key (did you mean "steps"?)');
});
