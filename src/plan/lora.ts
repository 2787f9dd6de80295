// The generator's LoRA adapters (generator.lora, docs/adapters.md §7), counted from the UNet's tensor shapes
// (plan/safetensors.ts) by the rule python-worker/dmd2_worker/lora.py applies: a target is a module-name suffix
// (the module's name equals it or ends with "." + it), only Linear and Conv2d modules are adapted, and an adapted
// layer trains rank * (in * kh * kw + out) numbers (A: in -> rank with the layer's kernel, B: rank -> out, 1x1,
// no bias). test/text2image.test.ts checks the count against lora.py on real diffusers UNets.

import { familyRegistry } from "../families.js";
import type { Recipe } from "../recipe/types.js";
import type { TensorShapes } from "./safetensors.js";

/** What `generator.lora.target_modules: null` adapts: the family registry's default_lora_targets (lora.py's
 * DEFAULT_TARGET_MODULES reads the same list). */
export const DEFAULT_LORA_TARGETS: readonly string[] = familyRegistry().defaultLoraTargets;

export interface LoraPlan {
  rank: number;
  alpha: number;
  targets: string[];
  /** the adapters' parameters: what AdamW trains */
  params: number;
  /** the layers adapted */
  layers: number;
  /** targets that match no Linear or Conv2d weight (the worker refuses them) */
  unmatched: string[];
}

const matches = (module: string, target: string) => module === target || module.endsWith(`.${target}`);

/** The recipe's LoRA adapters on a UNet with these tensors; null when generator.lora.rank is null (the whole UNet trains). */
export function loraPlan(r: Recipe, unet: TensorShapes, defaultTargets: readonly string[] = DEFAULT_LORA_TARGETS): LoraPlan | null {
  const c = r.generator.lora;
  if (c.rank === null) return null;
  const rank = c.rank;
  const targets = c.target_modules ?? [...defaultTargets];
  // a Linear has a 2-d weight (out, in), a Conv2d a 4-d one (out, in / groups, kh, kw)
  const layers: [string, number[]][] = [];
  for (const [name, shape] of unet) {
    if (!name.endsWith(".weight") || (shape.length !== 2 && shape.length !== 4)) continue;
    layers.push([name.slice(0, -".weight".length), shape]);
  }
  let params = 0;
  let adapted = 0;
  for (const [module, shape] of layers) {
    if (!targets.some((t) => matches(module, t))) continue;
    const [out, inner, kh = 1, kw = 1] = shape as [number, number, number?, number?];
    params += rank * (inner * kh * kw + out);
    adapted += 1;
  }
  const unmatched = targets.filter((t) => !layers.some(([m]) => matches(m, t)));
  return { rank, alpha: c.alpha ?? rank, targets, params, layers: adapted, unmatched };
}
