// What `dmd2 train-teacher` shows while the teacher trains, from the job's start and progress events
// (docs/pipeline.md §3): a cli-progress bar on a terminal, a timestamped line per progress event otherwise,
// the events themselves with --json. Lines printed while the bar runs (--verbose) go above it.

import cliProgress from "cli-progress";
import { color as chalk } from "../colors.js";
import type { Reporter } from "./reporter.js";

export interface TrainStart {
  steps: number;
  params: number;
  /** null: every batch is a fresh draw (gmm) */
  train_images: number | null;
}

export interface TrainStep {
  step: number;
  steps: number;
  loss: number;
  lr: number;
  elapsed_s: number;
}

const num = (x: number) => (Number.isInteger(x) ? String(x) : Math.abs(x) < 1e-3 ? x.toExponential(2) : x.toPrecision(4));

export class TrainProgress {
  private bar: cliProgress.SingleBar | null = null;
  private state = { total: 0, value: 0, payload: { loss: "-", lr: "-" } };

  constructor(
    private readonly reporter: Reporter,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  start(e: TrainStart) {
    const params = e.params >= 1e6 ? `${(e.params / 1e6).toFixed(2)} M` : `${(e.params / 1e3).toFixed(1)} k`;
    this.reporter.event("start", { ...e }, `${params} parameters, ${e.train_images === null ? "fresh synthetic batches" : `${e.train_images} training images`}, ${e.steps} steps`);
    if (this.reporter.mode !== "tty" || this.reporter.quiet) return;
    this.bar = new cliProgress.SingleBar(
      {
        format: `${chalk.green("{bar}")} {value}/{total} steps | loss {loss} | lr {lr} | ETA {eta_formatted}`,
        barsize: 24,
        hideCursor: true,
        clearOnComplete: true,
        stream: this.stream,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    );
    this.state = { total: e.steps, value: 0, payload: { loss: "-", lr: "-" } };
    this.bar.start(e.steps, 0, this.state.payload);
  }

  progress(e: TrainStep) {
    if (this.bar) {
      this.state = { total: e.steps, value: e.step, payload: { loss: num(e.loss), lr: num(e.lr) } };
      this.bar.update(e.step, this.state.payload);
      return;
    }
    this.reporter.event("progress", { ...e }, `step ${e.step}/${e.steps} loss ${num(e.loss)} lr ${num(e.lr)} (${e.elapsed_s.toFixed(0)} s)`);
  }

  /** A line of the job's own output: shown with --verbose. */
  text(line: string) {
    if (!this.reporter.verbose) return;
    this.bar?.stop();
    this.reporter.debug(line);
    this.bar?.start(this.state.total, this.state.value, this.state.payload);
  }

  end() {
    this.bar?.stop();
    this.bar = null;
  }
}
