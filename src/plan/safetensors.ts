// Tensor names and shapes of a diffusers or transformers model folder, read from its safetensors headers alone
// (the 8-byte length and the JSON after it; the tensors themselves are never read). What the plan sizes networks
// from when it does not model their layers (plan/textPipeline.ts): the count is then exact for any architecture.

import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, statSync } from "node:fs";
import path from "node:path";

/** Name -> shape of every tensor in a model's weights (all shards together). */
export type TensorShapes = Map<string, number[]>;

/** A header larger than this is not a safetensors header (the format's own readers cap it at 100 MB). */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

/** The tensors of one .safetensors file; a one-line Error naming the file when it is not one. */
export function readSafetensorsShapes(file: string): TensorShapes {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (e) {
    throw new Error(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  try {
    const size = statSync(file).size;
    const head = Buffer.alloc(8);
    if (size < 8 || readSync(fd, head, 0, 8, 0) !== 8) throw new Error(`${file}: not a safetensors file (shorter than its 8-byte header length)`);
    const n = Number(head.readBigUInt64LE(0));
    if (n < 2 || n > MAX_HEADER_BYTES || 8 + n > size) throw new Error(`${file}: not a safetensors file (header length ${n} for a ${size}-byte file)`);
    const json = Buffer.alloc(n);
    if (readSync(fd, json, 0, n, 8) !== n) throw new Error(`${file}: truncated safetensors header`);
    let header: unknown;
    try {
      header = JSON.parse(json.toString("utf8"));
    } catch {
      throw new Error(`${file}: not a safetensors file (its header is not JSON)`);
    }
    if (typeof header !== "object" || header === null || Array.isArray(header)) throw new Error(`${file}: not a safetensors file (its header is not a JSON object)`);
    const shapes: TensorShapes = new Map();
    let end = 0;
    for (const [name, info] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") continue;
      const { shape, data_offsets: offsets } = (info ?? {}) as { shape?: unknown; data_offsets?: unknown };
      if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw new Error(`${file}: tensor ${name} has no valid shape in the header`);
      if (Array.isArray(offsets) && typeof offsets[1] === "number") end = Math.max(end, offsets[1]);
      shapes.set(name, shape as number[]);
    }
    // a download cut short keeps its header: the tensors' bytes say it is incomplete
    if (8 + n + end > size) throw new Error(`${file}: truncated (its header describes ${8 + n + end} bytes, the file has ${size}); download it again`);
    return shapes;
  } finally {
    closeSync(fd);
  }
}

/** The number of values in tensors of these shapes. */
export function countValues(shapes: Iterable<number[]>): number {
  let n = 0;
  for (const s of shapes) n += s.reduce((a, b) => a * b, 1);
  return n;
}

/**
 * The weights `from_pretrained` would load from `<dir>/<sub>/`: `<stem>.safetensors`, or the shards listed in
 * `<stem>.safetensors.index.json` (diffusers: stem diffusion_pytorch_model; transformers: model). Returns the files
 * read and the tensors, or why they cannot be read (a .bin-only folder: only safetensors headers can be read
 * without loading the weights).
 */
export function componentShapes(dir: string, sub: string, stem: string): { files: string[]; shapes: TensorShapes } | { unknown: string; variantOnly?: string[] } {
  const folder = path.join(dir, sub);
  const single = path.join(folder, `${stem}.safetensors`);
  const index = `${single}.index.json`;
  try {
    if (existsSync(single)) return { files: [single], shapes: readSafetensorsShapes(single) };
    if (existsSync(index)) {
      let map: unknown;
      try {
        map = (JSON.parse(readFileSync(index, "utf8")) as { weight_map?: unknown }).weight_map;
      } catch (e) {
        return { unknown: `${index} is not readable JSON (${(e as Error).message.split("\n")[0]})` };
      }
      if (typeof map !== "object" || map === null) return { unknown: `${index} has no weight_map` };
      const files = [...new Set(Object.values(map as Record<string, unknown>).map(String))].map((f) => path.join(folder, f));
      const shapes: TensorShapes = new Map();
      for (const f of files) for (const [k, v] of readSafetensorsShapes(f)) shapes.set(k, v);
      return { files, shapes };
    }
  } catch (e) {
    return { unknown: (e as Error).message };
  }
  const variants = variantOnlyWeights(folder, stem);
  if (variants.length > 0) {
    return { unknown: `${single} is missing: only variant weights are there (${variants.join(", ")}), which the workers do not load (they load the default files)`, variantOnly: variants };
  }
  return { unknown: `${single} is missing (the plan reads safetensors headers; a .bin-only model cannot be sized without loading it)` };
}

/**
 * The weight files of a `variant=` save (`<stem>.fp16.safetensors`, shard indexes) in a folder without the default
 * `<stem>.safetensors` / `.bin` (single or sharded): what from_pretrained without a variant cannot load (the workers'
 * teacher_folder.py variant_only_weights says the same).
 */
export function variantOnlyWeights(folder: string, stem: string): string[] {
  let names: string[];
  try {
    names = readdirSync(folder);
  } catch {
    return [];
  }
  const defaults = [`${stem}.safetensors`, `${stem}.bin`];
  if (names.some((n) => defaults.includes(n) || defaults.some((d) => n === `${d}.index.json`))) return [];
  return names.filter((n) => n.startsWith(`${stem}.`) && (n.endsWith(".safetensors") || n.endsWith(".bin") || n.endsWith(".index.json"))).sort();
}
