// The resolved recipes: every key present (docs/recipe.md "Resolved form", docs/pipeline.md §3). Workers receive
// these objects; paths in them are absolute. Every type here is derived from the schema (schema.ts); a new key
// is added there only.

import { dataSchema, diffusionSchema, recipeSchema, teacherRecipeSchema, type SchemaValue } from "./schema.js";

export type Role = "teacher" | "generator" | "fake_score" | "discriminator";
export const ROLES: readonly Role[] = ["teacher", "generator", "fake_score", "discriminator"];

/** The distillation recipe after the schema pass (defaults in, keys that resolve.ts fills still null). */
export type CheckedRecipe = SchemaValue<typeof recipeSchema, "checked">;
/** The teacher recipe after the schema pass. */
export type CheckedTeacherRecipe = SchemaValue<typeof teacherRecipeSchema, "checked">;

export type Recipe = { version: number } & SchemaValue<typeof recipeSchema>;
/** `dmd2 train-teacher`'s resolved recipe (docs/pipeline.md §3); `out` is the teacher folder to write (absolute). */
export type TeacherRecipe = { version: number; kind: "teacher" } & SchemaValue<typeof teacherRecipeSchema>;

/** docs/pipeline.md §1 and docs/adapters.md §6. Paths are absolute (or null when unused). */
export type DataConfig = SchemaValue<typeof dataSchema>;
export type DataSource = DataConfig["source"];
export type DiffusionConfig = SchemaValue<typeof diffusionSchema>;
export type BetaSchedule = DiffusionConfig["beta_schedule"];
export type PredictionType = DiffusionConfig["prediction_type"];
export type Placement = Recipe["placement"];
export type Precision = Recipe["precision"];

/** Roles with a placement of their own; the discriminator follows fake_score (it is a head on its network). */
export type PlacedRole = keyof Recipe["roles"];
export const PLACED_ROLES: readonly PlacedRole[] = ["teacher", "generator", "fake_score"];

/** One role's resolved placement (docs/recipe.md "Placement"): one device per replica; strategy "replicate"
 * (whole copies, gradients all-reduced) or "fsdp" (parameters, gradients and optimizer state sharded); join: its
 * workers are started on other hosts with `dmd2 worker --join`. */
export type RolePlacement = Recipe["roles"][PlacedRole];
