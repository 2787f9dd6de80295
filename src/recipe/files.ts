// The checks that read the disk: folders a recipe names (data.folder.path, teacher.path) must exist and are made
// absolute (relative ones start at the recipe's folder), and a diffusers teacher's scheduler fills the
// `diffusion` group. Runs after the schema pass, before the rules (so that they see the teacher's settings).

import { existsSync, statSync } from "node:fs";
import path from "node:path";
import { family as familyInfo, pipelineList, textFamilies } from "../families.js";
import { readPromptsFile } from "./prompts.js";
import { MODEL_INDEX, readTeacherDiffusion, SCHEDULER_CONFIG, textFamily, textPipelines } from "./teacherFolder.js";
import type { Problem } from "./validate.js";

type Obj = Record<string, unknown>;

export interface FileContext {
  /** the recipe file as given */
  recipeFile: string;
  /** whether the user wrote this key (in the file or with --set), as opposed to taking its default */
  written: (keyPath: string[]) => boolean;
}

/** How paths appear in messages: relative to the current directory when below it. */
export function showPath(p: string): string {
  const rel = path.relative(process.cwd(), p);
  return rel !== "" && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : p;
}

const isDir = (p: string) => existsSync(p) && statSync(p).isDirectory();

/** data.folder.path, data.prompts.file and data.prompts.images: absolute; with data.source folder the folder must
 * be one, with data.source prompts the prompts file must hold prompts and the image folder (if given) exist. */
export function checkDataFolder(data: Obj, ctx: FileContext): Problem[] {
  const base = path.dirname(path.resolve(ctx.recipeFile));
  const prompts = data.prompts as { file: string | null; images: string | null };
  const written = { file: prompts.file, images: prompts.images };
  if (prompts.file !== null) prompts.file = path.resolve(base, prompts.file);
  if (prompts.images !== null) prompts.images = path.resolve(base, prompts.images);
  const problems: Problem[] = [];
  if (data.source === "prompts") {
    if (prompts.file !== null) {
      const read = readPromptsFile(prompts.file);
      if ("error" in read) {
        const missing = read.error.startsWith("does not exist");
        problems.push({ path: ["data", "prompts", "file"], message: missing ? `${written.file} does not exist (${showPath(prompts.file)}; a relative path starts at the recipe's folder; give a UTF-8 text file, one prompt a line)` : `${written.file} ${read.error}` });
      }
    }
    if (prompts.images !== null) {
      const at = ["data", "prompts", "images"];
      if (!existsSync(prompts.images)) problems.push({ path: at, message: `${written.images} does not exist (${showPath(prompts.images)}; a relative path starts at the recipe's folder)` });
      else if (!isDir(prompts.images)) problems.push({ path: at, message: `${written.images} is not a folder (give the folder of real images for the GAN)` });
    }
  }
  const folder = data.folder as { path: string | null };
  if (folder.path === null) return problems;
  const writtenFolder = folder.path;
  folder.path = path.resolve(base, writtenFolder);
  if (data.source !== "folder") return problems;
  const at = ["data", "folder", "path"];
  if (!existsSync(folder.path)) return [{ path: at, message: `${writtenFolder} does not exist (${showPath(folder.path)}; a relative path starts at the recipe's folder)` }];
  if (!isDir(folder.path)) return [{ path: at, message: `${writtenFolder} is not a folder (give the folder that holds the images)` }];
  return problems;
}

/** The teacher recipe a "train it first" hint names: `<folder name>-teacher.yaml` or `<recipe name>-teacher.yaml` next to the recipe. */
function teacherRecipeFor(teacherDir: string, recipeFile: string): string {
  const dir = path.dirname(recipeFile);
  const stem = path.basename(recipeFile).replace(/\.ya?ml$/i, "");
  const found = [path.basename(teacherDir), stem].map((n) => path.join(dir, `${n}-teacher.yaml`)).find((f) => existsSync(f));
  return found === undefined ? "<teacher recipe>" : showPath(path.resolve(found));
}

/** teacher.path (with teacher.source diffusers): absolute, a diffusers teacher folder, and the source of `diffusion`. */
export function checkTeacherFolder(r: Obj, ctx: FileContext): Problem[] {
  const teacher = r.teacher as { source: string; path: string | null };
  if (teacher.path === null) return [];
  const written = teacher.path;
  teacher.path = path.resolve(path.dirname(path.resolve(ctx.recipeFile)), written);
  if (teacher.source !== "diffusers") return [];
  const at = ["teacher", "path"];
  if (!existsSync(teacher.path) && (r.data as Obj).source === "prompts") {
    return [{ path: at, message: `${written} does not exist (${showPath(teacher.path)}; give a ${pipelineList(textFamilies())} folder as save_pretrained writes it; a relative path starts at the recipe's folder)` }];
  }
  if (!existsSync(teacher.path)) {
    const fix = `dmd2 train-teacher ${teacherRecipeFor(teacher.path, ctx.recipeFile)} --out ${showPath(teacher.path)}`;
    return [{ path: at, message: `${written} does not exist (train it first: ${fix})` }];
  }
  if (!isDir(teacher.path)) return [{ path: at, message: `${written} is not a folder (give a diffusers teacher folder, e.g. one dmd2 train-teacher wrote)` }];
  const read = readTeacherDiffusion(teacher.path, showPath);
  if ("problems" in read) return read.problems.map((message) => ({ path: at, message }));

  const problems: Problem[] = [];
  // text-to-image pipelines go with prompts data, and prompts data with them (docs/adapters.md §6)
  const family = textFamily(teacher.path);
  const source = (r.data as Obj).source;
  const index = showPath(path.join(teacher.path, MODEL_INDEX));
  if (source === "prompts" && family === null) {
    problems.push({ path: at, message: `${written} is not a text-to-image pipeline, which data.source prompts needs (${index} must name ${Object.keys(textPipelines()).join(" or ")})` });
  } else if (source !== "prompts" && family !== null) {
    problems.push({ path: ["data", "source"], message: `${String(source)} does not fit the teacher: ${written} is a text-to-image pipeline (${family}); set data.source: prompts with data.prompts.file` });
  }
  const diffusion = r.diffusion as Obj;
  // a flow-matching teacher's scheduler has no DDPM betas: the recipe's diffusion keys do not describe it (the
  // workers read its schedule from the folder, flow_matching.py), so they are not compared
  const flow = family !== null && familyInfo(family).parametrisation === "flow";
  for (const [key, value] of Object.entries(read.diffusion)) {
    if (!flow && ctx.written(["diffusion", key]) && diffusion[key] !== value) {
      problems.push({
        path: ["diffusion", key],
        message: `${String(diffusion[key])} differs from the teacher's ${String(value)} (${showPath(path.join(teacher.path, SCHEDULER_CONFIG))}): drop the key to take the teacher's value`,
      });
    }
    diffusion[key] = value;
  }
  return problems;
}
