/**
 * Workers on other hosts (docs/protocol.md §1 "Joining"): the coordinator listens on a CURVE-authenticated
 * ROUTER socket, the *join channel*; `dmd2 worker --join tcp://HOST:PORT` (with the run's key, the
 * coordinator's CURVE public key) asks it for a worker to run and gets the worker's name, roles and the ports
 * of its request and heartbeat channels, then starts `python -m dmd2_worker` connected to them. A joiner without
 * the run's key cannot complete the CURVE handshake, so it gets no answer at all.
 */
import { Router } from "zeromq";
import { DmdError } from "../errors.js";
import type { Role } from "../protocol/messages.js";
import { applyCurveServer, type CurveKeys } from "./endpoints.js";

export const JOIN_PROTOCOL_VERSION = 1;

/** The join request a joiner sends (one JSON frame). */
export interface JoinRequest {
  type: "join";
  version: number;
  hostname: string;
  pid: number;
  /** a worker name to take, or null for the next one waiting */
  worker: string | null;
}

/** The coordinator's answer: a worker to run, or a refusal with the reason. */
export type JoinReply =
  | { type: "join_reply"; version: number; worker: string; roles: Role[]; request_port: number; heartbeat_port: number; heartbeat_interval: number }
  | { type: "join_refused"; version: number; message: string };

export interface JoinOffer {
  worker: string;
  roles: Role[];
  requestPort: number;
  heartbeatPort: number;
  heartbeatInterval: number;
}

/** Who took an offer. */
export interface Joiner {
  hostname: string;
  pid: number;
}

export class JoinTimeoutError extends DmdError {
  constructor(message: string, hint: string) {
    super(message, { code: "JOIN_TIMEOUT", exitCode: 1, hint });
  }
}

/** The port of a `tcp://host:port` address. */
export function portOf(address: string): number {
  const m = /:(\d+)$/.exec(address);
  if (m === null) throw new DmdError(`internal: no port in address ${address}`, { code: "INTERNAL" });
  return Number(m[1]);
}

export class JoinServer {
  private readonly waiting = new Map<string, { offer: JoinOffer; resolve: (j: Joiner) => void }>();
  private closed = false;

  private constructor(
    private readonly socket: Router,
    /** the address bound, e.g. tcp://127.0.0.1:40123 */
    readonly address: string,
    /** what a joiner must know: the coordinator's CURVE public key (Z85) */
    readonly key: string,
  ) {
    void this.loop();
  }

  static async start(bindHost: string, port: number, keys: CurveKeys): Promise<JoinServer> {
    const socket = new Router({ linger: 0 });
    applyCurveServer(socket, keys);
    try {
      await socket.bind(`tcp://${bindHost}:${port === 0 ? "*" : port}`);
    } catch (error) {
      socket.close();
      throw new DmdError(`cannot listen for joining workers on ${bindHost}:${port}: ${(error as Error).message}`, {
        code: "JOIN_BIND",
        exitCode: 2,
        hint: "choose another join.port (0 picks a free one) or join.bind",
      });
    }
    return new JoinServer(socket, socket.lastEndpoint ?? `tcp://${bindHost}:${port}`, keys.server.publicKey);
  }

  /** Waits until a joiner takes `offer`, at most `timeoutS` seconds. */
  offer(offer: JoinOffer, timeoutS: number, joinCommand: string): Promise<Joiner> {
    return new Promise<Joiner>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(offer.worker);
        reject(
          new JoinTimeoutError(
            `no worker joined as "${offer.worker}" (roles ${offer.roles.join(", ")}) within ${timeoutS} s (join.timeout_s)`,
            `on the host that should run it: ${joinCommand}`,
          ),
        );
      }, timeoutS * 1000);
      timer.unref();
      this.waiting.set(offer.worker, {
        offer,
        resolve: (j) => {
          clearTimeout(timer);
          resolve(j);
        },
      });
    });
  }

  /** Names of the workers still waiting for a joiner. */
  pending(): string[] {
    return [...this.waiting.keys()];
  }

  private reply(request: unknown): { reply: JoinReply; joined?: () => void } {
    const refuse = (message: string) => ({ reply: { type: "join_refused" as const, version: JOIN_PROTOCOL_VERSION, message } });
    const r = request as Partial<JoinRequest> | null;
    if (r === null || typeof r !== "object" || r.type !== "join") return refuse("expected a join request");
    if (r.version !== JOIN_PROTOCOL_VERSION) return refuse(`join protocol version ${String(r.version)} is not ${JOIN_PROTOCOL_VERSION}: use the same dmd2 version on every host`);
    const name = typeof r.worker === "string" ? r.worker : (this.waiting.keys().next().value as string | undefined);
    if (name === undefined) return refuse("this run has no worker left to be joined");
    const entry = this.waiting.get(name);
    if (entry === undefined) return refuse(`this run has no worker "${name}" waiting (waiting: ${this.pending().join(", ") || "none"})`);
    this.waiting.delete(name);
    const o = entry.offer;
    return {
      reply: { type: "join_reply", version: JOIN_PROTOCOL_VERSION, worker: o.worker, roles: o.roles, request_port: o.requestPort, heartbeat_port: o.heartbeatPort, heartbeat_interval: o.heartbeatInterval },
      joined: () => entry.resolve({ hostname: typeof r.hostname === "string" ? r.hostname : "?", pid: typeof r.pid === "number" ? r.pid : -1 }),
    };
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      let frames: Buffer[];
      try {
        frames = await this.socket.receive();
      } catch {
        return; // closed
      }
      const [identity, body] = [frames[0]!, frames[frames.length - 1]!];
      let request: unknown = null;
      try {
        request = JSON.parse(body.toString("utf8"));
      } catch {
        request = null;
      }
      const { reply, joined } = this.reply(request);
      try {
        await this.socket.send([identity, JSON.stringify(reply)]);
      } catch {
        return;
      }
      joined?.();
    }
  }

  close(): void {
    this.closed = true;
    this.socket.close();
  }
}
