// The resolved recipes: every key present (docs/recipe.md "Resolved form", docs/pipeline.md §3). Workers receive
// these objects; paths in them are absolute.

export type Placement = "per_role" | "colocated";
export type Role = "teacher" | "generator" | "fake_score" | "discriminator";
export const ROLES: readonly Role[] = ["teacher", "generator", "fake_score", "discriminator"];

export type DataSource = "gmm" | "digits" | "folder" | "prompts";

/** docs/pipeline.md §1 and docs/adapters.md §6. Paths are absolute (or null when unused). */
export interface DataConfig {
  source: DataSource;
  gmm: { num_classes: number; image_size: number; std: number };
  folder: { path: string | null; channels: 1 | 3 };
  /** text-to-image teachers: the prompts file the generator draws from, the GAN's real images */
  prompts: { file: string | null; images: string | null };
}

export type BetaSchedule = "linear" | "scaled_linear";
export type PredictionType = "epsilon" | "v_prediction" | "sample";

export interface DiffusionConfig {
  num_train_timesteps: number;
  beta_schedule: BetaSchedule;
  beta_start: number;
  beta_end: number;
  prediction_type: PredictionType;
}

export type Precision = "fp32" | "bf16";
/** Roles with a placement of their own; the discriminator follows fake_score (it is a head on its network). */
export type PlacedRole = "teacher" | "generator" | "fake_score";
export const PLACED_ROLES: readonly PlacedRole[] = ["teacher", "generator", "fake_score"];

/** One role's resolved placement (docs/recipe.md "Placement"): one device per replica. */
export interface RolePlacement {
  device: string[];
  precision: Precision;
  gradient_checkpointing: boolean;
  replicas: number;
  backend: "gloo" | "nccl";
  /** replicas: "replicate" (whole copies, gradients all-reduced) or "fsdp" (parameters, gradients and optimizer state sharded) */
  strategy: "replicate" | "fsdp";
  /** its workers are started on other hosts with `dmd2 worker --join` */
  join: boolean;
}

export interface Recipe {
  version: number;
  name: string;
  seed: number;
  run_dir: string;
  placement: Placement;
  python: string | null;
  torch_threads: number;
  transport: "ipc" | "tcp";
  device: string;
  precision: Precision;
  tf32: boolean;
  gradient_checkpointing: boolean;
  roles: Record<PlacedRole, RolePlacement>;
  heartbeat: { interval_s: number; timeout_s: number };
  join: { bind: string; port: number; timeout_s: number };
  data: DataConfig;
  teacher: {
    source: "builtin" | "diffusers";
    builtin: { channels: number; train_steps: number; batch_size: number; lr: number; label_dropout: number };
    /** the diffusers teacher folder (absolute); null with the built-in teacher */
    path: string | null;
  };
  diffusion: DiffusionConfig;
  generator: { steps: number; conditioning_timestep: number; timesteps: number[]; lr: number; ema_decay: number; last_step_only: boolean; backprop_through_chain: boolean; clip_sample: boolean;
    /** rank null: no LoRA (the whole network trains) */
    lora: { rank: number | null; alpha: number | null; target_modules: string[] | null };
  };
  fake_score: { lr: number };
  dmd: { weight: number; real_guidance_scale: number; min_t: number; max_t: number };
  ttur: { ratio: number };
  gan: { enabled: boolean; generator_weight: number; discriminator_weight: number; warmup_steps: number; diffusion_gan: boolean };
  optim: { betas: [number, number]; weight_decay: number; warmup_steps: number; grad_clip: number };
  train: { steps: number; batch_size: number; log_every: number; checkpoint_every: number; keep_last: number; on_nonfinite: "stop" | "skip"; sample_every: number };
  restart: { max: number };
  sample: { num: number; seed: number };
  /** W&B (src/run/wandb.ts): off while project is null */
  logging: { wandb: { project: string | null; entity: string | null; mode: "online" | "offline" | "disabled" } };
}

/** `dmd2 train-teacher`'s resolved recipe (docs/pipeline.md §3). */
export interface TeacherRecipe {
  version: number;
  kind: "teacher";
  name: string;
  seed: number;
  /** the teacher folder to write (absolute) */
  out: string;
  python: string | null;
  torch_threads: number;
  device: string;
  data: DataConfig;
  diffusion: DiffusionConfig;
  model: { block_out_channels: number[]; layers_per_block: number; norm_num_groups: number };
  train: {
    steps: number;
    batch_size: number;
    lr: number;
    warmup_steps: number;
    weight_decay: number;
    grad_clip: number;
    ema_decay: number;
    label_dropout: number;
    log_every: number;
  };
}
