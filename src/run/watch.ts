// What a run leaves to watch it by, besides metrics.jsonl: TensorBoard event files in `<run_dir>/tb/` (a scalar for
// every metric of every step, an image for every sample grid) and, every `train.sample_every` steps, a grid from
// the generator in `<run_dir>/samples/step-XXXXXXXX/`, always with the same seed and classes so that the grids
// show the generator's progress. TensorBoard output is best effort: a write that fails is reported once and
// TensorBoard output stops, the run goes on. A sampling op that fails is a worker error like any other.

import { readFileSync } from "node:fs";
import path from "node:path";
import type { Recipe } from "../recipe/types.js";
import { checkpointName } from "./checkpoints.js";
import type { Cluster } from "./cluster.js";
import { metricTag, rowMetrics } from "./metrics.js";
import type { Reporter } from "./reporter.js";
import { EventWriter } from "./tensorboard.js";
import { WandbLogger } from "./wandb.js";

export const TB_DIR = "tb";
export const SAMPLES_TAG = "samples/grid";
export const FINAL_TAG = "samples/final";
export const RECIPE_TAG = "recipe";

/** The folder of the training grid after `stepsDone` steps: samples/step-XXXXXXXX (the checkpoint's naming). */
export const trainingSampleDir = (runDir: string, stepsDone: number) => path.join(runDir, "samples", checkpointName(stepsDone));

export class TrainingWatch {
  private tb: EventWriter | null;
  private pendingStart: number | null;
  /** logging.wandb: fed what TensorBoard gets (wandb.ts) */
  private readonly wandb: WandbLogger | null;

  /** `startStep`: the steps already done (the checkpoint resumed from), 0 for a fresh run. */
  constructor(
    private readonly recipe: Recipe,
    startStep: number,
    private readonly reporter: Reporter,
  ) {
    this.tb = new EventWriter(path.join(recipe.run_dir, TB_DIR));
    // a resumed run logs steps startStep+1.. again: a session start there makes TensorBoard drop the earlier copies
    this.pendingStart = startStep > 0 ? startStep + 1 : null;
    this.wandb = WandbLogger.start(recipe, reporter);
  }

  private tbWrite(what: (w: EventWriter) => void) {
    if (!this.tb) return;
    try {
      if (this.pendingStart !== null) {
        this.tb.sessionStart(this.pendingStart);
        this.pendingStart = null;
      }
      what(this.tb);
    } catch (e) {
      this.reporter.info(`warning: TensorBoard output stopped: cannot write in ${this.tb.dir} (${(e as Error).message})`);
      this.tb.close();
      this.tb = null;
    }
  }

  private recipeLogged = false;

  /** A metrics.jsonl row, as TensorBoard scalars at its step. Before the first: the resolved recipe, as text. */
  row(row: { step: number; time: number } & Record<string, unknown>) {
    if (!this.recipeLogged) {
      // at the first row, not at construction: a fresh run clears tb/ after the watch is made
      this.recipeLogged = true;
      const json = JSON.stringify(this.recipe, null, 2).split("\n").map((l) => `    ${l}`).join("\n");
      this.tbWrite((w) => w.text(row.step, RECIPE_TAG, `the resolved recipe (recipe.resolved.json):\n\n${json}`, row.time));
    }
    const scalars = rowMetrics(row).map(([k, v]): [string, number | null] => [metricTag(k), v]);
    this.tbWrite((w) => w.scalars(row.step, scalars, row.time));
    this.wandb?.scalars(row.step, row.time, scalars);
  }

  /** After 0-based step `step`: every `train.sample_every` steps, a grid from the generator. */
  async afterStep(cluster: Cluster, step: number): Promise<void> {
    const every = this.recipe.train.sample_every;
    const done = step + 1;
    if (every <= 0 || done % every !== 0) return;
    const outDir = trainingSampleDir(this.recipe.run_dir, done);
    const { seed, num } = this.recipe.sample;
    await cluster.opOnce("generator", "sample", step, { seed, n: num, steps: this.recipe.generator.steps, classes: null, out_dir: outDir }, [], []);
    const grid = path.join(outDir, "grid.png");
    this.reporter.event("samples", { step: done, grid }); // --json only: a line would end the progress bar
    this.reporter.debug(`samples ${grid}`);
    this.image(SAMPLES_TAG, done, grid);
  }

  /** A grid PNG the generator wrote, as a TensorBoard image. */
  image(tag: string, step: number, file: string) {
    this.tbWrite((w) => w.image(step, tag, readFileSync(file)));
    this.wandb?.image(tag, step, file);
  }

  close() {
    this.tb?.close();
    this.tb = null;
    this.wandbDone = this.wandb?.close() ?? Promise.resolve();
  }

  private wandbDone: Promise<void> = Promise.resolve();

  /** After close(): resolves when the W&B process has written its run (at once without W&B). */
  finished(): Promise<void> {
    return this.wandbDone;
  }
}
