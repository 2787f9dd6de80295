// A Hub id (`org/name`) in teacher.path: the snapshot already in the local Hugging Face cache, read from the
// cache's own layout (what huggingface_hub's snapshot_download(local_files_only=True) reads):
//   <cache>/models--<org>--<name>/refs/main          the commit the main branch points at
//   <cache>/models--<org>--<name>/snapshots/<commit>/ the files of that commit
// <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
// Nothing is downloaded: a model that is not in the cache is one line saying how to download it.

import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";

/** `org/name` as the Hub writes it (letters, digits, `-`, `_`, `.`; neither part `.` or `..`). */
const HUB_ID = /^(?!\.{1,2}\/)[A-Za-z0-9][A-Za-z0-9._-]*\/(?!\.{1,2}$)[A-Za-z0-9][A-Za-z0-9._-]*$/;

export const looksLikeHubId = (value: string) => HUB_ID.test(value);

export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.HF_HUB_CACHE) return env.HF_HUB_CACHE;
  if (env.HF_HOME) return path.join(env.HF_HOME, "hub");
  return path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), ".cache"), "huggingface", "hub");
}

export type HubLookup = { found: true; snapshot: string } | { found: false; message: string };

/** The cached snapshot of `id` (refs/main's commit, else the only snapshot there is), or why there is none. */
export function findCachedSnapshot(id: string, env: NodeJS.ProcessEnv = process.env): HubLookup {
  const cache = hubCacheDir(env);
  const repo = path.join(cache, `models--${id.replace("/", "--")}`);
  const snapshots = path.join(repo, "snapshots");
  let commit: string | null = null;
  try {
    commit = readFileSync(path.join(repo, "refs", "main"), "utf8").trim();
  } catch {
    // no refs/main: a snapshot fetched by commit; use it when it is the only one
    try {
      const all = readdirSync(snapshots).filter((d) => statSync(path.join(snapshots, d)).isDirectory());
      if (all.length === 1) commit = all[0]!;
    } catch {
      // not cached at all
    }
  }
  const dir = commit === null ? null : path.join(snapshots, commit);
  if (dir !== null && existsSync(dir) && statSync(dir).isDirectory()) return { found: true, snapshot: dir };
  const local = path.join("teachers", id.split("/")[1]!);
  return {
    found: false,
    message: `"${id}" is neither a folder nor a model in the Hugging Face cache (${cache}); dmd2 downloads nothing: run huggingface-cli download ${id} --local-dir ${local} and set teacher.path: ${local} (or download it into the cache, without --local-dir)`,
  };
}
