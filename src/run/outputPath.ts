// Output paths, checked before any work (issue 20): every command that writes (distill's run_dir, sample --out,
// export --out, report --out, train-teacher --out, eval --picture) calls one of these first, so that a path that
// cannot be written is one line naming it and the fix (a UsageError, exit 2) in well under a second, not a
// failure after training. Folders are created one level at a time: `mkdirSync(p, { recursive: true })` loops for
// ever on paths such as /proc/x (it blocks the event loop, so not even Ctrl-C ends it).

import { accessSync, constants as fsc, mkdirSync, statSync } from "node:fs";
import path from "node:path";
import { shortenValue, UsageError } from "../errors.js";

/** How a path is named in the messages, and the fix they offer: e.g. {what: "run_dir", fix: "choose another run_dir"}. */
export interface OutputLabel {
  what: string;
  fix: string;
}

const WHY: Record<string, string> = {
  ENOENT: "the file system there cannot hold it",
  ENOTDIR: "a file is in the way",
  EACCES: "permission denied",
  EPERM: "operation not permitted",
  EROFS: "read-only file system",
  ENOSPC: "no space left on device",
  EDQUOT: "disk quota exceeded",
  ENAMETOOLONG: "the name is too long",
  EEXIST: "it is a file, not a folder",
  ELOOP: "too many symbolic links",
};

/** `<what> <path> is not writable (<code>): <fix> (<why>[ at <where>])`: one line, exit 2. */
function fail(label: OutputLabel, shown: string, code: string, at?: string): never {
  const where = at !== undefined && at !== shown ? ` at ${shortenValue(at)}` : "";
  throw new UsageError(`${label.what} ${shortenValue(shown)} is not writable (${code}): ${label.fix} (${WHY[code] ?? code}${where})`, { code: "OUTPUT_PATH" });
}

const errno = (e: unknown) => (e as NodeJS.ErrnoException).code ?? "EIO";

/** null when nothing is at `p`; else whether it is a folder. Errors other than "not there" are returned as codes. */
function kindOf(p: string): "dir" | "other" | null | { code: string } {
  try {
    return statSync(p).isDirectory() ? "dir" : "other";
  } catch (e) {
    const code = errno(e);
    return code === "ENOENT" || code === "ENOTDIR" ? null : { code }; // ENOTDIR: a file higher up, found on the way up
  }
}

/**
 * Makes sure `dir` is a folder this process can write in, creating it and any missing parents one level at a
 * time. `shown` is how the user wrote it (default: `dir`). Throws a UsageError naming the path and `label.fix`.
 */
export function ensureOutputDir(dir: string, label: OutputLabel, shown: string = dir): string {
  return ensureDir(path.resolve(dir), path.resolve(dir), label, shown);
}

/** ensureOutputDir of `abs`, for the output `target` (abs itself, or a file or folder in it). */
function ensureDir(abs: string, target: string, label: OutputLabel, shown: string): string {
  if (Buffer.byteLength(abs) > 4000) fail(label, shown, "ENAMETOOLONG");
  // the deepest part that exists, then each missing level below it
  const missing: string[] = [];
  let at = abs;
  for (;;) {
    const k = kindOf(at);
    if (k === "dir") break;
    if (k === "other") fail(label, shown, at === target ? "EEXIST" : "ENOTDIR", at === target ? undefined : at);
    if (k !== null) fail(label, shown, k.code, at);
    missing.unshift(at);
    const up = path.dirname(at);
    if (up === at) fail(label, shown, "ENOENT", at);
    at = up;
  }
  for (const level of missing) {
    try {
      mkdirSync(level); // one level, never { recursive: true }
    } catch (e) {
      if (errno(e) !== "EEXIST" || kindOf(level) !== "dir") fail(label, shown, errno(e), level);
    }
  }
  try {
    accessSync(abs, fsc.W_OK | fsc.X_OK);
  } catch (e) {
    fail(label, shown, errno(e), abs);
  }
  return abs;
}

/** A file to write: its folder is made sure of (ensureOutputDir) and the file itself must not be a folder. */
export function ensureOutputFile(file: string, label: OutputLabel, shown: string = file): string {
  const abs = path.resolve(file);
  ensureDir(path.dirname(abs), abs, label, shown);
  if (kindOf(abs) === "dir") throw new UsageError(`${label.what} ${shortenValue(shown)} is a folder, not a file: ${label.fix}`, { code: "OUTPUT_PATH" });
  return abs;
}

/**
 * A folder a job writes later, beside itself first and then renamed into place (export, train-teacher): its
 * parent is made sure of now, and the folder itself, if there, must be a folder.
 */
export function ensureOutputParent(dir: string, label: OutputLabel, shown: string = dir): string {
  const abs = path.resolve(dir);
  ensureDir(path.dirname(abs), abs, label, shown);
  if (kindOf(abs) === "other") fail(label, shown, "EEXIST");
  return abs;
}
