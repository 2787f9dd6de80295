// A text-to-image teacher (a pipeline folder of a text family of src/families.ts, docs/adapters.md §6) sized for the plan from
// its safetensors headers (plan/safetensors.ts): the UNet2DConditionModel's parameters exactly, whatever its
// blocks, and the frozen networks the generator's worker holds beside it (the text encoder(s) and the VAE).
// The latent shape and the mid block the discriminator head reads come from unet/config.json, as
// models/unet2d_condition.py takes them. What a forward pass keeps (activations) is not modelled for these UNets:
// the plan says so instead of guessing.

import path from "node:path";
import { family, type DimSpec } from "../families.js";
import type { TextFamily } from "../recipe/teacherFolder.js";
import { componentShapes, countValues, type TensorShapes } from "./safetensors.js";
import type { TextTensorSizes } from "./tensors.js";
import { isCount, readJson } from "../unet/unet2d.js";

export interface TextPipelineNetwork {
  /** `<teacher>/unet/config.json` */
  configFile: string;
  family: TextFamily;
  /** the UNet's tensors (for LoRA counts); null when unreadable (see unknown) */
  unetShapes: TensorShapes | null;
  unetParams: number | null;
  /** the weight files the UNet's count was read from */
  unetFiles: string[];
  /** (C, H, W) of the latents the UNet takes and makes; null when the config has no square sample_size */
  latentShape: [number, number, number] | null;
  /** the mid block's output (the discriminator head's input); null when unknown */
  features: { channels: number; size: number } | null;
  /** the text step tensors' sizes (the family's dims: the tokenizer's model_max_length, the UNet's
   * cross_attention_dim, a pooled width where the family has one); null when the JSON files do not say */
  textTensors: TextTensorSizes | null;
  /** the frozen networks the generator's worker also holds (text encoders, VAE), by subfolder */
  frozen: { name: string; params: number }[];
  /** why the sizes are unknown; null when the UNet and the frozen networks were all read */
  unknown: string | null;
  /** components saved only as a variant (e.g. fp16), which the workers cannot load: subfolder and files */
  variantOnly: { sub: string; files: string[] }[];
}

type Obj = Record<string, unknown>;

/** Latent shape and mid-block features from a UNet2DConditionModel config, or why not. */
function configShapes(config: Obj): { latentShape: TextPipelineNetwork["latentShape"]; features: TextPipelineNetwork["features"]; unknown: string | null } {
  let size = config.sample_size;
  if (Array.isArray(size) && size.length === 2 && size[0] === size[1]) size = size[0];
  const inChannels = config.in_channels ?? 4; // UNet2DConditionModel's defaults
  const blocks = config.block_out_channels ?? [320, 640, 1280, 1280];
  if (!isCount(size)) return { latentShape: null, features: null, unknown: `sample_size is ${JSON.stringify(config.sample_size)}, expected one positive whole number (square latents)` };
  if (!isCount(inChannels)) return { latentShape: null, features: null, unknown: `in_channels is ${JSON.stringify(inChannels)}, expected a positive whole number` };
  if (!Array.isArray(blocks) || blocks.length === 0 || !blocks.every(isCount)) return { latentShape: [inChannels, size, size], features: null, unknown: `block_out_channels is ${JSON.stringify(blocks)}, expected a non-empty list of positive whole numbers` };
  const down = 2 ** (blocks.length - 1);
  const features = size % down === 0 ? { channels: blocks[blocks.length - 1] as number, size: size / down } : null;
  return { latentShape: [inChannels, size, size], features, unknown: null };
}

/** Latent shape and the discriminator's features from a transformer backbone's config (adapters/sd3.py, flux.py
 * take them the same way): the latent side is the config's sample_size, or the pipeline's default (the VAE's
 * sample_size over its downscale); `packing` latent pixels per side go into one input channel group; the features
 * are the image tokens, heads x head dim wide, side / (patch_size x packing) tokens a side. */
function transformerShapes(dir: string, config: Obj, packing: number, vaeSub: string | null): { latentShape: TextPipelineNetwork["latentShape"]; features: TextPipelineNetwork["features"]; unknown: string | null } {
  let side = config.sample_size;
  if (side === undefined && vaeSub !== null) {
    const vae = readJson(path.join(dir, vaeSub, "config.json"));
    const v = "error" in vae ? null : (vae.value as Obj | null);
    const blocks = v?.block_out_channels ?? [128, 256, 512, 512];
    const size = v?.sample_size ?? 1024;
    side = Array.isArray(blocks) && isCount(size) ? Math.floor(size / 2 ** (blocks.length - 1)) : null;
  }
  const inChannels = config.in_channels;
  const patch = config.patch_size ?? 1;
  const heads = config.num_attention_heads;
  const headDim = config.attention_head_dim;
  if (!isCount(side)) return { latentShape: null, features: null, unknown: `sample_size is ${JSON.stringify(config.sample_size)}, expected a positive whole number` };
  if (!isCount(inChannels) || inChannels % (packing * packing) !== 0) return { latentShape: null, features: null, unknown: `in_channels is ${JSON.stringify(inChannels)}, expected a positive multiple of ${packing * packing}` };
  const latentShape: [number, number, number] = [inChannels / (packing * packing), side, side];
  if (!isCount(patch) || !isCount(heads) || !isCount(headDim) || side % (patch * packing) !== 0) return { latentShape, features: null, unknown: null };
  return { latentShape, features: { channels: heads * headDim, size: side / (patch * packing) }, unknown: null };
}

/**
 * What the adapters write as step tensors (roles/text.py), sized by the family's dims in the family registry
 * (src/families.ts): e.g. the prompt padded to tokenizer/'s model_max_length, of the UNet's cross_attention_dim
 * (UNet2DConditionModel's default 1280 when unset), a pooled embedding as wide as what the added embedding takes
 * beside 6 time-id embeddings (models/unet2d_condition.py). Null when a file or key is missing.
 */
function textTensorSizes(dir: string, unet: Obj, name: TextFamily): TextTensorSizes | null {
  const values: Record<string, number> = {};
  for (const [dim, spec] of Object.entries(family(name).dims)) {
    const v = dimValue(dir, unet, spec);
    if (v === null) return null;
    values[dim] = v;
  }
  const { seq_len: seqLen, hidden: hiddenDim, pooled } = values;
  if (seqLen === undefined || hiddenDim === undefined) return null;
  return { seqLen, hiddenDim, pooledDim: pooled ?? null };
}

/** One dim of a family (a key of the backbone's config, or of another JSON file of the folder), or null when unknown. */
function dimValue(dir: string, config: Obj, spec: DimSpec): number | null {
  if ("value" in spec) return spec.value;
  if ("file" in spec) {
    const json = readJson(path.join(dir, spec.file));
    if ("error" in json) return null;
    const v = (json.value as Obj | null)?.[spec.key];
    return isCount(v) && v <= 1e6 ? v + spec.plus : null; // tokenizers without a length say 1e30
  }
  const v = config[spec.config] ?? spec.default;
  if (!isCount(v)) return null;
  if (spec.minus === null) return v;
  const sub = config[spec.minus.config];
  if (!isCount(sub)) return null;
  const out = v - spec.minus.times * sub;
  return isCount(out) ? out : null;
}

/** The networks of the pipeline folder `dir` of family `family`, as far as its JSON files and weight headers tell. */
export function readTextPipeline(dir: string, name: TextFamily): TextPipelineNetwork {
  const backbone = family(name).backbone.subfolder;
  const configFile = path.join(dir, backbone, "config.json");
  const out: TextPipelineNetwork = { configFile, family: name, unetShapes: null, unetParams: null, unetFiles: [], latentShape: null, features: null, textTensors: null, frozen: [], unknown: null, variantOnly: [] };
  const json = readJson(configFile);
  if ("error" in json) {
    out.unknown = `${configFile} is ${json.error}`;
    return out;
  }
  const config = json.value;
  if (typeof config !== "object" || config === null || Array.isArray(config)) {
    out.unknown = `${configFile}: it is not a JSON object`;
    return out;
  }
  out.textTensors = textTensorSizes(dir, config as Obj, name);
  const fam = family(name);
  const shapes = fam.backbone.layout === "transformer" ? transformerShapes(dir, config as Obj, fam.backbone.packing, fam.latent?.subfolder ?? null) : configShapes(config as Obj);
  out.latentShape = shapes.latentShape;
  out.features = shapes.features;
  if (shapes.unknown !== null) out.unknown = `${configFile}: ${shapes.unknown}`;

  const unet = componentShapes(dir, backbone, "diffusion_pytorch_model");
  if ("unknown" in unet) {
    out.unknown ??= unet.unknown;
    if (unet.variantOnly) out.variantOnly.push({ sub: backbone, files: unet.variantOnly });
  }
  if (!("unknown" in unet)) {
    out.unetShapes = unet.shapes;
    out.unetFiles = unet.files;
    // buffers saved beside the weights (SD3's positional embedding) are no parameters
    out.unetParams = countValues([...unet.shapes].filter(([k]) => !fam.planBuffers.includes(k)).map(([, v]) => v));
  }
  for (const [sub, stem] of family(name).planFrozen) {
    const c = componentShapes(dir, sub, stem);
    if ("unknown" in c) {
      out.unknown ??= c.unknown;
      if (c.variantOnly) out.variantOnly.push({ sub, files: c.variantOnly });
      continue;
    }
    out.frozen.push({ name: sub, params: countValues(c.shapes.values()) });
  }
  return out;
}
