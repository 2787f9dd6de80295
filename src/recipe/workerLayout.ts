// Which roles live in which worker process (docs/protocol.md §1). The discriminator is a head on the fake
// score's backbone, so it always shares fake_score's process.

import type { Placement, Role } from "./types.js";

export interface WorkerSpec {
  name: string;
  roles: Role[];
}

export function workerLayout(placement: Placement): WorkerSpec[] {
  switch (placement) {
    case "per_role":
      return [
        { name: "teacher", roles: ["teacher"] },
        { name: "generator", roles: ["generator"] },
        { name: "fake_score", roles: ["fake_score", "discriminator"] },
      ];
    case "colocated":
      return [{ name: "all", roles: ["teacher", "generator", "fake_score", "discriminator"] }];
  }
}

/** role -> worker name */
export function roleHome(layout: WorkerSpec[]): Map<Role, string> {
  const m = new Map<Role, string>();
  for (const w of layout) for (const r of w.roles) m.set(r, w.name);
  return m;
}
