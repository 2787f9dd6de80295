// `dmd2 worker --join tcp://HOST:PORT`: runs one worker of a run whose coordinator is on another host
// (docs/protocol.md §1 "Joining"). Asks the coordinator's join channel, with the run's key (DMD2_JOIN_KEY or
// --key-file), which worker to be, then runs `python -m dmd2_worker` connected to it until the run ends.

import { readFileSync } from "node:fs";
import os from "node:os";
import { execa } from "execa";
import { Dealer, curveKeyPair } from "zeromq";
import { DmdError, UsageError } from "../../errors.js";
import { JOIN_PROTOCOL_VERSION, type JoinReply, type JoinRequest } from "../../workers/join.js";
import { resolvePython } from "../../workers/python.js";
import type { Reporter } from "../../run/reporter.js";

export interface WorkerFlags {
  join: string;
  keyFile?: string;
  worker?: string;
  timeout: number;
  python?: string;
}

const Z85_KEY = /^[0-9a-zA-Z.:+=^!/*?&<>()[\]{}@%$#-]{40}$/;

function readKey(flags: WorkerFlags): string {
  let key: string;
  if (flags.keyFile !== undefined) {
    try {
      key = readFileSync(flags.keyFile, "utf8").trim();
    } catch (e) {
      throw new UsageError(`--key-file ${flags.keyFile}: cannot read it (${(e as NodeJS.ErrnoException).code ?? e})`);
    }
  } else {
    const env = process.env.DMD2_JOIN_KEY?.trim();
    if (!env) throw new UsageError("no key: set DMD2_JOIN_KEY to the key the coordinator printed (or pass --key-file <run_dir>/join.key)");
    key = env;
  }
  if (!Z85_KEY.test(key)) throw new UsageError(`the key is not a 40-character Z85 CURVE key (${flags.keyFile ? `--key-file ${flags.keyFile}` : "DMD2_JOIN_KEY"}): copy it again from the coordinator's output`);
  return key;
}

/** Asks the join channel for a worker; the reply, or an error saying why none came. */
async function ask(address: string, key: string, flags: WorkerFlags, keys: { publicKey: string; secretKey: string }): Promise<Extract<JoinReply, { type: "join_reply" }>> {
  const socket = new Dealer({ linger: 0, receiveTimeout: flags.timeout * 1000 });
  socket.curveServerKey = key;
  socket.curvePublicKey = keys.publicKey;
  socket.curveSecretKey = keys.secretKey;
  try {
    socket.connect(address);
    const request: JoinRequest = { type: "join", version: JOIN_PROTOCOL_VERSION, hostname: os.hostname(), pid: process.pid, worker: flags.worker ?? null };
    await socket.send(JSON.stringify(request));
    let frames: Buffer[];
    try {
      frames = await socket.receive();
    } catch {
      throw new DmdError(`no answer from ${address} within ${flags.timeout} s: the key is wrong, or no run is waiting for workers there`, {
        code: "JOIN_NO_ANSWER",
        exitCode: 1,
        hint: "check the address and DMD2_JOIN_KEY against what `dmd2 distill` printed, and that the run is still waiting (join.timeout_s)",
      });
    }
    const reply = JSON.parse(frames[frames.length - 1]!.toString("utf8")) as JoinReply;
    if (reply.type === "join_refused") throw new DmdError(`${address} refused to hand out a worker: ${reply.message}`, { code: "JOIN_REFUSED", exitCode: 1 });
    return reply;
  } finally {
    socket.close();
  }
}

export async function workerCommand(flags: WorkerFlags, reporter: Reporter): Promise<number> {
  const m = /^tcp:\/\/([^:/]+):(\d{1,5})$/.exec(flags.join);
  if (m === null) throw new UsageError(`--join ${flags.join}: expected tcp://HOST:PORT, as \`dmd2 distill\` printed it`);
  const host = m[1]!;
  const key = readKey(flags);
  const python = resolvePython(flags.python ?? null);
  const keys = curveKeyPair(); // this worker's own pair; the coordinator knows it by the handshake
  const a = await ask(flags.join, key, flags, keys);
  reporter.info(`joined as worker "${a.worker}" (roles ${a.roles.join(", ")}); starting it`);
  const r = await execa(
    python,
    ["-m", "dmd2_worker", "--name", a.worker, "--connect", `tcp://${host}:${a.request_port}`, "--heartbeat", `tcp://${host}:${a.heartbeat_port}`, "--heartbeat-interval", String(a.heartbeat_interval)],
    {
      env: { PYTHONUNBUFFERED: "1", DMD2_CURVE_SERVER_KEY: key, DMD2_CURVE_PUBLIC_KEY: keys.publicKey, DMD2_CURVE_SECRET_KEY: keys.secretKey },
      stdio: ["ignore", "inherit", "inherit"],
      reject: false,
    },
  );
  const code = r.exitCode ?? 1;
  if (code === 0) reporter.info(`worker "${a.worker}" finished (the run shut it down)`);
  else reporter.info(`worker "${a.worker}" exited with ${code}${r.signal ? ` (${r.signal})` : ""}`);
  return code;
}
