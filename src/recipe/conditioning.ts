// The two keys resolve.ts derives from the disk so that the step plan (src/schedule/stepPlan.ts) is a pure
// function of the resolved recipe and the step (docs/recipe.md "Resolved form"): `teacher.family`, the name the
// teacher's family goes by, and `teacher.conditioning`, the conditioning step tensors generator.generate makes
// and the other ops read (docs/protocol.md §4).

import { readdirSync } from "node:fs";
import { textFamily } from "./teacherFolder.js";
import type { DataSource } from "./types.js";

/** Text step tensors of each text-to-image family (docs/protocol.md §4): SDXL adds the pooled embedding and time ids. */
export const TEXT_TENSORS = { sd15: ["cond_hidden"], sdxl: ["cond_hidden", "cond_pooled", "cond_time_ids"] } as const;

/** `teacher.family` of the built-in teacher, and of a diffusers folder that is not a text-to-image pipeline (a
 * UNet2DModel / DDPMPipeline folder; the name dmd2_worker/adapters/registry.py gives it). */
export const BUILTIN_FAMILY = "builtin";
export const UNET2D_FAMILY = "unet2d";

/** The teacher's family: `builtin`, the text family of a text-to-image pipeline folder (model_index.json's
 * _class_name), else `unet2d`. Reads the folder; the recipe checks (files.ts) have made sure it is a teacher folder. */
export function teacherFamily(teacher: { source: "builtin" | "diffusers"; path: string | null }): string {
  if (teacher.source === "builtin" || teacher.path === null) return BUILTIN_FAMILY;
  return textFamily(teacher.path) ?? UNET2D_FAMILY;
}

/**
 * The conditioning step tensors: the class labels `cond`; none for an image folder without class subfolders
 * (an unconditional model); with `data.source: prompts`, the text tensors of the teacher's family. Null when
 * prompts go with a family that has no text tensors (the recipe checks refuse that combination first).
 */
export function conditioningFor(source: DataSource, family: string, folderHasClasses: boolean): string[] | null {
  if (source === "folder") return folderHasClasses ? ["cond"] : [];
  if (source !== "prompts") return ["cond"];
  return Object.hasOwn(TEXT_TENSORS, family) ? [...TEXT_TENSORS[family as keyof typeof TEXT_TENSORS]] : null;
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
