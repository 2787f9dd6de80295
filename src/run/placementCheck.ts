// The recipe's placement against what the workers have (docs/recipe.md "Placement"): each worker's hello reply
// lists the devices its torch can use; a role placed on a device its worker does not have is a recipe error,
// reported in one line before any role is set up.

import { RecipeError } from "../errors.js";
import type { HelloReplyBody } from "../protocol/messages.js";
import type { Recipe } from "../recipe/types.js";
import { placementKey, type WorkerGroup } from "./replicas.js";

const normalize = (device: string) => (device === "cuda" ? "cuda:0" : device);

/** Throws RecipeError naming `roles.<role>.device` for the first role whose device its worker lacks. */
export function checkPlacement(recipe: Recipe, groups: readonly WorkerGroup[], hellos: ReadonlyMap<string, HelloReplyBody>, recipeFile: string | null = null): void {
  for (const group of groups) {
    group.ranks.forEach((spec, rank) => {
      const hello = hellos.get(spec.name);
      if (hello === undefined) return;
      for (const key of new Set(group.roles.map(placementKey))) {
        const placement = recipe.roles[key];
        const device = placement.device[group.ranks.length === 1 ? 0 : rank] ?? placement.device[0]!;
        if (hello.devices.includes(normalize(device))) continue;
        const cuda = hello.devices.filter((d) => d.startsWith("cuda"));
        const has = hello.cuda
          ? `it has ${hello.devices.join(", ")}`
          : `torch ${hello.torch} there has no CUDA`;
        const fix = device.startsWith("cuda") && cuda.length > 0
          ? `use one of ${cuda.join(", ")}`
          : device.startsWith("cuda")
            ? "set device: cpu, or point DMD2_PYTHON (or the recipe's python) at a CUDA build of torch"
            : "check the device name";
        throw new RecipeError([
          {
            file: recipeFile,
            path: `roles.${key}.device`,
            message: `${device} is not available to worker "${spec.name}" on ${hello.hostname} (${has}); ${fix}`,
          },
        ]);
      }
    });
  }
}
