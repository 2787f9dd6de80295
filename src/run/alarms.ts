// Collapse alarms (issue 23; docs/method.md "Alarms"): the coordinator watches the metrics the workers already
// return and says, in one line naming the step, the metric and a fix, when a run is going wrong in one of the ways
// DMD users report most (the GAN and its weights): the discriminator wins outright, the fake score's loss blows
// up, the generator's outputs collapse to one, the DMD gradient explodes. `train.on_collapse: warn` (the default)
// warns once per alarm and goes on; `stop` ends the run after a checkpoint (distill.ts). Pure: no I/O.

import path from "node:path";
import { DmdError } from "../errors.js";

export type AlarmKind = "discriminator_wins" | "fake_score_diverges" | "generator_collapse" | "dmd_grad_explodes";

export interface Alarm {
  kind: AlarmKind;
  /** 0-based step whose metrics raised it */
  step: number;
  metric: string;
  value: number;
  /** the line shown: step, metric, what it means and a suggested fix */
  message: string;
}

/** The bounds (docs/method.md "Alarms"), chosen far outside what the shipped tiny and digits runs show. */
export const ALARM_BOUNDS = {
  /** consecutive GAN updates a discriminator condition must hold */
  patience: 5,
  /** L_D below this (a balanced GAN sits near 2 ln 2 = 1.39) */
  discriminatorLoss: 0.01,
  /** mean fake logit below this: sigmoid(d_fake) < 5e-5, D calls every fake image fake */
  dFakeLogit: -10,
  /** steps in the early windows of x_gen's spread and the DMD gradient norm */
  window: 20,
  /** steps in the fake score's loss window */
  fakeWindow: 5,
  /** the window's mean loss above this many times the lowest window median so far (its noise is ~10x) */
  fakeLossRise: 100,
  /** x_gen's spread across the batch below this fraction of its largest in the first `window` steps */
  outputSpread: 0.01,
  /** the DMD gradient norm above this many times its median over its first `window` (non-zero) values */
  dmdGradRise: 100,
} as const;

const FIX: Record<AlarmKind, string> = {
  discriminator_wins: "lower gan.discriminator_weight (the authors warn above ~1e-2) or fake_score.lr, or turn the GAN on later with a stage",
  fake_score_diverges: "lower fake_score.lr or gan.discriminator_weight, or lengthen optim.warmup_steps",
  generator_collapse: "lower generator.lr or gan.generator_weight (scale it so the GAN gradient is a fraction of the DMD gradient)",
  dmd_grad_explodes: "lower generator.lr, raise ttur.ratio so the fake score keeps up, or check dmd.real_guidance_scale",
};

const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
const fmt = (v: number) => (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(3))));

/** Watches one run's metrics, step by step; each alarm fires once per command (a resumed run starts afresh). */
export class CollapseWatch {
  private fired = new Set<AlarmKind>();
  private dStreak = 0;
  private fakeLosses: number[] = [];
  private bestFakeMean = Infinity;
  private spreads: number[] = [];
  private spreadStreak = 0;
  private dmdNorms: number[] = [];

  /** The alarms raised by step `step`'s metrics (flat names, as in a metrics.jsonl row). */
  observe(step: number, m: Record<string, number | null | undefined>): Alarm[] {
    const out: Alarm[] = [];
    const raise = (kind: AlarmKind, metric: string, value: number, what: string) => {
      if (this.fired.has(kind)) return;
      this.fired.add(kind);
      out.push({ kind, step, metric, value, message: `step ${step + 1}: ${metric} ${fmt(value)}: ${what}; ${FIX[kind]}` });
    };
    const B = ALARM_BOUNDS;
    // the discriminator wins outright (only where its loss was computed: gan_weight > 0 makes d_fake non-zero)
    const lossD = m.loss_gan_d;
    const dFake = m.d_fake;
    if (typeof lossD === "number" && typeof dFake === "number" && (lossD !== 0 || dFake !== 0)) {
      const wins = lossD < B.discriminatorLoss || dFake < B.dFakeLogit;
      this.dStreak = wins ? this.dStreak + 1 : 0;
      if (this.dStreak >= B.patience) {
        if (dFake < B.dFakeLogit) raise("discriminator_wins", "d_fake", dFake, `the discriminator's fake logits are saturated for ${B.patience} steps (it wins outright and G's GAN gradient vanishes)`);
        else raise("discriminator_wins", "loss_gan_d", lossD, `the discriminator's loss is near 0 for ${B.patience} steps (it wins outright)`);
      }
    }
    // the fake score's denoising loss: a window mean far above the best one (diverging, or oscillating wildly)
    const lossFake = m.loss_fake;
    if (lossFake === null) raise("fake_score_diverges", "loss_fake", NaN, "the fake score's loss is not finite");
    else if (typeof lossFake === "number") {
      this.fakeLosses.push(lossFake);
      if (this.fakeLosses.length > B.fakeWindow) this.fakeLosses.shift();
      if (this.fakeLosses.length === B.fakeWindow) {
        const mean = this.fakeLosses.reduce((a, b) => a + b, 0) / B.fakeWindow;
        this.bestFakeMean = Math.min(this.bestFakeMean, median(this.fakeLosses));
        if (mean > B.fakeLossRise * this.bestFakeMean) {
          raise("fake_score_diverges", "loss_fake", mean, `its mean over ${B.fakeWindow} steps is ${fmt(mean / this.bestFakeMean)}x its lowest median (${fmt(this.bestFakeMean)}): the fake score no longer tracks the generator`);
        }
      }
    }
    // the generator's outputs collapse: their spread across the batch near zero
    const spread = m.x_gen_std;
    if (typeof spread === "number") {
      if (this.spreads.length < B.window) this.spreads.push(spread);
      const ref = Math.max(...this.spreads);
      const low = spread < B.outputSpread * ref || spread === 0;
      this.spreadStreak = low ? this.spreadStreak + 1 : 0;
      if (this.spreadStreak >= B.patience) {
        raise("generator_collapse", "x_gen_std", spread, `the generator's outputs hardly differ across the batch (${fmt(spread / ref)} of their early spread, for ${B.patience} steps): it has collapsed to one image`);
      }
    }
    // the DMD gradient norm explodes (its first values can be 0: the fake score starts as the teacher)
    const g = m.dmd_grad_norm;
    if (g === null) raise("dmd_grad_explodes", "dmd_grad_norm", NaN, "the DMD gradient is not finite");
    else if (typeof g === "number" && g > 0) {
      if (this.dmdNorms.length >= B.window) {
        const ref = median(this.dmdNorms);
        if (g > B.dmdGradRise * ref) raise("dmd_grad_explodes", "dmd_grad_norm", g, `${fmt(g / ref)}x its early median (${fmt(ref)})`);
      } else this.dmdNorms.push(g);
    }
    return out;
  }
}

/** The alarms of a step as metrics.jsonl / TensorBoard scalars (family "alarm"): alarm_<kind> = 1. */
export function alarmMetrics(alarms: Alarm[]): Record<string, number> {
  return Object.fromEntries(alarms.map((a) => [`alarm_${a.kind}`, 1]));
}

/** `train.on_collapse: stop`: the run ended at an alarm, after writing a checkpoint (exit 1, one line). */
export class CollapseError extends DmdError {
  constructor(readonly alarm: Alarm, checkpoint: string) {
    super(`stopped (train.on_collapse: stop) at ${alarm.message}; checkpoint ${path.relative(process.cwd(), checkpoint) || checkpoint} kept`, { code: "COLLAPSE", exitCode: 1 });
  }
}
