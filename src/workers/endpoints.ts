/**
 * Endpoints of one run (docs/protocol.md §1): `ipc://<dir>/<worker>.req` and `ipc://<dir>/hb` in a private
 * directory (mode 0700), or `tcp://127.0.0.1:<port>`. Nothing binds to other interfaces.
 */
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { curveKeyPair } from "zeromq";
import { UsageError } from "../errors.js";

export type Transport = "ipc" | "tcp";

/** Unix socket paths are limited to ~104-108 bytes; ZeroMQ's own limit is a little lower. */
export const MAX_IPC_PATH = 100;
const WORKER_NAME = /^[A-Za-z0-9_.-]{1,32}$/;

export interface RunEndpoints {
  readonly transport: Transport;
  /** The private directory of the ipc sockets; null for tcp. */
  readonly dir: string | null;
  /**
   * The address to bind a worker's request channel to. For tcp it is `tcp://127.0.0.1:<free port>`; the
   * address actually bound (the socket's lastEndpoint) is what the worker is told to connect to.
   */
  endpointFor(worker: string): string;
  /** The address to bind the heartbeat channel to. */
  readonly heartbeat: string;
  /** Removes the ipc directory (idempotent; nothing to do for tcp). */
  cleanup(): Promise<void>;
  /** tcp: CURVE keys made for this run (null for ipc, whose directory only the user can open). */
  readonly curve: CurveKeys | null;
}

/**
 * ZeroMQ CURVE keys (Z85) made for one run: the coordinator's sockets are CURVE servers with `server`'s secret
 * key; workers connect with `client`'s pair and `server.publicKey`, which they get in their environment (never
 * on a command line). A peer without the server's public key cannot complete the handshake, so nothing it sends
 * reaches the coordinator and nothing is sent to it.
 */
export interface CurveKeys {
  server: { publicKey: string; secretKey: string };
  client: { publicKey: string; secretKey: string };
}

export function makeCurveKeys(): CurveKeys {
  return { server: curveKeyPair(), client: curveKeyPair() };
}

/** Makes a socket a CURVE server with the run's keys; must come before bind. */
export function applyCurveServer(socket: { curveServer: boolean; curveSecretKey: string | null }, keys: CurveKeys | null): void {
  if (keys === null) return;
  socket.curveServer = true;
  socket.curveSecretKey = keys.server.secretKey;
}

/** The environment that tells a worker the run's CURVE keys (read by dmd2_worker.server). */
export function curveEnv(keys: CurveKeys | null): Record<string, string> {
  if (keys === null) return {};
  return {
    DMD2_CURVE_SERVER_KEY: keys.server.publicKey,
    DMD2_CURVE_PUBLIC_KEY: keys.client.publicKey,
    DMD2_CURVE_SECRET_KEY: keys.client.secretKey,
  };
}

function checkWorkerName(worker: string): void {
  if (!WORKER_NAME.test(worker)) {
    throw new UsageError(`worker name "${worker}" is not usable in an endpoint: use 1-32 of A-Z a-z 0-9 _ . -`);
  }
}

/** A free TCP port on 127.0.0.1 (bound and released at once; a race with other programs is possible). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once("error", reject);
    server.listen({ host: "127.0.0.1", port: 0, exclusive: true }, () => {
      const address = server.address();
      server.close(() => {
        if (address !== null && typeof address === "object") resolve(address.port);
        else reject(new Error("could not read the port of a probe socket"));
      });
    });
  });
}

async function makePrivateDir(): Promise<string> {
  // Prefer $TMPDIR; fall back to /tmp when that would make socket paths too long (macOS's $TMPDIR is ~50 chars).
  const bases = [os.tmpdir(), "/tmp"];
  for (const base of bases) {
    // "<base>/dmd2-XXXXXX/" + "<32 chars>.req"
    if (base.length + "/dmd2-XXXXXX/".length + 36 > MAX_IPC_PATH) continue;
    const dir = await mkdtemp(path.join(base, "dmd2-"));
    await chmod(dir, 0o700);
    return dir;
  }
  throw new UsageError(`temporary directory ${os.tmpdir()} gives socket paths longer than ${MAX_IPC_PATH} characters`, {
    hint: "set TMPDIR to a short path such as /tmp, or use transport: tcp",
  });
}

/**
 * Makes the endpoints of a run for the named workers. For ipc, creates the private socket directory. For tcp,
 * picks a free port on 127.0.0.1 for each worker and for the heartbeat channel (a port can be taken by another
 * program between the pick and the bind: binders fall back to `tcp://127.0.0.1:*` and report the bound
 * address, see bindWithFallback).
 */
export async function createEndpoints(
  workers: readonly string[],
  transport: Transport = "ipc",
  opts: { remote?: ReadonlySet<string>; bindHost?: string } = {},
): Promise<RunEndpoints> {
  for (const worker of workers) checkWorkerName(worker);
  if (new Set(workers).size !== workers.length) throw new UsageError(`worker names must be unique: ${workers.join(", ")}`);
  const remote = opts.remote ?? new Set<string>();
  if (remote.size > 0 && transport !== "tcp") throw new UsageError("workers on other hosts need transport: tcp");

  if (transport === "tcp") {
    // workers that join from other hosts (docs/protocol.md §1 "Joining") reach their request channels and the
    // heartbeat channel on `bindHost`; every other socket stays on 127.0.0.1
    const joinHost = opts.bindHost ?? "127.0.0.1";
    const ports = new Map<string, number>();
    for (const worker of workers) ports.set(worker, await freePort());
    const heartbeatPort = await freePort();
    return {
      transport,
      dir: null,
      heartbeat: `tcp://${remote.size > 0 ? joinHost : "127.0.0.1"}:${heartbeatPort}`,
      endpointFor(worker: string): string {
        const port = ports.get(worker);
        if (port === undefined) throw new UsageError(`no endpoint for unknown worker "${worker}"`);
        return `tcp://${remote.has(worker) ? joinHost : "127.0.0.1"}:${port}`;
      },
      async cleanup(): Promise<void> {},
      curve: makeCurveKeys(),
    };
  }

  const dir = await makePrivateDir();
  let removed = false;
  const known = new Set(workers);
  return {
    transport,
    dir,
    heartbeat: `ipc://${path.join(dir, "hb")}`,
    endpointFor(worker: string): string {
      if (!known.has(worker)) throw new UsageError(`no endpoint for unknown worker "${worker}"`);
      return `ipc://${path.join(dir, `${worker}.req`)}`;
    },
    async cleanup(): Promise<void> {
      if (removed) return;
      removed = true;
      await rm(dir, { recursive: true, force: true });
    },
    curve: null,
  };
}

/**
 * Binds a ZeroMQ socket to `address` and returns the address actually bound (its lastEndpoint). A tcp
 * address whose port was taken meanwhile is retried as `tcp://127.0.0.1:*` (ZeroMQ picks a free port).
 */
export async function bindWithFallback(
  socket: { bind(address: string): Promise<void>; readonly lastEndpoint: string | null },
  address: string,
): Promise<string> {
  try {
    await socket.bind(address);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (!address.startsWith("tcp://127.0.0.1:") || code !== "EADDRINUSE") throw error;
    await socket.bind("tcp://127.0.0.1:*");
  }
  return socket.lastEndpoint ?? address;
}
