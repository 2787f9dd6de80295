// The checks of `dmd2 doctor` that Node answers itself: its own version, the zeromq binding, free disk space,
// and ipc sockets in the temporary directory. Each returns a Check; none throws.

import { existsSync, statfsSync } from "node:fs";
import path from "node:path";
import { createEndpoints } from "../workers/endpoints.js";
import { PROJECT_ROOT } from "../workers/python.js";
import { formatBytes } from "../text.js";
import { MIN_FREE_BYTES, NODE_MIN_MAJOR } from "./requirements.js";

export type CheckStatus = "ok" | "problem" | "warning" | "info" | "skipped";

export interface Check {
  /** stable name, for scripts and tests */
  id: string;
  status: CheckStatus;
  detail: string;
  fix?: string;
}

const errorText = (e: unknown) => String((e as Error)?.message ?? e).split("\n")[0]!;

export function checkNode(version = process.versions.node): Check {
  const major = Number(version.split(".")[0]);
  return major >= NODE_MIN_MAJOR
    ? { id: "node", status: "ok", detail: `v${version}` }
    : { id: "node", status: "problem", detail: `v${version} is too old (dmd2 needs Node ${NODE_MIN_MAJOR} or newer)`, fix: `install Node.js ${NODE_MIN_MAJOR} or newer (https://nodejs.org, or nvm install ${NODE_MIN_MAJOR})` };
}

type ZeroMQ = typeof import("zeromq");

export async function loadZeromq(): Promise<{ zmq: ZeroMQ; check: Check } | { zmq: null; check: Check }> {
  try {
    const zmq = await import("zeromq");
    const ipc = zmq.capability.ipc ? "" : "; built without ipc: use transport: tcp";
    return { zmq, check: { id: "zeromq", status: "ok", detail: `binding loads (libzmq ${zmq.version}${ipc})` } };
  } catch (e) {
    return {
      zmq: null,
      check: { id: "zeromq", status: "problem", detail: `the zeromq binding does not load: ${errorText(e)}`, fix: `run npm install in ${PROJECT_ROOT} (or npm rebuild zeromq)` },
    };
  }
}

/** Free space where run folders go: ./runs when it exists, else the current directory. */
export function checkDisk(cwd = process.cwd()): Check {
  const runs = path.join(cwd, "runs");
  const dir = existsSync(runs) ? runs : cwd;
  try {
    const s = statfsSync(dir);
    const free = Number(s.bavail) * Number(s.bsize);
    const text = `${formatBytes(free)} free in ${dir}`;
    return free >= MIN_FREE_BYTES
      ? { id: "disk", status: "ok", detail: text }
      : { id: "disk", status: "warning", detail: `only ${text} (under ${formatBytes(MIN_FREE_BYTES)})`, fix: "free some space, or point the recipe's run_dir at a disk with more room" };
  } catch (e) {
    return { id: "disk", status: "warning", detail: `cannot read the free space of ${dir}: ${errorText(e)}` };
  }
}

/** Makes a run's private ipc directory (workers/endpoints.ts, as distill does) and binds a socket in it. */
export async function checkIpc(zmq: ZeroMQ | null): Promise<Check> {
  const fix = "set TMPDIR to a short, writable folder such as /tmp, or use transport: tcp in the recipe";
  let endpoints: Awaited<ReturnType<typeof createEndpoints>>;
  try {
    endpoints = await createEndpoints(["doctor"], "ipc");
  } catch (e) {
    return { id: "ipc", status: "problem", detail: `cannot make the socket folder: ${errorText(e)}`, fix };
  }
  try {
    const address = endpoints.endpointFor("doctor");
    if (zmq === null) return { id: "ipc", status: "ok", detail: `socket folder ${endpoints.dir} made (binding not tried: zeromq did not load)` };
    const socket = new zmq.Pair({ linger: 0 });
    try {
      await socket.bind(address);
    } finally {
      socket.close();
    }
    return { id: "ipc", status: "ok", detail: `a socket binds in ${path.dirname(endpoints.dir ?? address)} (${address}, removed again)` };
  } catch (e) {
    return { id: "ipc", status: "problem", detail: `cannot bind an ipc socket in ${endpoints.dir}: ${errorText(e)}`, fix };
  } finally {
    await endpoints.cleanup();
  }
}
