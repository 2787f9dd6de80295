// Shared by the tests: paths and the project's Python.
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Tests are compiled to dist/test/; the project root is two levels up. */
export const projectRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const projectPython = process.env.DMD2_PYTHON ?? path.join(projectRoot, ".venv", "bin", "python");
export const cliEntry = path.join(projectRoot, "bin", "dmd2.js");
