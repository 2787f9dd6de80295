// What `dmd2 eval` is given: each path is a diffusers teacher folder or a dmd2 distill run folder. Each says
// which data it learnt (a run: its recipe.resolved.json; a teacher: dmd2_teacher.json, when it has one), and
// the evaluation needs one data source for all of them.

import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { UsageError } from "../errors.js";
import { showPath } from "../recipe/files.js";
import { dataSchema } from "../recipe/schema.js";
import { family as familyInfo } from "../families.js";
import { looksLikeTeacherFolder, readTeacherData, TEACHER_META, textFamily } from "../recipe/teacherFolder.js";
import type { DataConfig } from "../recipe/types.js";
import { checkSchema } from "../recipe/validate.js";
import { readRunRecipe } from "../run/sample.js";

export interface Target {
  kind: "teacher" | "student";
  /** absolute */
  dir: string;
  /** the data it learnt, when the folder says */
  data: DataConfig | null;
  /** a distilled run's generator.steps (null for a teacher) */
  generatorSteps: number | null;
}

/** A data group read from a file the CLI did not write just now: checked, defaults filled (older runs lack `folder`). */
function checkedData(raw: unknown, file: string): DataConfig {
  const { value, problems } = checkSchema({ data: raw }, { kind: "group", fields: { data: dataSchema } });
  if (problems.length > 0) {
    const p = problems[0]!;
    throw new UsageError(`${showPath(file)}: ${p.path.join(".")}: ${p.message}`, { code: "EVAL_DATA" });
  }
  return value.data as DataConfig;
}

/** Text-to-image models are not scored: FD and class accuracy here need an image data set the model learnt. */
const NO_TEXT = "dmd2 eval scores models of an image data set (gmm, digits, folder); text-to-image runs and pipelines are not scored yet: look at their images with dmd2 sample <run> --prompt TEXT";

export function readTarget(given: string): Target {
  const dir = path.resolve(given);
  if (!existsSync(dir)) throw new UsageError(`${given} does not exist (give a teacher folder or the run_dir of a dmd2 distill run)`);
  if (!statSync(dir).isDirectory()) throw new UsageError(`${given} is not a folder (give a teacher folder or the run_dir of a dmd2 distill run)`);
  if (existsSync(path.join(dir, "recipe.resolved.json"))) {
    const recipe = readRunRecipe(dir);
    if ((recipe.data as { source?: unknown } | undefined)?.source === "prompts") throw new UsageError(`${given}: a text-to-image run (data.source prompts): ${NO_TEXT}`, { code: "EVAL_DATA" });
    const steps = (recipe.generator as { steps?: unknown } | undefined)?.steps;
    return {
      kind: "student",
      dir,
      data: checkedData(recipe.data, path.join(dir, "recipe.resolved.json")),
      generatorSteps: typeof steps === "number" && Number.isInteger(steps) && steps >= 1 ? steps : null,
    };
  }
  const family = textFamily(dir);
  if (family !== null) throw new UsageError(`${given}: a text-to-image pipeline (${familyInfo(family).pipelineClasses[0]}): ${NO_TEXT.replace(" <run> --prompt TEXT", " on a run distilled from it")}`, { code: "EVAL_DATA" });
  if (looksLikeTeacherFolder(dir)) {
    const meta = readTeacherData(dir);
    if (meta !== null && "error" in meta) throw new UsageError(`${meta.error}: the teacher folder is damaged`);
    return { kind: "teacher", dir, data: meta === null ? null : checkedData(meta.data, path.join(dir, TEACHER_META)), generatorSteps: null };
  }
  throw new UsageError(`${given} is neither a teacher folder (model_index.json or unet/) nor a dmd2 run folder (recipe.resolved.json)`);
}

/** The same object whatever the order of its keys. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (typeof v === "object" && v !== null) {
    return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(",")}}`;
  }
  return JSON.stringify(v);
}

/** One line about a data group, for messages. */
function describeData(d: DataConfig): string {
  if (d.source === "gmm") return `gmm (${d.gmm.num_classes} classes, ${d.gmm.image_size}x${d.gmm.image_size}, std ${d.gmm.std})`;
  if (d.source === "folder") return `folder ${d.folder.path} (${d.folder.channels} channel${d.folder.channels === 1 ? "" : "s"})`;
  return "digits";
}

/** The data to evaluate against: --data-from's when given, else the one data group the targets agree on. */
export function chooseData(targets: readonly Target[], dataFrom: DataConfig | null): DataConfig {
  if (dataFrom !== null) return dataFrom;
  const known = targets.filter((t): t is Target & { data: DataConfig } => t.data !== null);
  if (known.length === 0) {
    const names = targets.map((t) => showPath(t.dir)).join(", ");
    throw new UsageError(`${names}: no ${TEACHER_META} says which data the model learnt: name it with --data-from <recipe>`, { code: "EVAL_DATA" });
  }
  const first = known[0]!;
  const other = known.find((t) => canonical(t.data) !== canonical(first.data));
  if (other !== undefined) {
    throw new UsageError(
      `the models learnt different data (${showPath(first.dir)}: ${describeData(first.data)}; ${showPath(other.dir)}: ${describeData(other.data)}): choose one with --data-from <recipe>`,
      { code: "EVAL_DATA" },
    );
  }
  return first.data;
}
