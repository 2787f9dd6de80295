// Checkpoint verification reads files in chunks (src/run/checkpoints.ts): a whole-file read fails above 2 GiB, and
// an SD 1.5 generator.safetensors is 3.4 GB. The chunked hash must equal the whole-buffer one across chunk edges.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { sha256OfFile, verifyCheckpoint } from "../src/run/checkpoints.js";
import { scratchDir } from "./helpers.js";

test("sha256OfFile reads in chunks and equals the whole-buffer hash; verifyCheckpoint finds a changed byte", () => {
  const dir = scratchDir("dmd2-ckpt-");
  const data = Buffer.alloc((8 << 20) * 2 + 12345); // two full 8 MiB chunks and a partial one
  for (let i = 0; i < data.length; i += 4096) data[i] = (i / 4096) % 251;
  writeFileSync(path.join(dir, "generator.safetensors"), data);
  const whole = createHash("sha256").update(data).digest("hex");
  assert.equal(sha256OfFile(path.join(dir, "generator.safetensors")), whole);
  writeFileSync(path.join(dir, "manifest.json"), JSON.stringify({ files: [{ name: "generator.safetensors", bytes: data.length, sha256: whole }] }));
  assert.deepEqual(verifyCheckpoint(dir), []);
  data[(8 << 20) + 1] ^= 1;
  writeFileSync(path.join(dir, "generator.safetensors"), data);
  assert.deepEqual(verifyCheckpoint(dir), ["generator.safetensors (checksum mismatch)"]);
});
