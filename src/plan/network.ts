// What the plan knows of the images and the networks before any worker runs: the data source's image shape
// and classes (docs/pipeline.md §1) and the teacher's network (generator and fake score are copies of it),
// sized from the recipe (the built-in TinyUNet, params.ts) or from a diffusers teacher's unet/config.json
// (unet2d.ts). Whatever only the worker can find out (a folder's images) is said to be unknown, not guessed.

import type { Recipe } from "../recipe/types.js";
import { headParams, unetActivationsPerSample, unetArch, unetArchProblem, unetFeatures, unetParams, type UNetArch } from "./params.js";
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
  kind: "builtin" | "diffusers";
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
  /** the mid block / bottleneck the discriminator head reads */
  features: { channels: number; size: number } | null;
  discriminatorHeadParams: number | null;
  /** float32 values one forward pass keeps per sample (whole network; up to the bottleneck) */
  activationsPerSample: number | null;
  encoderActivationsPerSample: number | null;
  /** why the sizes are unknown; null when they are known */
  unknown: string | null;
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
        features: feat,
        discriminatorHeadParams: headParams(feat.channels, feat.size),
        activationsPerSample: unetActivationsPerSample(arch),
        encoderActivationsPerSample: unetActivationsPerSample(arch, true),
        unknown: null,
      },
    };
  }

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
    features: null,
    discriminatorHeadParams: null,
    activationsPerSample: null,
    encoderActivationsPerSample: null,
    unknown: t.unknown,
  };
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

/** The shape tensors between processes have: the networks', else the data's; null when neither is known. */
export function imageShapeOf(data: DataPlan, network: NetworkPlan): Shape | null {
  return network.imageShape ?? data.imageShape;
}
