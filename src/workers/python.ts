/**
 * Which Python interpreter runs the workers: the recipe's `python` key, else $DMD2_PYTHON, else the project's
 * own `<project root>/.venv/bin/python` (made by `npm install`).
 */
import { accessSync, constants, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { UsageError } from "../errors.js";

/** The project root: this file is compiled to dist/src/workers/python.js. */
export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

export interface ResolvePythonOptions {
  env?: NodeJS.ProcessEnv;
  /** Where `.venv/` is looked for; default PROJECT_ROOT. */
  projectRoot?: string;
  /** A relative recipe path is taken relative to this folder; default the current directory. */
  baseDir?: string;
}

function isExecutableFile(file: string): boolean {
  try {
    if (!statSync(file).isFile()) return false;
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Finds a bare command name (e.g. `python3`) on PATH. */
function onPath(name: string, env: NodeJS.ProcessEnv): string | null {
  for (const dir of (env.PATH ?? "").split(path.delimiter)) {
    if (dir === "") continue;
    const candidate = path.join(dir, name);
    if (isExecutableFile(candidate)) return candidate;
  }
  return null;
}

function check(candidate: string, env: NodeJS.ProcessEnv, baseDir: string): string | null {
  if (!candidate.includes("/") && !candidate.includes(path.sep)) return onPath(candidate, env);
  const absolute = path.resolve(baseDir, candidate);
  return isExecutableFile(absolute) ? absolute : null;
}

/**
 * Returns the absolute path of the Python interpreter for the workers. Throws UsageError (exit code 2) that
 * names the fix when the chosen interpreter does not exist or is not executable.
 */
export function resolvePython(recipePython: string | null, options: ResolvePythonOptions = {}): string {
  const env = options.env ?? process.env;
  const root = options.projectRoot ?? PROJECT_ROOT;
  const baseDir = options.baseDir ?? process.cwd();

  if (recipePython !== null && recipePython !== "") {
    const found = check(recipePython, env, baseDir);
    if (found === null) {
      throw new UsageError(`python: "${recipePython}" is not an executable file`, {
        code: "PYTHON_NOT_FOUND",
        hint: "fix the recipe's python key, or remove it to use $DMD2_PYTHON or the project's .venv",
      });
    }
    return found;
  }

  const fromEnv = env.DMD2_PYTHON;
  if (fromEnv !== undefined && fromEnv !== "") {
    const found = check(fromEnv, env, process.cwd());
    if (found === null) {
      throw new UsageError(`DMD2_PYTHON=${fromEnv} is not an executable file`, {
        code: "PYTHON_NOT_FOUND",
        hint: "point DMD2_PYTHON at a Python interpreter with torch, or unset it to use the project's .venv",
      });
    }
    return found;
  }

  const venvPython = path.join(root, ".venv", "bin", "python");
  if (!isExecutableFile(venvPython)) {
    throw new UsageError(`no Python for the workers: ${venvPython} does not exist`, {
      code: "PYTHON_NOT_FOUND",
      hint: `run npm install in ${root} (it creates .venv), or set DMD2_PYTHON to a Python interpreter with torch`,
    });
  }
  return venvPython;
}
