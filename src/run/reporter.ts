// What the user sees while a command runs. Three renderings of the same events: a cli-progress bar on a
// terminal, plain timestamped lines when output is not a terminal, one JSON object per event with --json.
// chalk colours only on a terminal (chalk itself honours NO_COLOR / FORCE_COLOR).

import { color as chalk } from "../colors.js";
import cliProgress from "cli-progress";

export type OutputMode = "tty" | "plain" | "json";

export interface ReporterOptions {
  mode?: OutputMode;
  quiet?: boolean;
  verbose?: boolean;
  stream?: NodeJS.WriteStream;
}

const fmt = (v: unknown) => (v === null ? "nan" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : String(v));

export class Reporter {
  readonly mode: OutputMode;
  readonly quiet: boolean;
  readonly verbose: boolean;
  private stream: NodeJS.WriteStream;
  private bar: cliProgress.SingleBar | null = null;
  /** what the bar shows, so that it can be drawn again below a line printed while it runs */
  private barState = { total: 0, value: 0, payload: {} as Record<string, unknown> };
  private startStep = 0;
  private t0 = Date.now();
  /** the latest value of every metric: generator metrics only arrive every `ratio` steps */
  private latest: Record<string, number | null> = {};
  /** for the summary line endSteps prints: the last step done and its generator updates */
  private last: { done: number; total: number; genUpdates: number } | null = null;

  constructor(opts: ReporterOptions = {}) {
    this.stream = opts.stream ?? process.stderr;
    this.mode = opts.mode ?? (this.stream.isTTY ? "tty" : "plain");
    this.quiet = opts.quiet ?? false;
    this.verbose = opts.verbose ?? false;
  }

  private line(text: string) {
    const stamp = new Date().toISOString().replace("T", " ").slice(0, 19);
    this.bar?.stop();
    this.stream.write(this.mode === "tty" ? `${text}\n` : `${stamp} ${text}\n`);
    this.bar?.start(this.barState.total, this.barState.value, this.barState.payload);
  }

  event(type: string, fields: Record<string, unknown>, text?: string) {
    if (this.mode === "json") {
      process.stdout.write(JSON.stringify({ event: type, time: Date.now() / 1000, ...fields }) + "\n");
      return;
    }
    if (this.quiet || text === undefined) return;
    this.line(text);
  }

  phase(name: string, detail = "") {
    this.event("phase", { name, detail }, `${chalk.cyan("›")} ${name}${detail ? chalk.dim(" " + detail) : ""}`);
  }

  info(message: string) {
    this.event("info", { message }, message);
  }

  /** Something the user should act on before it costs them: shown in quiet mode too. */
  warn(message: string) {
    if (this.mode === "json") {
      this.event("warning", { message });
      return;
    }
    this.line(`${chalk.yellow("warning:")} ${message}`);
  }

  debug(message: string) {
    if (this.verbose) this.event("debug", { message }, chalk.dim(message));
  }

  startSteps(total: number, start: number) {
    this.t0 = Date.now();
    this.startStep = start;
    if (this.mode !== "tty" || this.quiet) return;
    this.bar = new cliProgress.SingleBar(
      {
        format: `${chalk.green("{bar}")} {value}/{total} steps | G updates {gen} | {rate} it/s | ETA {eta_formatted} | {losses}`,
        barsize: 24,
        hideCursor: true,
        clearOnComplete: true, // lines printed while it runs go above it, without a stale copy of the bar
        stream: this.stream,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    );
    this.last = null;
    this.barState = { total, value: start, payload: { gen: 0, rate: "-", losses: "" } };
    this.bar.start(total, start, this.barState.payload);
  }

  step(step: number, total: number, genUpdates: number, metrics: Record<string, number | null>, logLine: boolean) {
    const done = step + 1;
    const elapsed = (Date.now() - this.t0) / 1000;
    if (this.mode === "json") {
      if (logLine) this.event("step", { step: done, total, gen_updates: genUpdates, ...metrics });
      return;
    }
    this.last = { done, total, genUpdates };
    if (this.quiet) return;
    Object.assign(this.latest, metrics);
    const lossText = (m: Record<string, number | null>) =>
      Object.entries(m)
        .filter(([k]) => k.startsWith("loss_"))
        .map(([k, v]) => `${k.slice(5)} ${fmt(v)}`)
        .join(" ");
    if (this.bar) {
      // the bar is a live view: every loss at its latest value (the generator's change every `ratio` steps)
      const losses = lossText(this.latest);
      // steps per second of this command (a resumed run's earlier steps are not in `elapsed`)
      const rate = elapsed > 0 ? ((done - this.startStep) / elapsed).toFixed(1) : "-";
      this.barState = { total, value: done, payload: { gen: genUpdates, rate, losses } };
      this.bar.update(done, this.barState.payload);
      return;
    }
    // a log line shows only what this step computed: a fake-score-only step has no generator losses
    if (logLine && this.mode === "plain") this.line(`step ${done}/${total} G updates ${genUpdates} ${lossText(metrics)}`);
  }

  /** Ends the step loop: the bar goes, and one summary line stays (the steps, their rate, the latest losses). */
  endSteps() {
    const hadBar = this.bar !== null;
    if (this.bar) {
      this.bar.stop();
      this.bar = null;
    }
    const last = this.last;
    this.last = null;
    if (last === null || this.quiet || this.mode === "json" || (this.mode === "tty" && !hadBar)) return;
    const seconds = (Date.now() - this.t0) / 1000;
    const ran = last.done - this.startStep;
    const rate = seconds > 0 && ran > 0 ? `, ${(ran / seconds).toFixed(1)} it/s` : "";
    const losses = Object.entries(this.latest)
      .filter(([k]) => k.startsWith("loss_"))
      .map(([k, v]) => `${k.slice(5)} ${fmt(v)}`)
      .join(" ");
    this.line(`trained ${last.done}/${last.total} steps (${ran} in ${seconds.toFixed(1)} s${rate}), G updates ${last.genUpdates}${losses ? `; latest losses ${losses}` : ""}`);
  }
}
