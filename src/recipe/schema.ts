// The recipe schemas as data (docs/recipe.md and docs/pipeline.md §3 are their prose twins): a distillation
// recipe and a teacher recipe, which share the data, diffusion and machine keys. Each leaf says its type, its
// range and its default; validate.ts walks a schema once, collecting every problem, and fills in defaults.
// The TypeScript types of a recipe (types.ts) are derived from these objects by SchemaValue below, and the
// Python dataclasses (config.py) are checked against them by a test (scripts/dump-schema.js writes the fixture):
// a key is written here once.

/** `nullable`: null is allowed in a recipe file. `filled`: null there means "work it out": resolve.ts fills it,
 * so the resolved recipe always holds a value (a nullable leaf without `filled` may stay null when resolved). */
interface Nullable {
  nullable?: boolean;
  filled?: boolean;
}
export type Leaf =
  | ({ kind: "int"; min?: number; max?: number; oneOf?: readonly number[]; default: number | null } & Nullable)
  | ({ kind: "number"; min?: number; max?: number; exclusiveMin?: boolean; exclusiveMax?: boolean; default: number | null } & Nullable)
  | ({ kind: "string"; pattern?: RegExp; patternHelp?: string; default: string | null } & Nullable)
  /** resolvedValues: what resolve.ts turns the values into (e.g. backend auto becomes gloo or nccl) */
  | ({ kind: "enum"; values: readonly string[]; resolvedValues?: readonly string[]; default: string | null } & Nullable)
  | ({ kind: "bool"; default: boolean | null } & Nullable)
  /** one device or a list of them; resolved: a list, one per replica */
  | ({ kind: "devices"; default: readonly string[] | null } & Nullable)
  | ({ kind: "path"; default: string | null } & Nullable)
  | ({ kind: "intList"; minLength?: number; maxLength?: number; min?: number; default: readonly number[] | null } & Nullable)
  | ({ kind: "stringList"; minLength?: number; default: readonly string[] | null } & Nullable)
  | { kind: "numberPair"; min?: number; max?: number; default: readonly [number, number] }
  /** training stages (issue 23): a list of { from_step, set: { "<dotted key>": value } }, `keys` the settable ones */
  | { kind: "stages"; keys: readonly string[]; default: readonly [] };

export type Fields = { readonly [key: string]: Node };
export interface Group<F extends Fields = Fields> {
  kind: "group";
  fields: F;
}
export type Node = Leaf | Group;

/** A group of keys; `const` keeps each leaf's literal types, which SchemaValue reads. */
export const group = <const F extends Fields>(fields: F): Group<F> => ({ kind: "group", fields });

// ---------------------------------------------------------------------------------------------------------------
// The value a schema describes, as a type. "checked": what validate.ts's schema pass returns (defaults filled,
// `filled` leaves still null); "resolved": what resolve.ts returns and the workers receive.

export type Stage = "checked" | "resolved";

type LeafValue<L, S extends Stage> =
  L extends { kind: "int" | "number"; oneOf: readonly (infer V)[] } ? V
  : L extends { kind: "int" | "number" } ? number
  : L extends { kind: "string" | "path" } ? string
  : L extends { kind: "enum"; resolvedValues: readonly (infer V)[] } ? (S extends "resolved" ? V : L extends { values: readonly (infer W)[] } ? W : never)
  : L extends { kind: "enum"; values: readonly (infer V)[] } ? V
  : L extends { kind: "bool" } ? boolean
  : L extends { kind: "devices" } ? (S extends "resolved" ? string[] : string | string[])
  : L extends { kind: "intList" } ? number[]
  : L extends { kind: "stringList" } ? string[]
  : L extends { kind: "numberPair" } ? [number, number]
  : L extends { kind: "stages" } ? TrainingStage[]
  : never;

type IsNull<L, S extends Stage> = L extends { nullable: true } ? (S extends "resolved" ? (L extends { filled: true } ? never : null) : null) : never;

export type SchemaValue<N, S extends Stage = "resolved"> =
  N extends { kind: "group"; fields: infer F } ? { -readonly [K in keyof F]: SchemaValue<F[K], S> }
  : LeafValue<N, S> | IsNull<N, S>;

/** From step `from_step` on (0-based, until a later stage), these keys take these values (docs/recipe.md "Stages"). */
export interface TrainingStage {
  from_step: number;
  set: Record<string, number | boolean>;
}

/**
 * The keys a stage may set: those the coordinator sends in each step's op arguments (the learning rates, loss
 * weights, guidance and whether the GAN terms run), so a change takes effect at its step with nothing rebuilt.
 * Anything the workers build from at setup (networks, data, optimizer hyper-parameters, the TTUR ratio that decides
 * which steps update the generator) cannot change mid-run.
 */
export const STAGE_KEYS = ["generator.lr", "fake_score.lr", "dmd.weight", "dmd.real_guidance_scale", "gan.enabled", "gan.generator_weight", "gan.discriminator_weight"] as const;

export const RECIPE_SCHEMA_VERSION = 1;

const name = { kind: "string", pattern: /^[A-Za-z0-9_.-]+$/, patternHelp: "letters, digits, '_', '.', '-'", default: null, nullable: true, filled: true } as const satisfies Leaf;
const seed = { kind: "int", min: 0, max: 2 ** 31 - 1, default: 0 } as const satisfies Leaf;
const python = { kind: "path", default: null, nullable: true } as const satisfies Leaf;
const torchThreads = { kind: "int", min: 1, max: 256, default: null, nullable: true, filled: true } as const satisfies Leaf;
export const DEVICE_PATTERN = /^(cpu|cuda(:\d+)?)$/;
const device = { kind: "string", pattern: DEVICE_PATTERN, patternHelp: "cpu, cuda or cuda:N", default: "cpu" } as const satisfies Leaf;

/** Where one role runs (docs/recipe.md "Placement"); null: the top-level key of the same name. The discriminator
 * is a head on the fake score's network and follows `roles.fake_score`. */
const rolePlacement = () =>
  group({
    device: { kind: "devices", default: null, nullable: true, filled: true },
    precision: { kind: "enum", values: ["fp32", "bf16"], default: null, nullable: true, filled: true },
    gradient_checkpointing: { kind: "bool", default: null, nullable: true, filled: true },
    replicas: { kind: "int", min: 1, max: 64, default: null, nullable: true, filled: true },
    backend: { kind: "enum", values: ["auto", "gloo", "nccl"], resolvedValues: ["gloo", "nccl"], default: "auto" },
    strategy: { kind: "enum", values: ["replicate", "fsdp"], default: "replicate" },
    join: { kind: "bool", default: false },
  });

/** Where real images come from (docs/pipeline.md §1), or the prompts of a text-to-image teacher (docs/adapters.md §6). */
export const dataSchema = group({
  source: { kind: "enum", values: ["gmm", "digits", "folder", "prompts"], default: "gmm" },
  gmm: group({
    num_classes: { kind: "int", min: 2, max: 10, default: 4 },
    image_size: { kind: "int", min: 4, max: 32, default: 8 },
    std: { kind: "number", min: 0, exclusiveMin: true, max: 10, default: 0.1 },
  }),
  folder: group({
    path: { kind: "path", default: null, nullable: true },
    channels: { kind: "int", oneOf: [1, 3], default: 1 },
  }),
  prompts: group({
    file: { kind: "path", default: null, nullable: true },
    images: { kind: "path", default: null, nullable: true },
  }),
});

export const diffusionSchema = group({
  num_train_timesteps: { kind: "int", min: 2, max: 100000, default: 1000 },
  beta_schedule: { kind: "enum", values: ["linear", "scaled_linear"], default: "scaled_linear" },
  beta_start: { kind: "number", min: 0, max: 1, exclusiveMin: true, exclusiveMax: true, default: 0.00085 },
  beta_end: { kind: "number", min: 0, max: 1, exclusiveMin: true, exclusiveMax: true, default: 0.012 },
  prediction_type: { kind: "enum", values: ["epsilon", "v_prediction", "sample"], default: "epsilon" },
});

export const recipeSchema = group({
  name,
  seed,
  run_dir: { kind: "path", default: null, nullable: true, filled: true },
  placement: { kind: "enum", values: ["per_role", "colocated"], default: "per_role" },
  python,
  torch_threads: torchThreads,
  transport: { kind: "enum", values: ["ipc", "tcp"], default: "ipc" },
  device,
  precision: { kind: "enum", values: ["fp32", "bf16"], default: "fp32" },
  tf32: { kind: "bool", default: false },
  gradient_checkpointing: { kind: "bool", default: false },
  roles: group({
    teacher: rolePlacement(),
    generator: rolePlacement(),
    fake_score: rolePlacement(),
  }),
  heartbeat: group({
    interval_s: { kind: "number", min: 0, exclusiveMin: true, max: 60, default: 0.5 },
    timeout_s: { kind: "number", min: 0, exclusiveMin: true, max: 3600, default: 30 },
  }),
  join: group({
    bind: { kind: "string", pattern: /^(\d{1,3}(\.\d{1,3}){3}|localhost)$/, patternHelp: "an IPv4 address such as 127.0.0.1 or 0.0.0.0", default: "127.0.0.1" },
    port: { kind: "int", min: 0, max: 65535, default: 0 },
    timeout_s: { kind: "number", min: 0, exclusiveMin: true, max: 86400, default: 300 },
  }),
  data: dataSchema,
  teacher: group({
    source: { kind: "enum", values: ["builtin", "diffusers"], default: "builtin" },
    builtin: group({
      channels: { kind: "int", min: 8, max: 512, default: 16 },
      train_steps: { kind: "int", min: 1, default: 1500 },
      batch_size: { kind: "int", min: 1, max: 65536, default: 128 },
      lr: { kind: "number", min: 0, exclusiveMin: true, max: 1, default: 0.002 },
      label_dropout: { kind: "number", min: 0, max: 1, exclusiveMax: true, default: 0.1 },
    }),
    path: { kind: "path", default: null, nullable: true },
    // derived by resolve.ts from the teacher folder and the data (src/recipe/conditioning.ts); a recipe leaves them out
    family: { kind: "string", pattern: /^[a-z0-9_.-]+$/, patternHelp: "a family name such as sd15: lower-case letters, digits, '_', '.', '-'", default: null, nullable: true, filled: true },
    conditioning: { kind: "stringList", default: null, nullable: true, filled: true },
  }),
  diffusion: diffusionSchema,
  generator: group({
    steps: { kind: "int", min: 1, max: 4, default: 1 },
    conditioning_timestep: { kind: "int", min: 0, default: null, nullable: true, filled: true },
    timesteps: { kind: "intList", minLength: 1, maxLength: 4, min: 0, default: null, nullable: true, filled: true },
    lr: { kind: "number", min: 0, exclusiveMin: true, max: 1, default: 1e-4 },
    ema_decay: { kind: "number", min: 0, max: 1, exclusiveMax: true, default: 0 },
    last_step_only: { kind: "bool", default: false },
    backprop_through_chain: { kind: "bool", default: false },
    clip_sample: { kind: "bool", default: false },
    // LoRA adapters on a frozen copy of the teacher (docs/adapters.md §7); rank null: the whole network trains
    lora: group({
      rank: { kind: "int", min: 1, max: 4096, default: null, nullable: true },
      alpha: { kind: "number", min: 0, exclusiveMin: true, default: null, nullable: true },
      target_modules: { kind: "stringList", minLength: 1, default: null, nullable: true },
    }),
  }),
  fake_score: group({
    lr: { kind: "number", min: 0, exclusiveMin: true, max: 1, default: 1e-4 },
  }),
  dmd: group({
    weight: { kind: "number", min: 0, default: 1 },
    real_guidance_scale: { kind: "number", min: 1, max: 100, default: 1 },
    min_t: { kind: "number", min: 0, max: 1, default: 0.02 },
    max_t: { kind: "number", min: 0, max: 1, default: 0.98 },
  }),
  ttur: group({
    ratio: { kind: "int", min: 1, max: 1000, default: 5 },
  }),
  gan: group({
    enabled: { kind: "bool", default: true },
    generator_weight: { kind: "number", min: 0, default: 0.003 },
    discriminator_weight: { kind: "number", min: 0, default: 0.01 },
    warmup_steps: { kind: "int", min: 0, default: 0 },
    diffusion_gan: { kind: "bool", default: true },
  }),
  optim: group({
    betas: { kind: "numberPair", min: 0, max: 0.999999, default: [0.9, 0.999] },
    weight_decay: { kind: "number", min: 0, max: 10, default: 0.01 },
    warmup_steps: { kind: "int", min: 0, default: 20 },
    // issue 23: the warm-up counts training steps (the authors' runs) or each optimizer's own updates (dmd2 <= 0.x)
    warmup_unit: { kind: "enum", values: ["steps", "updates"], default: "steps" },
    grad_clip: { kind: "number", min: 0, exclusiveMin: true, default: 10 },
  }),
  train: group({
    steps: { kind: "int", min: 1, default: 200 },
    batch_size: { kind: "int", min: 1, max: 65536, default: 32 },
    log_every: { kind: "int", min: 1, default: 10 },
    checkpoint_every: { kind: "int", min: 1, default: 100 },
    keep_last: { kind: "int", min: 1, max: 1000, default: 2 },
    on_nonfinite: { kind: "enum", values: ["stop", "skip"], default: "stop" },
    sample_every: { kind: "int", min: 0, default: 0 },
    // issue 23: the collapse alarms (src/run/alarms.ts) warn, or stop the run after a checkpoint
    on_collapse: { kind: "enum", values: ["warn", "stop"], default: "warn" },
  }),
  stages: { kind: "stages", keys: STAGE_KEYS, default: [] },
  restart: group({
    max: { kind: "int", min: 0, max: 1000, default: 0 },
  }),
  sample: group({
    num: { kind: "int", min: 1, max: 256, default: 16 },
    seed: { kind: "int", min: 0, max: 2 ** 31 - 1, default: 1234 },
  }),
  // W&B, optional (src/run/wandb.ts): off while project is null
  logging: group({
    wandb: group({
      project: { kind: "string", default: null, nullable: true },
      entity: { kind: "string", default: null, nullable: true },
      mode: { kind: "enum", values: ["online", "offline", "disabled"], default: "online" },
    }),
  }),
});

/** `dmd2 train-teacher`'s recipe (docs/pipeline.md §3). */
export const teacherRecipeSchema = group({
  name,
  seed,
  out: { kind: "path", default: null, nullable: true, filled: true },
  python,
  torch_threads: torchThreads,
  device,
  data: dataSchema,
  diffusion: diffusionSchema,
  model: group({
    block_out_channels: { kind: "intList", minLength: 1, maxLength: 5, min: 1, default: [32, 64] },
    layers_per_block: { kind: "int", min: 1, max: 8, default: 1 },
    norm_num_groups: { kind: "int", min: 1, max: 512, default: 8 },
  }),
  train: group({
    steps: { kind: "int", min: 1, default: 5000 },
    batch_size: { kind: "int", min: 1, max: 65536, default: 128 },
    lr: { kind: "number", min: 0, exclusiveMin: true, max: 1, default: 1e-3 },
    warmup_steps: { kind: "int", min: 0, default: 100 },
    weight_decay: { kind: "number", min: 0, max: 10, default: 0 },
    grad_clip: { kind: "number", min: 0, exclusiveMin: true, default: 1 },
    ema_decay: { kind: "number", min: 0, max: 1, exclusiveMax: true, default: 0.999 },
    label_dropout: { kind: "number", min: 0, max: 1, exclusiveMax: true, default: 0.1 },
    log_every: { kind: "int", min: 1, default: 100 },
  }),
});

/** `dmd2 eval --data-from`'s schema: only the data group of a recipe of either kind. */
export const dataGroupSchema = group({ data: dataSchema });
