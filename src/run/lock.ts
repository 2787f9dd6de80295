// The run folder's lock (issue 20): one `dmd2 distill` writes into a run folder at a time. `<run_dir>/run.lock`
// holds the writer's pid, host and start time. It is created whole or not at all: written under a private name,
// then hard-linked to run.lock, which fails if the lock is there (two commands starting together cannot both
// win). A lock whose pid is no longer running on this host is stale (a killed run) and is taken over, with a
// note; a lock from another host is never taken over (its pid cannot be checked from here).

import { linkSync, readFileSync, unlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { shortenValue, UsageError } from "../errors.js";

export const LOCK_FILE = "run.lock";

export interface LockInfo {
  pid: number;
  host: string;
  started: string;
  command: string;
}

export interface RunLock {
  file: string;
  info: LockInfo;
  /** Removes the lock if it is still this process's. */
  release(): void;
}

function readLock(file: string): LockInfo | null {
  try {
    const v = JSON.parse(readFileSync(file, "utf8")) as LockInfo;
    return typeof v.pid === "number" && typeof v.host === "string" ? v : null;
  } catch {
    return null; // gone, or not ours to read
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM"; // there, but another user's
  }
}

function holder(info: LockInfo): string {
  return `${info.command} (pid ${info.pid} on ${info.host}, since ${info.started})`;
}

/**
 * Takes the lock of `runDir` (which must exist) for this process, or throws a UsageError naming the holder.
 * `note` is told when a stale lock is taken over.
 */
export function acquireRunLock(runDir: string, note: (line: string) => void, command = "dmd2 distill"): RunLock {
  const file = path.join(runDir, LOCK_FILE);
  const info: LockInfo = { pid: process.pid, host: os.hostname(), started: new Date().toISOString(), command };
  const mine = `${file}.${process.pid}`;
  writeFileSync(mine, JSON.stringify(info) + "\n");
  try {
    for (let attempt = 0; ; attempt++) {
      try {
        linkSync(mine, file);
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      const held = readLock(file);
      const shown = shortenValue(runDir);
      if (held === null) {
        if (attempt < 20) continue; // removed between our link and our read: try again
        throw new UsageError(`run_dir ${shown} is locked by ${file}, which cannot be read: if no dmd2 distill runs there, delete it`, { code: "RUN_LOCKED" });
      }
      const sameHost = held.host === os.hostname();
      if (sameHost && held.pid !== process.pid && !alive(held.pid)) {
        // stale: move it aside under our own name first, so that of two commands taking it over only one does
        const aside = `${file}.stale-${process.pid}`;
        try {
          const again = readLock(file);
          if (again === null || again.pid !== held.pid || again.started !== held.started) continue;
          linkSync(file, aside);
          const moved = readLock(aside); // the same file as run.lock now: still the stale one?
          if (moved === null || moved.pid !== held.pid || moved.started !== held.started) continue;
          unlinkSync(file);
          note(`took over the lock of ${shown} from ${holder(held)}, which is no longer running`);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "ENOENT" && (e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        } finally {
          try {
            unlinkSync(aside);
          } catch {
            /* not made */
          }
        }
        if (attempt < 20) continue;
      }
      const fix = sameHost ? "wait for it to finish or stop it, or choose another run_dir" : `if it is no longer running there, delete ${file}; or choose another run_dir`;
      throw new UsageError(`run_dir ${shown} is in use by ${holder(held)}: ${fix}`, { code: "RUN_LOCKED" });
    }
  } finally {
    unlinkSync(mine);
  }
  return {
    file,
    info,
    release() {
      const now = readLock(file);
      if (now !== null && now.pid === info.pid && now.started === info.started && now.host === info.host) {
        try {
          unlinkSync(file);
        } catch {
          /* already gone */
        }
      }
    },
  };
}
