// Transport: round trip of a control message and throughput of tensor payloads between the coordinator and a
// worker, through the real stack (WorkerPool/WorkerClient -> codec -> zeromq.js DEALER -> ipc -> pyzmq DEALER
// -> dmd2_worker server: decode, tensor store, op dispatch, encode, tracked zero-copy reply), side by side with
// a bare pair (a zeromq.js DEALER in this process and `python -m dmd2_worker.bench bare-echo`, a pyzmq DEALER
// that sends every message back as it came). Both run over ipc, in alternating blocks of back-to-back requests
// (several rounds per size, the worker idle at the start of each block), so drift in the machine's load hits
// both alike. The control round trip is a median. Throughput is sustained: bytes moved over the total time of
// all round trips, so GC pauses count as they come (zeromq.js hands received payloads to V8 as external memory:
// a collection lands on every second or third large round trip, which makes per-request medians jump between two
// modes).
//
// The worker hosts a bench-only `echo` role (python-worker/dmd2_worker/bench_worker.py, not in the production
// role registry): an `op` whose tensors come back in the reply. A payload of S bytes thus crosses twice (S out,
// S back); throughput counts both directions, 2 S per round trip.

import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { execa, type ResultPromise } from "execa";
import { Dealer } from "zeromq";
import type { TensorFrame } from "../protocol/messages.js";
import { WorkerPool } from "../workers/pool.js";
import { PROJECT_ROOT } from "../workers/python.js";
import { benchPython } from "./python.js";
import { summarize, type Summary } from "./stats.js";

export interface TransportSettings {
  controlReps: number;
  /** Requests go in blocks: this many rounds of (protocol block, bare block) per payload size. */
  rounds: number;
  /** [bytes, repetitions] */
  payloads: Array<[number, number]>;
}

export interface RoundTrips {
  /** seconds per round trip */
  stats: Summary;
  /** every round trip in seconds, in the order measured */
  times_s: number[];
  /**
   * bytes per second: `sustained` = 2 S n / (sum of the n round trip times); median, p10, p90 of the per-request
   * rate 2 S / t. null for control messages.
   */
  throughput: { sustained: number; median: number; p10: number; p90: number } | null;
}

export interface PayloadResult {
  bytes: number;
  reps: number;
  protocol: RoundTrips;
  bare: RoundTrips;
}

export interface TransportResult {
  transport: "ipc";
  control: { reps: number; header_bytes: number; protocol: RoundTrips; bare: RoundTrips };
  payloads: PayloadResult[];
}

function roundTrips(times: number[], bytes: number): RoundTrips {
  const stats = summarize(times);
  const moved = 2 * bytes;
  return {
    stats,
    times_s: times,
    throughput: bytes > 0 ? { sustained: moved / stats.mean, median: moved / stats.median, p10: moved / stats.p90, p90: moved / stats.p10 } : null,
  };
}

/** The bare echo peer: a pyzmq DEALER connected to a zeromq.js DEALER bound here. */
class BarePair {
  private constructor(
    private readonly socket: Dealer,
    private readonly child: ResultPromise,
    private readonly dir: string,
  ) {}

  static async start(env: Record<string, string>): Promise<BarePair> {
    const dir = await mkdtemp(path.join(os.tmpdir().length < 60 ? os.tmpdir() : "/tmp", "dmd2-bare-"));
    const socket = new Dealer({ linger: 0 });
    const endpoint = `ipc://${path.join(dir, "bare")}`;
    await socket.bind(endpoint);
    const child = execa(benchPython(), ["-m", "dmd2_worker.bench", "bare-echo", "--connect", endpoint], {
      cwd: PROJECT_ROOT,
      env,
      extendEnv: true,
      reject: false,
      stdin: "ignore",
      stdout: "ignore",
      stderr: "pipe",
    });
    const pair = new BarePair(socket, child, dir);
    // It is up once it answers.
    await pair.roundTrip([Buffer.from("ping")]);
    return pair;
  }

  async roundTrip(frames: Buffer[]): Promise<Buffer[]> {
    await this.socket.send(frames);
    return this.socket.receive();
  }

  async close(): Promise<void> {
    try {
      await Promise.race([this.roundTrip([Buffer.from("stop")]), new Promise((r) => setTimeout(r, 2000))]);
    } finally {
      this.socket.close();
      const done = await Promise.race([this.child, new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
      if (done === null) this.child.kill("SIGKILL");
      await rm(this.dir, { recursive: true, force: true });
    }
  }
}

/** The header a control request of the real protocol carries, as bytes (so the bare pair moves as much). */
function controlHeader(): Buffer {
  return Buffer.from(
    JSON.stringify({
      version: 1,
      id: "c-1000",
      type: "op",
      reply_to: null,
      status: null,
      sender: "coordinator",
      body: { role: "generator", op: "echo", step: 0, args: {}, return: [] },
      tensors: [],
    }),
  );
}

function payloadBuffer(bytes: number): Buffer {
  const data = Buffer.allocUnsafe(bytes);
  for (let i = 0; i < bytes; i += 4096) data[i] = (i / 4096) & 0xff; // touch every page once
  return data;
}

export async function benchTransport(settings: TransportSettings, workDir: string, env: Record<string, string>, log: (line: string) => void): Promise<TransportResult> {
  const pool = await WorkerPool.start([{ name: "echo", roles: ["generator"] }], {
    python: benchPython(),
    hello: { run_dir: workDir, recipe: {}, torch_threads: 1 },
    transport: "ipc",
    logDir: path.join(workDir, "logs"),
    env: { ...env, PYTHONUNBUFFERED: "1", OMP_NUM_THREADS: "1" },
    cwd: PROJECT_ROOT,
    entry: ["-m", "dmd2_worker.bench_worker"],
  });
  let bare: BarePair | null = null;
  try {
    bare = await BarePair.start(env);
    const client = pool.clientFor("generator");
    const viaProtocol = async (inputs: TensorFrame[], returns: string[]): Promise<number> => {
      const t0 = performance.now();
      await pool.race(client.op("generator", "echo", 0, {}, inputs, returns));
      return (performance.now() - t0) / 1000;
    };
    const viaBare = async (frames: Buffer[]): Promise<number> => {
      const t0 = performance.now();
      await bare!.roundTrip(frames);
      return (performance.now() - t0) / 1000;
    };

    // The worker is idle once it answered a request sent after the last one: its trailing work (waiting for
    // ZeroMQ to let go of a zero-copy reply, freeing the previous payload) must not run into the other side's
    // block. Not timed.
    const sync = async () => {
      await pool.race(client.op("generator", "echo", 0, {}, [], []));
    };
    /** Blocks of back-to-back requests, protocol then bare, `rounds` times. */
    const blocks = async (reps: number, protocol: () => Promise<number>, barely: () => Promise<number>) => {
      const tp: number[] = [];
      const tb: number[] = [];
      const rounds = Math.min(settings.rounds, reps);
      for (let r = 0; r < rounds; r++) {
        const k = Math.floor(reps / rounds) + (r < reps % rounds ? 1 : 0);
        await sync();
        for (let i = 0; i < k; i++) tp.push(await protocol());
        await sync();
        for (let i = 0; i < k; i++) tb.push(await barely());
      }
      return { tp, tb };
    };

    // Control: a request with no tensors, answered with none.
    const header = controlHeader();
    const warm = Math.min(50, settings.controlReps);
    for (let i = 0; i < warm; i++) {
      await viaProtocol([], []);
      await viaBare([header]);
    }
    const c = await blocks(settings.controlReps, () => viaProtocol([], []), () => viaBare([header]));
    const control = { reps: settings.controlReps, header_bytes: header.length, protocol: roundTrips(c.tp, 0), bare: roundTrips(c.tb, 0) };
    log(`  control round trip: protocol ${(control.protocol.stats.median * 1e6).toFixed(0)} us, bare ${(control.bare.stats.median * 1e6).toFixed(0)} us`);

    const payloads: PayloadResult[] = [];
    for (const [bytes, reps] of settings.payloads) {
      const data = payloadBuffer(bytes);
      const tensor: TensorFrame = { name: "x", dtype: "uint8", shape: [bytes], data };
      const frames = [header, data];
      // Warm-up (allocators settle on the size), and a check that the bytes come back unchanged both ways.
      for (let i = 0; i < 4; i++) {
        const echoed = await pool.race(client.op("generator", "echo", 0, {}, [tensor], ["x"]));
        if (!echoed.tensors[0]!.data.equals(data)) throw new Error(`protocol echo of ${bytes} bytes came back changed`);
        const back = await bare.roundTrip(frames);
        if (back.length !== 2 || !back[1]!.equals(data)) throw new Error(`bare echo of ${bytes} bytes came back changed`);
      }
      const { tp, tb } = await blocks(reps, () => viaProtocol([tensor], ["x"]), () => viaBare(frames));
      const result: PayloadResult = { bytes, reps, protocol: roundTrips(tp, bytes), bare: roundTrips(tb, bytes) };
      payloads.push(result);
      const mib = (x: number) => (x / 2 ** 20).toFixed(0);
      log(`  ${formatBytes(bytes)} echo: protocol ${mib(result.protocol.throughput!.sustained)} MiB/s, bare ${mib(result.bare.throughput!.sustained)} MiB/s (sustained)`);
    }
    return { transport: "ipc", control, payloads };
  } finally {
    await bare?.close();
    await pool.shutdownAll({ graceMs: 2000, shutdownTimeoutMs: 2000 });
  }
}

export function formatBytes(bytes: number): string {
  if (bytes >= 2 ** 20 && bytes % 2 ** 20 === 0) return `${bytes / 2 ** 20} MiB`;
  if (bytes >= 2 ** 10 && bytes % 2 ** 10 === 0) return `${bytes / 2 ** 10} KiB`;
  return `${bytes} B`;
}
