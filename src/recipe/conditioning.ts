// The two keys resolve.ts derives from the disk so that the step plan (src/schedule/stepPlan.ts) is a pure
// function of the resolved recipe and the step (docs/recipe.md "Resolved form"): `teacher.family`, the name the
// teacher's family goes by, and `teacher.conditioning`, the conditioning step tensors generator.generate makes
// and the other ops read (docs/protocol.md §4).

import { readdirSync } from "node:fs";
import { familyRegistry } from "../families.js";
import { textFamily } from "./teacherFolder.js";
import type { DataSource } from "./types.js";


/** `teacher.family` of the built-in teacher (it has no folder, so it is no registered family). */
export const BUILTIN_FAMILY = "builtin";

/** The registered family of a diffusers folder that is not a text-to-image pipeline: the pixel UNet family, the
 * one that also reads folders without a model_index.json (src/families.ts). */
function pixelFolderFamily(): string {
  const f = [...familyRegistry().families.values()].find((x) => x.folderWithoutModelIndex);
  if (f === undefined) throw new Error(`the family registry ${familyRegistry().file} has no family for UNet folders (folder_without_model_index)`);
  return f.name;
}

/** The teacher's family: `builtin`, the text family of a text-to-image pipeline folder (model_index.json's
 * _class_name), else the pixel UNet family. Reads the folder; the recipe checks (files.ts) have made sure it is a
 * teacher folder. */
export function teacherFamily(teacher: { source: "builtin" | "diffusers"; path: string | null }): string {
  if (teacher.source === "builtin" || teacher.path === null) return BUILTIN_FAMILY;
  return textFamily(teacher.path) ?? pixelFolderFamily();
}

/**
 * The conditioning step tensors: the class labels `cond`; none for an image folder without class subfolders
 * (an unconditional model); with `data.source: prompts`, the text tensors of the teacher's family. Null when
 * prompts go with a family that has no text tensors (the recipe checks refuse that combination first).
 */
export function conditioningFor(source: DataSource, family: string, folderHasClasses: boolean): string[] | null {
  if (source === "folder") return folderHasClasses ? ["cond"] : [];
  if (source !== "prompts") return ["cond"];
  const f = familyRegistry().families.get(family);
  return f !== undefined && f.conditioning === "text" ? f.stepTensors.map((t) => t.name) : null; // the registry (src/families.ts)
}

/**
 * Whether an image folder is class-conditional: class subfolders (the rule of dmd2_worker/data/folder.py; hidden
 * entries skipped) make labels, images directly in it make an unconditional model, which has no `cond` to route.
 * An unreadable folder counts as conditional and the worker reports the problem.
 */
export function folderHasClasses(dir: string | null): boolean {
  if (dir === null) return true;
  try {
    return readdirSync(dir, { withFileTypes: true }).some((e) => e.isDirectory() && !e.name.startsWith("."));
  } catch {
    return true;
  }
}
