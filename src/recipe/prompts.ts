// The prompts file of `data.source: prompts` (docs/recipe.md, docs/adapters.md §6), read the way the worker reads
// it (python-worker/dmd2_worker/prompts.py): UTF-8, one prompt a line, surrounding whitespace stripped, blank
// lines and lines starting with `#` skipped. The recipe check and `dmd2 sample --prompts-file` use it.

import { readFileSync } from "node:fs";

/** The prompts of a prompts file's text, in order (duplicates kept). */
export function parsePrompts(text: string): string[] {
  return text
    .replace(/^\uFEFF/, "")
    .split(/\r\n|\n|\r/)
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
}

/** The prompts of `file`, or one line saying what is wrong with it (without the file's name: callers add it). */
export function readPromptsFile(file: string): { prompts: string[] } | { error: string } {
  let bytes: Buffer;
  try {
    bytes = readFileSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return { error: "does not exist (give a UTF-8 text file, one prompt a line)" };
    if (code === "EISDIR") return { error: "is a folder, not a text file of prompts" };
    return { error: `cannot be read (${code ?? String(e)})` };
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return { error: "is not UTF-8 text (save it as UTF-8)" };
  }
  const prompts = parsePrompts(text);
  if (prompts.length === 0) return { error: "holds no prompts (one prompt a line; blank lines and # comments are skipped)" };
  return { prompts };
}
