// The resolved recipe: every key present (docs/recipe.md "Resolved form"). Workers receive this object.

export type Placement = "per_role" | "colocated";
export type Role = "teacher" | "generator" | "fake_score" | "discriminator";
export const ROLES: readonly Role[] = ["teacher", "generator", "fake_score", "discriminator"];

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
  heartbeat: { interval_s: number; timeout_s: number };
  data: { source: "gmm"; gmm: { num_classes: number; image_size: number; std: number } };
  teacher: {
    source: "builtin";
    builtin: { channels: number; train_steps: number; batch_size: number; lr: number; label_dropout: number };
  };
  diffusion: {
    num_train_timesteps: number;
    beta_schedule: "linear" | "scaled_linear";
    beta_start: number;
    beta_end: number;
    prediction_type: "epsilon" | "v_prediction" | "sample";
  };
  generator: { steps: number; conditioning_timestep: number; timesteps: number[]; lr: number };
  fake_score: { lr: number };
  dmd: { weight: number; real_guidance_scale: number; min_t: number; max_t: number };
  ttur: { ratio: number };
  gan: { enabled: boolean; generator_weight: number; discriminator_weight: number; warmup_steps: number; diffusion_gan: boolean };
  optim: { betas: [number, number]; weight_decay: number; warmup_steps: number; grad_clip: number };
  train: { steps: number; batch_size: number; log_every: number; checkpoint_every: number; keep_last: number; on_nonfinite: "stop" | "skip"; sample_every: number };
  restart: { max: number };
  sample: { num: number; seed: number };
}
