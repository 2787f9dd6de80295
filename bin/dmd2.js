#!/usr/bin/env node
// dmd2 command-line entry: runs the compiled CLI (npm install builds it into dist/).
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const entry = path.join(root, "dist", "src", "cli", "main.js");
if (!existsSync(entry)) {
  process.stderr.write(`dmd2: ${entry} is missing: run "npm install" (or "npm run build") in ${root} first\n`);
  process.exit(2);
}
const { main } = await import(entry);
const code = await main(process.argv.slice(2));
process.exit(code);
