// Resume that says what it does (issue 20): before `dmd2 distill` resumes a run folder, the new recipe is compared
// with the run's (its recipe.resolved.json, written by the command that trained the checkpoint). Keys that only say
// how long to train, where to run, what to log and what to sample may change, and are listed in one line; a change
// to any other key would continue the checkpoint under another method, data or model than it was trained with, so
// the resume is refused in one line naming those keys and the fix.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { shortenValue, UsageError } from "../errors.js";
import type { Recipe } from "../recipe/types.js";

export const RESOLVED_FILE = "recipe.resolved.json";

/** Dotted keys (or groups, ending in ".") that may change between a checkpoint and its resume. */
const MAY_CHANGE = [
  "version", "name", "run_dir", "python", "torch_threads", "transport", "device", "precision", "tf32", "gradient_checkpointing", "placement",
  "heartbeat.", "join.", "restart.", "sample.", "logging.",
  "train.steps", "train.log_every", "train.checkpoint_every", "train.keep_last", "train.sample_every", "train.on_nonfinite", "train.on_collapse",
];
/** roles.<role>.<key>: where a role runs, how (its precision: a run moved from CPU to a GPU), with how many processes. */
const ROLE_MAY_CHANGE = new Set(["device", "precision", "gradient_checkpointing", "replicas", "backend", "strategy", "join"]);

export function mayChange(key: string): boolean {
  const parts = key.split(".");
  if (parts[0] === "roles" && parts.length === 3) return ROLE_MAY_CHANGE.has(parts[2]!);
  return MAY_CHANGE.some((k) => (k.endsWith(".") ? key.startsWith(k) : key === k));
}

/** What a run resolved before a key existed was trained with, where the key's default says otherwise (issue 23: the
 * warm-up counted each optimizer's updates before optim.warmup_unit, whose default is now steps). */
const TRAINED_WITHOUT_KEY: Record<string, unknown> = { "optim.warmup_unit": "updates", stages: [] };

export interface KeyChange {
  key: string;
  from: unknown;
  to: unknown;
}

function leaves(v: unknown, prefix: string, out: Map<string, unknown>): Map<string, unknown> {
  if (typeof v === "object" && v !== null && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v)) leaves(x, prefix === "" ? k : `${prefix}.${k}`, out);
  } else out.set(prefix, v);
  return out;
}

/**
 * The keys whose values differ between the run's recipe and the new one. A key the run's recipe does not have (a
 * recipe written before that key existed) is not compared: the run was trained without it.
 */
export function recipeChanges(before: unknown, after: unknown): KeyChange[] {
  const a = leaves(before, "", new Map());
  const b = leaves(after, "", new Map());
  // keys added since whose default differs from how older runs behaved: such a run was trained with this value
  for (const [key, value] of Object.entries(TRAINED_WITHOUT_KEY)) if (!a.has(key) && b.has(key)) a.set(key, value);
  const changes: KeyChange[] = [];
  for (const [key, from] of a) {
    const to = b.get(key);
    if (JSON.stringify(from) !== JSON.stringify(to)) changes.push({ key, from, to });
  }
  return changes;
}

type StageList = { from_step: number }[];

/**
 * Stages may change on resume where the checkpoint has not been trained yet (issue 23, docs/recipe.md "Stages"): the
 * stages beginning before its step `step` (the steps 0 .. step-1 it holds) must be the same, in the same order;
 * those from `step` on may be added, changed or removed, since no trained step read them.
 */
export function stagesAgreeBefore(before: unknown, after: unknown, step: number): boolean {
  if (!Array.isArray(before) || !Array.isArray(after) || !Number.isInteger(step)) return false;
  const past = (list: StageList) => JSON.stringify(list.filter((s) => s.from_step < step));
  return past(before as StageList) === past(after as StageList);
}

const show = (v: unknown) => shortenValue(v === undefined ? "(none)" : JSON.stringify(v), 40);
export const describeChanges = (cs: KeyChange[]) => cs.map((c) => `${c.key} ${show(c.from)} -> ${show(c.to)}`).join(", ");

/** The run's recipe, or null for a folder without one (or one that cannot be read: then nothing is compared). */
export function readRunResolved(runDir: string): unknown {
  const file = path.join(runDir, RESOLVED_FILE);
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, "utf8")) as unknown;
  } catch {
    return null;
  }
}

/**
 * Checks `recipe` against the run it resumes from checkpoint `checkpoint`: returns the keys that changed and may
 * (for a one-line note), or throws a UsageError (exit 2) naming the keys that may not.
 */
export function checkResume(recipe: Recipe, checkpoint: string): KeyChange[] {
  const before = readRunResolved(recipe.run_dir);
  if (before === null) return [];
  const changes = recipeChanges(before, recipe);
  const step = Number(/step-(\d+)$/.exec(path.basename(checkpoint))?.[1] ?? Number.NaN);
  const refused = changes.filter((c) => !mayChange(c.key) && !(c.key === "stages" && stagesAgreeBefore(c.from, c.to, step)));
  const pastStages = refused.find((c) => c.key === "stages");
  if (pastStages && refused.length === 1) {
    throw new UsageError(
      `cannot resume ${shortenValue(recipe.run_dir)} from ${path.basename(checkpoint)}: the recipe changes the stages of the ${step} steps it trained (${show(pastStages.from)} -> ${show(pastStages.to)}); ` +
        `stages from step ${step} on may be added or changed, the earlier ones must stay as they were (or add --fresh to start the folder over)`,
      { code: "RESUME_CHANGED" },
    );
  }
  if (refused.length > 0) {
    const dir = shortenValue(recipe.run_dir);
    throw new UsageError(
      `cannot resume ${dir} from ${path.basename(checkpoint)}: the recipe changes what it was trained with: ${describeChanges(refused)}; ` +
        `put ${refused.length === 1 ? "that key" : "those keys"} back, add --fresh to start the folder over (the old one is kept aside as ${dir}.old-<time>), or choose another run_dir`,
      { code: "RESUME_CHANGED" },
    );
  }
  return changes;
}
