// No import cycles, between files or between folders, in the TypeScript sources (src/**) and the Python worker
// package (python-worker/dmd2_worker/**). Every import counts: `import type` too (it is still a dependency of
// the design), and Python imports inside functions too (a lazy import only hides a cycle from the interpreter).
// Folders are compared by their direct parent folder: src/plan -> src/run and src/run -> src/plan is a cycle
// even when no two files import each other (folderGraph says how the root's own modules count).
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { projectRoot } from "./helpers.js";

type Graph = Map<string, Set<string>>;

function filesUnder(dir: string, ext: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith(ext))
    .map((e) => path.relative(projectRoot, path.join(e.parentPath, e.name)));
}

/** src/a/b.ts -> its relative imports, as project-relative .ts paths. */
function tsImports(file: string): string[] {
  const text = readFileSync(path.join(projectRoot, file), "utf8");
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+["'](\.{1,2}\/[^"']+)["']/gms)) {
    out.push(path.normalize(path.join(path.dirname(file), m[1]!)).replace(/\.js$/, ".ts"));
  }
  for (const m of text.matchAll(/\bimport\(\s*["'](\.{1,2}\/[^"']+)["']\s*\)|^\s*import\s+["'](\.{1,2}\/[^"']+)["']/gm)) {
    out.push(path.normalize(path.join(path.dirname(file), (m[1] ?? m[2])!)).replace(/\.js$/, ".ts"));
  }
  return out;
}

const PY_ROOT = path.join("python-worker", "dmd2_worker");

/** The module file (x.py or x/__init__.py) of a dotted name under dmd2_worker, or null outside it. */
function pyModuleFile(parts: string[], known: Set<string>): string | null {
  if (parts[0] !== "dmd2_worker") return null;
  for (let n = parts.length; n >= 1; n--) {
    const base = path.join("python-worker", ...parts.slice(0, n));
    if (known.has(base + ".py")) return base + ".py";
    if (known.has(path.join(base, "__init__.py"))) return path.join(base, "__init__.py");
  }
  return null;
}

/** dmd2_worker/a/b.py -> the dmd2_worker modules it imports (`from .x import y` may name submodule y). */
function pyImports(file: string, known: Set<string>): string[] {
  const text = readFileSync(path.join(projectRoot, file), "utf8");
  const pkg = path.relative("python-worker", path.dirname(file)).split(path.sep);
  const out: string[] = [];
  const add = (parts: string[]) => {
    const f = pyModuleFile(parts, known);
    if (f !== null && f !== file) out.push(f);
  };
  for (const m of text.matchAll(/^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)/gm)) {
    const dots = m[1]!.length;
    const base = dots === 0 ? m[2]!.split(".") : [...pkg.slice(0, pkg.length - (dots - 1)), ...(m[2] ? m[2].split(".") : [])];
    const names = m[3]!.replace(/[()\n]/g, " ").split(",").map((s) => s.trim().split(/\s+/)[0]!).filter(Boolean);
    let named = false;
    for (const n of names) {
      const sub = pyModuleFile([...base, n], known);
      if (sub !== null && sub !== pyModuleFile(base, known)) {
        add([...base, n]);
        named = true;
      }
    }
    if (!named || names.length === 0) add(base);
  }
  for (const m of text.matchAll(/^[ \t]*import[ \t]+([\w.]+(?:[ \t]*,[ \t]*[\w.]+)*)/gm)) {
    for (const name of m[1]!.split(",")) add(name.trim().split("."));
  }
  return out;
}

function fileGraph(files: string[], importsOf: (f: string) => string[]): Graph {
  const g: Graph = new Map(files.map((f) => [f, new Set<string>()]));
  for (const f of files) for (const t of importsOf(f)) if (g.has(t) && t !== f) g.get(f)!.add(t);
  return g;
}

/** Folders as nodes (a package's __init__.py belongs to its folder), except that a module directly in the root
 * (src/errors.ts, dmd2_worker/config.py) is a node of its own: the root holds both the modules every folder
 * builds on and the entry points that use the folders, so as one node it would join every folder in a cycle. */
function folderGraph(files: Graph, root: string): Graph {
  const node = (f: string) => (path.dirname(f) === root ? f : path.dirname(f));
  const g: Graph = new Map();
  for (const [f, targets] of files) {
    const a = node(f);
    if (!g.has(a)) g.set(a, new Set());
    for (const t of targets) {
      const b = node(t);
      if (b !== a) g.get(a)!.add(b);
    }
  }
  return g;
}

/** Every cycle's edges, as "a -> b" strings (Tarjan's strongly connected components, then the edges inside). */
function cyclicEdges(g: Graph): string[] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const comp = new Map<string, number>();
  let comps = 0;
  const visit = (v: string) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of g.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.set(w, comps);
      } while (w !== v);
      comps++;
    }
  };
  for (const v of g.keys()) if (!idx.has(v)) visit(v);
  const edges: string[] = [];
  for (const [a, targets] of g) for (const b of targets) if (comp.get(a) === comp.get(b)) edges.push(`${a} -> ${b}`);
  return edges.sort();
}

const tsFiles = fileGraph(filesUnder(path.join(projectRoot, "src"), ".ts"), tsImports);
const pyKnown = new Set(filesUnder(path.join(projectRoot, PY_ROOT), ".py"));
const pyFiles = fileGraph([...pyKnown], (f) => pyImports(f, pyKnown));

test("the import parsers see the imports (a check on the checker)", () => {
  assert.ok(tsFiles.get(path.join("src", "recipe", "load.ts"))!.has(path.join("src", "recipe", "schema.ts")));
  assert.ok(tsFiles.get(path.join("src", "recipe", "types.ts"))!.has(path.join("src", "recipe", "schema.ts")), "an import spread over lines");
  const config = path.join(PY_ROOT, "config.py");
  assert.ok(pyFiles.get(config)!.has(path.join(PY_ROOT, "lora.py")), "a lazy import inside a function counts");
  assert.ok(cyclicEdges(new Map([["a", new Set(["b"])], ["b", new Set(["a"])], ["c", new Set(["a"])]])).join() === "a -> b,b -> a");
});

test("no import cycle between TypeScript files", () => {
  assert.deepEqual(cyclicEdges(tsFiles), []);
});

test("no import cycle between TypeScript folders", () => {
  assert.deepEqual(cyclicEdges(folderGraph(tsFiles, "src")), []);
});

test("no import cycle between Python modules", () => {
  assert.deepEqual(cyclicEdges(pyFiles), []);
});

test("no import cycle between Python packages", () => {
  assert.deepEqual(cyclicEdges(folderGraph(pyFiles, PY_ROOT)), []);
});
