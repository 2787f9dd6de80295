// A text-to-image teacher (a StableDiffusion(XL)Pipeline folder, docs/adapters.md §6) sized for the plan from
// its safetensors headers (plan/safetensors.ts): the UNet2DConditionModel's parameters exactly, whatever its
// blocks, and the frozen networks the generator's worker holds beside it (the text encoder(s) and the VAE).
// The latent shape and the mid block the discriminator head reads come from unet/config.json, as
// models/unet2d_condition.py takes them. What a forward pass keeps (activations) is not modelled for these UNets:
// the plan says so instead of guessing.

import path from "node:path";
import type { TextFamily } from "../recipe/teacherFolder.js";
import { componentShapes, countValues, type TensorShapes } from "./safetensors.js";
import type { TextTensorSizes } from "./tensors.js";
import { isCount, readJson } from "./unet2d.js";

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
  /** the text step tensors' sizes: the tokenizer's model_max_length, the UNet's cross_attention_dim (and SDXL's
   * pooled width); null when the JSON files do not say */
  textTensors: TextTensorSizes | null;
  /** the frozen networks the generator's worker also holds (text encoders, VAE), by subfolder */
  frozen: { name: string; params: number }[];
  /** why the sizes are unknown; null when the UNet and the frozen networks were all read */
  unknown: string | null;
  /** components saved only as a variant (e.g. fp16), which the workers cannot load: subfolder and files */
  variantOnly: { sub: string; files: string[] }[];
}

/** The text encoders each family's adapter loads, then its VAE (adapters/sd15.py, sdxl.py). */
const FROZEN: Record<TextFamily, [string, string][]> = {
  sd15: [["text_encoder", "model"], ["vae", "diffusion_pytorch_model"]],
  sdxl: [["text_encoder", "model"], ["text_encoder_2", "model"], ["vae", "diffusion_pytorch_model"]],
  // SD3 and Flux (adapters/sd3.py, flux.py): plan does not size their transformers yet (it reads unet/config.json, which they lack, and
  // says the sizes are unknown); these are their frozen networks for when it does
  sd3: [["text_encoder", "model"], ["text_encoder_2", "model"], ["text_encoder_3", "model"], ["vae", "diffusion_pytorch_model"]],
  flux: [["text_encoder", "model"], ["text_encoder_2", "model"], ["vae", "diffusion_pytorch_model"]],
  sana: [["text_encoder", "model"], ["vae", "diffusion_pytorch_model"]],
};

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

/**
 * What the adapters write as step tensors (roles/text.py): the prompt padded to tokenizer/'s model_max_length, of
 * the UNet's cross_attention_dim (UNet2DConditionModel's default 1280 when unset); SDXL's pooled embedding is what
 * the added embedding takes beside 6 time-id embeddings (models/unet2d_condition.py). Null when a file is missing.
 */
function textTensorSizes(dir: string, unet: Obj, family: TextFamily): TextTensorSizes | null {
  const tokenizer = readJson(path.join(dir, "tokenizer", "tokenizer_config.json"));
  if ("error" in tokenizer) return null;
  const seqLen = (tokenizer.value as Obj | null)?.model_max_length;
  const hiddenDim = unet.cross_attention_dim ?? 1280;
  if (!isCount(seqLen) || seqLen > 1e6 || !isCount(hiddenDim)) return null;
  if (family === "sd15") return { seqLen, hiddenDim, pooledDim: null };
  const input = unet.projection_class_embeddings_input_dim;
  const timeEmbed = unet.addition_time_embed_dim;
  if (!isCount(input) || !isCount(timeEmbed) || input <= 6 * timeEmbed) return null;
  return { seqLen, hiddenDim, pooledDim: input - 6 * timeEmbed };
}

/** The networks of the pipeline folder `dir` of family `family`, as far as its JSON files and weight headers tell. */
export function readTextPipeline(dir: string, family: TextFamily): TextPipelineNetwork {
  const configFile = path.join(dir, "unet", "config.json");
  const out: TextPipelineNetwork = { configFile, family, unetShapes: null, unetParams: null, unetFiles: [], latentShape: null, features: null, textTensors: null, frozen: [], unknown: null, variantOnly: [] };
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
  out.textTensors = textTensorSizes(dir, config as Obj, family);
  const shapes = configShapes(config as Obj);
  out.latentShape = shapes.latentShape;
  out.features = shapes.features;
  if (shapes.unknown !== null) out.unknown = `${configFile}: ${shapes.unknown}`;

  const unet = componentShapes(dir, "unet", "diffusion_pytorch_model");
  if ("unknown" in unet) {
    out.unknown ??= unet.unknown;
    if (unet.variantOnly) out.variantOnly.push({ sub: "unet", files: unet.variantOnly });
  }
  if (!("unknown" in unet)) {
    out.unetShapes = unet.shapes;
    out.unetFiles = unet.files;
    out.unetParams = countValues(unet.shapes.values());
  }
  for (const [sub, stem] of FROZEN[family]) {
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
