// What the plan knows of the images and the networks before any worker runs: the data source's image shape
// and classes (docs/pipeline.md §1) and the teacher's network (generator and fake score are copies of it),
// sized from the recipe (the built-in TinyUNet, params.ts) or from a diffusers teacher's unet/config.json
// (unet2d.ts). Whatever only the worker can find out (a folder's images) is said to be unknown, not guessed.

import path from "node:path";
import type { Recipe } from "../recipe/types.js";
import { headParams, unetActivationsPerSample, unetArch, unetArchProblem, unetFeatures, unetParams, type UNetArch } from "./params.js";
import { textFamily, type TextFamily } from "../recipe/teacherFolder.js";
import { loraPlan, type LoraPlan } from "./lora.js";
import { componentShapes } from "./safetensors.js";
import type { TextTensorSizes } from "./tensors.js";
import { readTextPipeline } from "./textPipeline.js";
import { readTeacherNetwork, unet2dActivationsPerSample, unet2dFeatures, unet2dParams, unet2dSizeProblem, type UNet2DArch } from "./unet2d.js";

export type Shape = [number, number, number];

export interface DataPlan {
  source: Recipe["data"]["source"];
  /** (C, H, W); null: unknown until the worker reads the data (a folder) */
  imageShape: Shape | null;
  /** the data's classes; null: none (unconditional) or unknown, see classesKnown */
  numClasses: number | null;
  classesKnown: boolean;
  /** one line: where the shape and classes come from */
  note: string;
}

export interface NetworkPlan {
  /** builtin: the TinyUNet; diffusers: a UNet2DModel folder; text-to-image: a StableDiffusion(XL)Pipeline folder */
  kind: "builtin" | "diffusers" | "text-to-image";
  /** where the architecture comes from: "teacher.builtin" or the teacher's unet/config.json */
  from: string;
  /** the built-in TinyUNet's arch (kind builtin) */
  tiny: UNetArch | null;
  /** the diffusers UNet2DModel's arch (kind diffusers), null when its config cannot be sized */
  unet2d: UNet2DArch | null;
  /** (C, H, W) the networks take and make; null: unknown */
  imageShape: Shape | null;
  /** the classes the networks are conditioned on (null: unconditional) */
  numClasses: number | null;
  /** whether class index numClasses is a null class (classifier-free guidance) */
  nullClass: boolean;
  /** the UNet's parameters; null: unknown (see unknown) */
  params: number | null;
  /** text-to-image: where the UNet's count was read (its safetensors headers) and the pipeline's family */
  text: { family: TextFamily; weightFiles: string[] } | null;
  /** the text step tensors' sizes (text-to-image); null: none, or unknown */
  textTensors: TextTensorSizes | null;
  /** the generator's LoRA adapters (generator.lora); null: the whole UNet trains */
  lora: LoraPlan | null;
  /** frozen networks the generator's worker holds beside its UNet (a pipeline's text encoders and VAE) */
  frozen: { name: string; params: number }[];
  /** the mid block / bottleneck the discriminator head reads */
  features: { channels: number; size: number } | null;
  discriminatorHeadParams: number | null;
  /** float32 values one forward pass keeps per sample (whole network; up to the bottleneck) */
  activationsPerSample: number | null;
  encoderActivationsPerSample: number | null;
  /** why the parameter counts are unknown; null when they are known */
  unknown: string | null;
  /** why the activations are unknown while the parameters are known; null otherwise */
  activationsUnknown: string | null;
}

export interface ShapeProblem {
  subject: string;
  message: string;
  fix?: string;
}

/** The data source's images and classes, as far as the CLI can tell without reading the data. */
export function dataPlan(r: Recipe): DataPlan {
  switch (r.data.source) {
    case "gmm": {
      const s = r.data.gmm.image_size;
      return { source: "gmm", imageShape: [1, s, s], numClasses: r.data.gmm.num_classes, classesKnown: true, note: "data.gmm.*" };
    }
    case "digits":
      return { source: "digits", imageShape: [1, 8, 8], numClasses: 10, classesKnown: true, note: "scikit-learn's load_digits()" };
    case "folder":
      return {
        source: "folder",
        imageShape: null,
        numClasses: null,
        classesKnown: false,
        note: `image size and classes unknown until the worker reads ${r.data.folder.path ?? "the folder"}`,
      };
    case "prompts":
      return { source: "prompts", imageShape: null, numClasses: null, classesKnown: true, note: `text prompts (${r.data.prompts.file ?? "data.prompts.file"}); latents of the teacher's VAE` };
  }
}

const shapeText = (s: Shape) => s.join("x");

/** The networks of this recipe, and the problems the workers would refuse them for. */
export function networkPlan(r: Recipe, data: DataPlan): { network: NetworkPlan; problems: ShapeProblem[] } {
  const problems: ShapeProblem[] = [];
  if (r.teacher.source === "builtin") {
    const arch = unetArch(r);
    const why = unetArchProblem(arch);
    if (why !== null) problems.push({ subject: "data.gmm.image_size", message: why, fix: "use a multiple of 4 (4, 8, ..., 32)" });
    const feat = unetFeatures(arch);
    return {
      problems,
      network: {
        kind: "builtin",
        from: "teacher.builtin",
        tiny: arch,
        unet2d: null,
        imageShape: [arch.inChannels, arch.imageSize, arch.imageSize],
        numClasses: arch.numClasses,
        nullClass: arch.numClasses !== null,
        params: unetParams(arch),
        text: null,
        textTensors: null,
        lora: null,
        frozen: [],
        features: feat,
        discriminatorHeadParams: headParams(feat.channels, feat.size),
        activationsPerSample: unetActivationsPerSample(arch),
        encoderActivationsPerSample: unetActivationsPerSample(arch, true),
        unknown: null,
        activationsUnknown: null,
      },
    };
  }
  const family = textFamily(r.teacher.path!);
  if (family !== null) return textNetworkPlan(r, r.teacher.path!, family, problems);

  const t = readTeacherNetwork(r.teacher.path!);
  const a = t.arch;
  const size = a?.imageSize ?? null;
  const imageShape: Shape | null = a !== null && size !== null ? [a.inChannels, size, size] : null;
  const network: NetworkPlan = {
    kind: "diffusers",
    from: t.configFile,
    tiny: null,
    unet2d: a,
    imageShape,
    numClasses: t.numClasses,
    nullClass: t.nullClass !== null,
    params: a === null ? null : unet2dParams(a),
    text: null,
    textTensors: null,
    lora: null,
    frozen: [],
    features: null,
    discriminatorHeadParams: null,
    activationsPerSample: null,
    encoderActivationsPerSample: null,
    unknown: t.unknown,
    activationsUnknown: null,
  };
  if (a !== null && r.generator.lora.rank !== null) {
    // the adapters are counted from the weights' tensor names (the config does not name the layers)
    const w = componentShapes(r.teacher.path!, "unet", "diffusion_pytorch_model");
    if ("unknown" in w) network.unknown = `generator.lora: ${w.unknown}`;
    else network.lora = loraChecked(r, w.shapes, problems);
  }
  if (a !== null && size === null) network.unknown = `${t.configFile} has no sample_size: the image size, and so the activations and the discriminator head, are unknown`;
  if (a !== null && size !== null) {
    const why = unet2dSizeProblem(a, size);
    if (why !== null) problems.push({ subject: "teacher", message: `${t.configFile}: ${why}` });
    const feat = unet2dFeatures(a, size);
    network.features = feat;
    network.discriminatorHeadParams = headParams(feat.channels, feat.size);
    network.activationsPerSample = unet2dActivationsPerSample(a, size);
    network.encoderActivationsPerSample = unet2dActivationsPerSample(a, size, true);
  }
  // the workers check the teacher against the data (roles/common.py check_teacher_fits); say so now where the CLI can tell
  if (data.imageShape !== null && imageShape !== null && shapeText(data.imageShape) !== shapeText(imageShape)) {
    problems.push({
      subject: "teacher",
      message: `the teacher makes ${shapeText(imageShape)} images but data.source ${data.source} has ${shapeText(data.imageShape)}; the workers will refuse it`,
      fix: "use a teacher trained on this data (dmd2 train-teacher with the same data group)",
    });
  }
  if (data.classesKnown && t.classesRead && data.numClasses !== t.numClasses) {
    problems.push({
      subject: "teacher",
      message: `the teacher has ${t.numClasses ?? "no"} classes but data.source ${data.source} has ${data.numClasses ?? "none"}; the workers will refuse it`,
      fix: "use a teacher trained on this data (dmd2 train-teacher with the same data group)",
    });
  }
  return { network, problems };
}

/** The recipe's LoRA adapters on a UNet with these tensors; a target matching nothing is a problem (the worker refuses it). */
function loraChecked(r: Recipe, shapes: Parameters<typeof loraPlan>[1], problems: ShapeProblem[]): LoraPlan | null {
  const lora = loraPlan(r, shapes);
  for (const t of lora?.unmatched ?? []) {
    problems.push({ subject: "generator.lora.target_modules", message: `${JSON.stringify(t)} matches no Linear or Conv2d layer of the teacher's UNet; the generator will refuse it`, fix: "name module-name suffixes the UNet has, e.g. to_q, to_k, to_v, to_out.0, conv1" });
  }
  return lora;
}

/**
 * A StableDiffusion(XL)Pipeline teacher (data.source prompts): parameter counts from the weights' safetensors
 * headers (textPipeline.ts), the latent shape and the discriminator head from unet/config.json. Activations are
 * not modelled for UNet2DConditionModel (activationsUnknown says so); the memory estimate is then a lower bound.
 */
function textNetworkPlan(r: Recipe, dir: string, family: TextFamily, problems: ShapeProblem[]): { network: NetworkPlan; problems: ShapeProblem[] } {
  const t = readTextPipeline(dir, family);
  const network: NetworkPlan = {
    kind: "text-to-image",
    from: t.configFile,
    tiny: null,
    unet2d: null,
    imageShape: t.latentShape,
    numClasses: null,
    nullClass: false,
    params: t.unknown === null ? t.unetParams : null,
    text: { family, weightFiles: t.unetFiles },
    textTensors: t.textTensors,
    lora: null,
    frozen: t.frozen,
    features: t.features,
    discriminatorHeadParams: t.features === null ? null : headParams(t.features.channels, t.features.size),
    activationsPerSample: null,
    encoderActivationsPerSample: null,
    unknown: t.unknown,
    activationsUnknown: "what a UNet2DConditionModel's forward pass keeps is not modelled (weights, grads and AdamW are exact, from the safetensors headers)",
  };
  // the workers' from_pretrained loads the default weight files: a folder saved with variant= fails at set-up
  for (const v of t.variantOnly) {
    problems.push({ subject: "teacher", message: `${path.join(dir, v.sub)} has only variant weights (${v.files.join(", ")}); the workers load the default files and will refuse it`, fix: "save the pipeline again without variant= (DiffusionPipeline.from_pretrained(folder, variant=...).save_pretrained(new_folder)) or fetch the non-variant files" });
  }
  if (t.unknown === null && t.features === null) network.unknown = `${t.configFile}: sample_size is not divisible by 2^(len(block_out_channels) - 1); the workers will refuse it`;
  if (t.unetShapes !== null && network.unknown === null) network.lora = loraChecked(r, t.unetShapes, problems);
  return { network, problems };
}

/** The shape tensors between processes have: the networks', else the data's; null when neither is known. */
export function imageShapeOf(data: DataPlan, network: NetworkPlan): Shape | null {
  return network.imageShape ?? data.imageShape;
}
