// A diffusers teacher's network (docs/pipeline.md §2), sized from its `unet/config.json` alone (no Python):
// the parameter count of diffusers' UNet2DModel, layer by layer, for the block types modelled here, and an
// estimate of the activations a forward pass keeps. test/plan.test.ts checks the counts against numbers
// UNet2DModel itself gave. A config with a block type or option not modelled here gets a reason instead of
// a number: an unknown is better than a wrong figure.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";

export const UNET_CONFIG = path.join("unet", "config.json");
export const TEACHER_META = "dmd2_teacher.json";

/** The UNet2DModel settings that shape its layers (diffusers' defaults where config.json leaves a key out). */
export interface UNet2DArch {
  inChannels: number;
  outChannels: number;
  /** sample_size; null when the config has none */
  imageSize: number | null;
  blockOutChannels: number[];
  layersPerBlock: number;
  downBlockTypes: string[];
  upBlockTypes: string[];
  midBlockType: string | null;
  addAttention: boolean;
  /** null: each attention layer uses its channel count (one head) */
  attentionHeadDim: number | null;
  normNumGroups: number | null;
  attnNormNumGroups: number | null;
  resnetTimeScaleShift: string;
  timeEmbeddingType: string;
  timeEmbeddingDim: number | null;
  classEmbedType: string | null;
  /** the class embedding's rows (a dmd2 teacher: its classes + the null class); null: none */
  numClassEmbeds: number | null;
  downsampleType: string;
  upsampleType: string;
}

/** UNet2DModel.__init__'s defaults (diffusers 0.42), for a config.json written by hand. */
const DEFAULTS = {
  sample_size: null,
  in_channels: 3,
  out_channels: 3,
  time_embedding_type: "positional",
  time_embedding_dim: null,
  down_block_types: ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
  mid_block_type: "UNetMidBlock2D",
  up_block_types: ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
  block_out_channels: [224, 448, 672, 896],
  layers_per_block: 2,
  attention_head_dim: 8,
  norm_num_groups: 32,
  attn_norm_num_groups: null,
  resnet_time_scale_shift: "default",
  add_attention: true,
  class_embed_type: null,
  num_class_embeds: null,
  downsample_type: "conv",
  upsample_type: "conv",
} as const;

const DOWN_BLOCKS = ["DownBlock2D", "AttnDownBlock2D"];
const UP_BLOCKS = ["UpBlock2D", "AttnUpBlock2D"];
const MID_BLOCKS = ["UNetMidBlock2D"];

type Obj = Record<string, unknown>;

export const isCount = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 1;

/**
 * The arch of a parsed `unet/config.json`, or why it cannot be sized: a value of the wrong type, or a block
 * type or option whose layers this file does not model (the network may well be fine; the plan just cannot
 * count it).
 */
export function unet2dArch(config: unknown): { arch: UNet2DArch } | { unknown: string } {
  if (typeof config !== "object" || config === null || Array.isArray(config)) return { unknown: "it is not a JSON object" };
  const c = config as Obj;
  if (c._class_name !== undefined && c._class_name !== "UNet2DModel") return { unknown: `_class_name ${JSON.stringify(c._class_name)} is not UNet2DModel` };
  const get = (key: keyof typeof DEFAULTS): unknown => (key in c ? c[key] : DEFAULTS[key]);
  const bad = (key: string, want: string) => ({ unknown: `${key} is ${JSON.stringify(c[key])}, expected ${want}` });

  const count = (key: keyof typeof DEFAULTS, nullable: boolean): number | null | { unknown: string } => {
    const v = get(key);
    if (v === null && nullable) return null;
    return isCount(v) ? v : bad(key, nullable ? "a positive whole number or null" : "a positive whole number");
  };
  const counts = (key: keyof typeof DEFAULTS): number[] | { unknown: string } => {
    const v = get(key);
    return Array.isArray(v) && v.length >= 1 && v.every(isCount) ? (v as number[]) : bad(key, "a non-empty list of positive whole numbers");
  };
  const names = (key: keyof typeof DEFAULTS): string[] | { unknown: string } => {
    const v = get(key);
    return Array.isArray(v) && v.every((s) => typeof s === "string") ? (v as string[]) : bad(key, "a list of block type names");
  };
  const text = (key: keyof typeof DEFAULTS, nullable: boolean): string | null | { unknown: string } => {
    const v = get(key);
    if (v === null && nullable) return null;
    return typeof v === "string" ? v : bad(key, nullable ? "a string or null" : "a string");
  };
  const failed = (v: unknown): v is { unknown: string } => typeof v === "object" && v !== null && "unknown" in v;

  let size = get("sample_size");
  if (Array.isArray(size) && size.length === 2 && size[0] === size[1]) size = size[0];
  if (size !== null && !isCount(size)) return bad("sample_size", "one positive whole number (square images)");

  const fields = {
    inChannels: count("in_channels", false),
    outChannels: count("out_channels", false),
    blockOutChannels: counts("block_out_channels"),
    layersPerBlock: count("layers_per_block", false),
    downBlockTypes: names("down_block_types"),
    upBlockTypes: names("up_block_types"),
    midBlockType: text("mid_block_type", true),
    attentionHeadDim: count("attention_head_dim", true),
    normNumGroups: count("norm_num_groups", true),
    attnNormNumGroups: count("attn_norm_num_groups", true),
    resnetTimeScaleShift: text("resnet_time_scale_shift", false),
    timeEmbeddingType: text("time_embedding_type", false),
    timeEmbeddingDim: count("time_embedding_dim", true),
    classEmbedType: text("class_embed_type", true),
    numClassEmbeds: count("num_class_embeds", true),
    downsampleType: text("downsample_type", false),
    upsampleType: text("upsample_type", false),
  };
  for (const v of Object.values(fields)) if (failed(v)) return v;
  const addAttention = get("add_attention");
  if (typeof addAttention !== "boolean") return bad("add_attention", "true or false");
  const arch = { ...fields, imageSize: size as number | null, addAttention } as UNet2DArch;

  // what this file models; anything else is counted as unknown rather than guessed
  const L = arch.blockOutChannels.length;
  if (arch.downBlockTypes.length !== L || arch.upBlockTypes.length !== L) return { unknown: `down_block_types, up_block_types and block_out_channels must have one entry per level (${arch.downBlockTypes.length}, ${arch.upBlockTypes.length}, ${L})` };
  const other = (list: string[], known: string[]) => list.find((t) => !known.includes(t));
  const odd =
    other(arch.downBlockTypes, DOWN_BLOCKS) ??
    other(arch.upBlockTypes, UP_BLOCKS) ??
    (arch.midBlockType !== null && !MID_BLOCKS.includes(arch.midBlockType) ? arch.midBlockType : undefined);
  if (odd !== undefined) return { unknown: `block type ${odd} is not modelled (known: ${[...DOWN_BLOCKS, ...MID_BLOCKS, ...UP_BLOCKS].join(", ")})` };
  if (arch.timeEmbeddingType !== "positional") return { unknown: `time_embedding_type ${arch.timeEmbeddingType} is not modelled (known: positional)` };
  if (arch.classEmbedType !== null) return { unknown: `class_embed_type ${arch.classEmbedType} is not modelled (known: null, with num_class_embeds)` };
  if (!["default", "scale_shift"].includes(arch.resnetTimeScaleShift)) return { unknown: `resnet_time_scale_shift ${arch.resnetTimeScaleShift} is not modelled (known: default, scale_shift)` };
  if (arch.normNumGroups === null) return { unknown: "norm_num_groups null is not modelled" };
  for (const [key, v] of [["downsample_type", arch.downsampleType], ["upsample_type", arch.upsampleType]] as const) {
    if (v !== "conv" && v !== "resnet") return { unknown: `${key} ${v} is not modelled (known: conv, resnet)` };
  }
  return { arch };
}

const linear = (fanIn: number, fanOut: number) => fanIn * fanOut + fanOut;
const conv = (cin: number, cout: number, k: number) => cin * cout * k * k + cout;
const groupNorm = (ch: number) => 2 * ch;

/** The time embedding's width: time_embedding_dim, else 4 x block_out_channels[0]. */
const embedDim = (a: UNet2DArch) => a.timeEmbeddingDim ?? 4 * a.blockOutChannels[0]!;

/**
 * ResnetBlock2D(cin -> cout): GroupNorm(cin), conv3x3, Linear(E, cout) (2 cout with scale_shift), GroupNorm(cout),
 * conv3x3, and a 1x1 conv shortcut when cin != cout.
 */
function resnetParams(a: UNet2DArch, cin: number, cout: number): number {
  const proj = a.resnetTimeScaleShift === "scale_shift" ? 2 * cout : cout;
  return groupNorm(cin) + conv(cin, cout, 3) + linear(embedDim(a), proj) + groupNorm(cout) + conv(cout, cout, 3) + (cin === cout ? 0 : conv(cin, cout, 1));
}

/** The heads and their total width of an attention layer over `ch` channels (heads = ch // head_dim). */
function attentionWidth(ch: number, headDim: number | null): { heads: number; inner: number } {
  const dim = headDim ?? ch;
  const heads = Math.floor(ch / dim);
  return { heads, inner: heads * dim };
}

/** Attention (the "deprecated attention block" layout): GroupNorm when grouped, q/k/v Linear(ch, inner), out Linear(inner, ch). */
function attentionParams(ch: number, headDim: number | null, norm: boolean): number {
  const { inner } = attentionWidth(ch, headDim);
  return (norm ? groupNorm(ch) : 0) + 3 * linear(ch, inner) + linear(inner, ch);
}

/** The mid block's attention has a GroupNorm unless resnet_time_scale_shift is not "default" and attn_norm_num_groups is null. */
const midAttentionNorm = (a: UNet2DArch) => a.attnNormNumGroups !== null || a.resnetTimeScaleShift === "default";

/**
 * UNet2DModel's parameters, walking its __init__: conv_in; the time MLP Linear(b0, E) + Linear(E, E); the class
 * embedding (num_class_embeds x E); per level i the down block: layers_per_block resnets (b[i-1] -> b[i], then
 * b[i] -> b[i]), an attention after each in AttnDownBlock2D, then (all levels but the last) a conv3x3 stride 2
 * or, for AttnDownBlock2D with downsample_type resnet, a resnet; the mid block: resnet, then attention (with
 * add_attention) and resnet; per level the up block: layers_per_block + 1 resnets over the concatenated skip,
 * attentions in AttnUpBlock2D, an upsampler (conv3x3, or a resnet); then GroupNorm(b0) and conv_out.
 * The image size does not enter.
 */
export function unet2dParams(a: UNet2DArch): number {
  const b = a.blockOutChannels;
  const L = b.length;
  const E = embedDim(a);
  const T = a.layersPerBlock;
  let n = conv(a.inChannels, b[0]!, 3) + linear(b[0]!, E) + linear(E, E) + (a.numClassEmbeds ?? 0) * E;
  let out = b[0]!;
  for (let i = 0; i < L; i++) {
    const input = out;
    out = b[i]!;
    const attn = a.downBlockTypes[i] === "AttnDownBlock2D";
    for (let j = 0; j < T; j++) n += resnetParams(a, j === 0 ? input : out, out) + (attn ? attentionParams(out, a.attentionHeadDim ?? out, true) : 0);
    if (i < L - 1) n += attn && a.downsampleType === "resnet" ? resnetParams(a, out, out) : conv(out, out, 3);
  }
  if (a.midBlockType !== null) {
    const c = b[L - 1]!;
    n += 2 * resnetParams(a, c, c) + (a.addAttention ? attentionParams(c, a.attentionHeadDim ?? c, midAttentionNorm(a)) : 0);
  }
  const rev = [...b].reverse();
  out = rev[0]!;
  for (let i = 0; i < L; i++) {
    const prev = out;
    out = rev[i]!;
    const input = rev[Math.min(i + 1, L - 1)]!;
    const attn = a.upBlockTypes[i] === "AttnUpBlock2D";
    for (let j = 0; j <= T; j++) {
      const skip = j === T ? input : out;
      n += resnetParams(a, (j === 0 ? prev : out) + skip, out) + (attn ? attentionParams(out, a.attentionHeadDim ?? out, true) : 0);
    }
    if (i < L - 1) n += attn && a.upsampleType === "resnet" ? resnetParams(a, out, out) : conv(out, out, 3);
  }
  return n + groupNorm(b[0]!) + conv(b[0]!, a.outChannels, 3);
}

/** The mid block's output, which the discriminator head reads: b[-1] channels at sample_size / 2^(levels - 1). */
export function unet2dFeatures(a: UNet2DArch, imageSize: number): { channels: number; size: number } {
  const L = a.blockOutChannels.length;
  return { channels: a.blockOutChannels[L - 1]!, size: Math.floor(imageSize / 2 ** (L - 1)) };
}

/** Why the worker would refuse this UNet for an image size (not divisible by 2^(levels - 1)), or null. */
export function unet2dSizeProblem(a: UNet2DArch, imageSize: number): string | null {
  const down = a.blockOutChannels.length - 1;
  return imageSize % 2 ** down === 0 ? null : `sample_size ${imageSize} is not divisible by 2^${down} (${down + 1} block_out_channels); the workers will refuse it`;
}

/**
 * An estimate of the float32 values one forward pass keeps for one sample (`encoderOnly`: up to the mid
 * block's output, what the discriminator's `features` runs), counting what autograd saves for the backward:
 * per resnet its input, the first norm's output and activation (3 maps of its input width) and the same three
 * around its second norm (3 of its output width, 4 with scale_shift), and its own SiLU of the time embedding;
 * per attention its input and the normed input as each of q, k, v's projections reads it (4 maps of its
 * width), q, k, v, the attention output and the output projection's input (5 of its heads' width) and a
 * log-sum-exp per head and pixel (torch's fused scaled_dot_product_attention keeps no pixels^2 matrix); per
 * resampler its conv's input (a resnet resampler: its halves at their resolutions); the network's input and
 * the output norm's three maps. Against the tensors torch saved (counted with
 * torch.autograd.graph.saved_tensors_hooks at batch 2, diffusers 0.42 on CPU) it was 94-102% of them for
 * configs with 1-3 levels, 1-2 layers per block, every modelled block type and option, images 2x2 to 32x32.
 */
export function unet2dActivationsPerSample(a: UNet2DArch, imageSize: number, encoderOnly = false): number {
  const b = a.blockOutChannels;
  const L = b.length;
  const T = a.layersPerBlock;
  const E = embedDim(a);
  const pixels = (level: number) => (imageSize / 2 ** level) ** 2;
  const around2 = a.resnetTimeScaleShift === "scale_shift" ? 4 : 3; // scale_shift: norm2's output x (1 + scale) too
  const resnet = (cin: number, cout: number, P: number) => (3 * cin + around2 * cout) * P + E; // + its own SiLU of the embedding
  const attention = (ch: number, headDim: number | null, P: number) => {
    const { heads, inner } = attentionWidth(ch, headDim);
    return (4 * ch + 5 * inner + heads) * P;
  };
  let n = b[0]! + 2 * E + a.inChannels * pixels(0); // the time MLP, the input (conv_in's)
  let out = b[0]!;
  for (let i = 0; i < L; i++) {
    const input = out;
    out = b[i]!;
    const attn = a.downBlockTypes[i] === "AttnDownBlock2D";
    for (let j = 0; j < T; j++) n += resnet(j === 0 ? input : out, out, pixels(i)) + (attn ? attention(out, a.attentionHeadDim ?? out, pixels(i)) : 0);
    // a resnet downsampler: norms at this level, the second half after its average pooling
    if (i < L - 1) n += attn && a.downsampleType === "resnet" ? 3 * out * pixels(i) + around2 * out * pixels(i + 1) + E : out * pixels(i);
  }
  const c = b[L - 1]!;
  const P = pixels(L - 1);
  if (a.midBlockType !== null) n += 2 * resnet(c, c, P) + (a.addAttention ? attention(c, a.attentionHeadDim ?? c, P) : 0);
  if (encoderOnly) return n;
  const rev = [...b].reverse();
  out = rev[0]!;
  for (let i = 0; i < L; i++) {
    const level = L - 1 - i;
    const prev = out;
    out = rev[i]!;
    const input = rev[Math.min(i + 1, L - 1)]!;
    const attn = a.upBlockTypes[i] === "AttnUpBlock2D";
    for (let j = 0; j <= T; j++) {
      const cin = (j === 0 ? prev : out) + (j === T ? input : out); // the skip, concatenated
      n += resnet(cin, out, pixels(level)) + (attn ? attention(out, a.attentionHeadDim ?? out, pixels(level)) : 0);
    }
    if (i < L - 1) {
      // a resnet upsampler: its first norm at this level, then the upsampled map and the second half at the next;
      // a conv upsampler: the upsampled map its conv reads
      n += attn && a.upsampleType === "resnet" ? 3 * out * pixels(level) + (1 + around2) * out * pixels(level - 1) + E : out * pixels(level - 1);
    }
  }
  return n + 3 * b[0]! * pixels(0); // conv_norm_out's input and output, the SiLU's
}

/**
 * Multiply-accumulates of one forward pass for one sample, walking the same blocks as unet2dParams: every
 * convolution's weights times the pixels of its output, the Linear layers (time MLP, each resnet's embedding
 * projection, attention's q/k/v/out projections at every pixel) and attention's two pixels x pixels products
 * (scores and their weighted sum). Norms, activations, additions and the softmax are left out. It measures how
 * much work one op gives torch's threads (src/recipe/threads.ts).
 */
export function unet2dMacsPerSample(a: UNet2DArch, imageSize: number): number {
  const b = a.blockOutChannels;
  const L = b.length;
  const T = a.layersPerBlock;
  const E = embedDim(a);
  const pixels = (level: number) => (imageSize / 2 ** level) ** 2;
  const conv3 = (cin: number, cout: number, P: number) => cin * cout * 9 * P;
  const proj = (cout: number) => E * (a.resnetTimeScaleShift === "scale_shift" ? 2 * cout : cout);
  // a resnet whose convolutions run at P pixels (a resampling resnet: at the resolution it resamples to)
  const resnet = (cin: number, cout: number, P: number) => conv3(cin, cout, P) + conv3(cout, cout, P) + (cin === cout ? 0 : cin * cout * P) + proj(cout);
  const attention = (ch: number, headDim: number | null, P: number) => {
    const { inner } = attentionWidth(ch, headDim);
    return 4 * ch * inner * P + 2 * P * P * inner;
  };
  let n = conv3(a.inChannels, b[0]!, pixels(0)) + b[0]! * E + E * E;
  let out = b[0]!;
  for (let i = 0; i < L; i++) {
    const input = out;
    out = b[i]!;
    const attn = a.downBlockTypes[i] === "AttnDownBlock2D";
    for (let j = 0; j < T; j++) n += resnet(j === 0 ? input : out, out, pixels(i)) + (attn ? attention(out, a.attentionHeadDim ?? out, pixels(i)) : 0);
    if (i < L - 1) n += attn && a.downsampleType === "resnet" ? resnet(out, out, pixels(i + 1)) : conv3(out, out, pixels(i + 1));
  }
  if (a.midBlockType !== null) {
    const c = b[L - 1]!;
    const P = pixels(L - 1);
    n += 2 * resnet(c, c, P) + (a.addAttention ? attention(c, a.attentionHeadDim ?? c, P) : 0);
  }
  const rev = [...b].reverse();
  out = rev[0]!;
  for (let i = 0; i < L; i++) {
    const level = L - 1 - i;
    const prev = out;
    out = rev[i]!;
    const input = rev[Math.min(i + 1, L - 1)]!;
    const attn = a.upBlockTypes[i] === "AttnUpBlock2D";
    for (let j = 0; j <= T; j++) {
      const cin = (j === 0 ? prev : out) + (j === T ? input : out);
      n += resnet(cin, out, pixels(level)) + (attn ? attention(out, a.attentionHeadDim ?? out, pixels(level)) : 0);
    }
    if (i < L - 1) n += attn && a.upsampleType === "resnet" ? resnet(out, out, pixels(level - 1)) : conv3(out, out, pixels(level - 1));
  }
  return n + conv3(b[0]!, a.outChannels, pixels(0));
}

// ---------------------------------------------------------------------------------------------------------
// What a teacher folder says about its network and classes.

export interface TeacherNetwork {
  /** `<teacher>/unet/config.json` */
  configFile: string;
  arch: UNet2DArch | null;
  /** why the network cannot be sized (arch null) */
  unknown: string | null;
  /** the classes the teacher was trained on: dmd2_teacher.json's num_classes, else num_class_embeds; null: unconditional */
  numClasses: number | null;
  /** the null class (classifier-free guidance), from dmd2_teacher.json; null: none */
  nullClass: number | null;
  /** false when the class layout could not be read (then `unknown` says why) */
  classesRead: boolean;
}

/** A JSON file, or why not: "missing" or "not readable JSON (...)". */
export function readJson(file: string): { value: unknown } | { error: string } {
  try {
    return { value: JSON.parse(readFileSync(file, "utf8")) as unknown };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return { error: err.code === "ENOENT" ? "missing" : `not readable JSON (${err.message.split("\n")[0]})` };
  }
}

/**
 * The class layout of the teacher folder `dir` (docs/pipeline.md §2): `dmd2_teacher.json`'s num_classes and
 * null_class when the file is there, else the UNet's num_class_embeds with no null class. An error is one
 * line naming the file.
 */
export function readTeacherClasses(dir: string, unetConfig?: unknown): { numClasses: number | null; nullClass: number | null } | { error: string } {
  const meta = path.join(dir, TEACHER_META);
  if (existsSync(meta)) {
    const json = readJson(meta);
    if ("error" in json) return { error: `${meta} is ${json.error}` };
    const v = (typeof json.value === "object" && json.value !== null ? json.value : {}) as Obj;
    const k: unknown = v.num_classes ?? null;
    const nullClass: unknown = v.null_class ?? null;
    if (k !== null && !isCount(k)) return { error: `${meta}: num_classes is ${JSON.stringify(k)}, expected a positive whole number or null` };
    if (nullClass !== null && nullClass !== k) return { error: `${meta}: null_class is ${JSON.stringify(nullClass)}, expected num_classes (${String(k)}) or null` };
    return { numClasses: k as number | null, nullClass: nullClass as number | null };
  }
  let config = unetConfig;
  if (config === undefined) {
    const json = readJson(path.join(dir, UNET_CONFIG));
    if ("error" in json) return { error: `${path.join(dir, UNET_CONFIG)} is ${json.error}` };
    config = json.value;
  }
  const embeds: unknown = (config as Obj | null)?.num_class_embeds ?? null;
  if (embeds !== null && !isCount(embeds)) return { error: `${path.join(dir, UNET_CONFIG)}: num_class_embeds is ${JSON.stringify(embeds)}, expected a positive whole number or null` };
  return { numClasses: embeds, nullClass: null };
}

/** The network and classes of the diffusers teacher folder `dir`, as far as its JSON files tell. */
export function readTeacherNetwork(dir: string): TeacherNetwork {
  const configFile = path.join(dir, UNET_CONFIG);
  const json = readJson(configFile);
  if ("error" in json) return { configFile, arch: null, unknown: `${configFile} is ${json.error}`, numClasses: null, nullClass: null, classesRead: false };
  const arch = unet2dArch(json.value);
  const classes = readTeacherClasses(dir, json.value);
  if ("error" in classes) return { configFile, arch: null, unknown: classes.error, numClasses: null, nullClass: null, classesRead: false };
  if ("unknown" in arch) return { configFile, arch: null, unknown: `${configFile}: ${arch.unknown}`, ...classes, classesRead: true };
  return { configFile, arch: arch.arch, unknown: null, ...classes, classesRead: true };
}
