// TensorBoard event files (src/run/tensorboard.ts) read back with an independent decoder (test/tfevents.ts), and the
// fixture folder python-worker/tests/fixtures/tb/ that the Python side reads with TensorBoard's own EventAccumulator
// (python-worker/tests/test_tensorboard.py). To regenerate the fixture after a deliberate change to the writer:
//   npm run build && DMD2_UPDATE_FIXTURES=1 node --test dist/test/tensorboard.test.js
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { crc32c, encodeEvent, EventWriter, maskedCrc32c, pngInfo, tfrecord } from "../src/run/tensorboard.js";
import { projectRoot, scratchDir } from "./helpers.js";
import { crc32cBitwise, decodeEvent, effectiveEvents, eventFiles, readEventFile, readRecords } from "./tfevents.js";

const fixtures = path.join(projectRoot, "python-worker", "tests", "fixtures");
const gridPng = readFileSync(path.join(fixtures, "grid.png"));

test("crc32c: the standard check value and the RFC 3720 vectors, table and bitwise versions agree", () => {
  const vectors: Array<[Uint8Array, number]> = [
    [Buffer.from("123456789"), 0xe3069283],
    [Buffer.alloc(0), 0],
    [Buffer.alloc(32, 0x00), 0x8a9136aa],
    [Buffer.alloc(32, 0xff), 0x62a8ab43],
    [Buffer.from(Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e],
    [Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c],
  ];
  for (const [data, want] of vectors) {
    assert.equal(crc32c(data), want, `crc32c of ${data.length} bytes`);
    assert.equal(crc32cBitwise(data), want);
  }
  // the mask: rotate right by 15, add 0xa282ead8
  const c = crc32c(Buffer.from("123456789"));
  assert.equal(maskedCrc32c(Buffer.from("123456789")), ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0);
});

test("TFRecord framing: length, masked crc of the length, data, masked crc of the data", () => {
  const data = Buffer.from("hello tensorboard");
  const rec = tfrecord(data);
  assert.equal(rec.length, 8 + 4 + data.length + 4);
  assert.equal(Number(rec.readBigUInt64LE(0)), data.length);
  assert.deepEqual(readRecords(Buffer.concat([rec, rec])), [data, data]);
  const bad = Buffer.from(rec);
  bad[14] ^= 1;
  assert.throws(() => readRecords(bad), /bad data crc/);
});

test("Event encoding: wall time, step, file version, scalars (NaN too), images, session start", () => {
  const ev = decodeEvent(
    encodeEvent({
      wallTime: 1700000000.25,
      step: 123456789012,
      summary: [
        { tag: "loss/loss_dmd", simpleValue: 0.5 },
        { tag: "loss/loss_fake", simpleValue: Number.NaN },
        { tag: "samples/grid", image: { ...pngInfo(gridPng), png: gridPng } },
      ],
    }),
  );
  assert.equal(ev.wallTime, 1700000000.25);
  assert.equal(ev.step, 123456789012);
  assert.equal(ev.scalars.get("loss/loss_dmd"), 0.5);
  assert.ok(Number.isNaN(ev.scalars.get("loss/loss_fake")));
  assert.deepEqual(ev.images.get("samples/grid"), { height: 38, width: 38, colorspace: 1, png: gridPng });
  assert.equal(decodeEvent(encodeEvent({ wallTime: 1, step: 0, fileVersion: "brain.Event:2" })).fileVersion, "brain.Event:2");
  assert.equal(decodeEvent(encodeEvent({ wallTime: 1, step: 7, sessionStart: true })).sessionStatus, 1);
});

test("pngInfo reads width, height and colour from IHDR; anything else is refused", () => {
  assert.deepEqual(pngInfo(gridPng), { width: 38, height: 38, colorspace: 1 });
  const rgb = Buffer.from(gridPng);
  rgb[25] = 2;
  assert.equal(pngInfo(rgb).colorspace, 3);
  assert.throws(() => pngInfo(Buffer.from("GIF89a not a png at all, really not")), /not a PNG/);
});

test("EventWriter: no file until the first event; file_version first; a second writer gets its own file", () => {
  const dir = path.join(scratchDir("dmd2-tb-"), "tb");
  const idle = new EventWriter(dir);
  idle.close();
  assert.ok(!existsSync(dir), "an unused writer makes nothing");
  const clock = () => 1700000000.5;
  const a = new EventWriter(dir, { now: clock, host: "h" });
  a.scalars(1, [["loss/x", 1.5], ["loss/y", null]]);
  a.close();
  const b = new EventWriter(dir, { now: clock, host: "h" });
  b.scalars(2, [["loss/x", 2.5]]);
  b.close();
  assert.deepEqual(readdirSync(dir).sort(), ["events.out.tfevents.1700000000.h", "events.out.tfevents.1700000000.h.1"]);
  const evs = readEventFile(path.join(dir, "events.out.tfevents.1700000000.h"));
  assert.equal(evs[0]!.fileVersion, "brain.Event:2");
  assert.equal(evs[0]!.step, 0);
  assert.equal(evs[1]!.step, 1);
  assert.equal(evs[1]!.scalars.get("loss/x"), 1.5);
  assert.ok(Number.isNaN(evs[1]!.scalars.get("loss/y")), "null (non-finite in metrics.jsonl) is written as NaN");
  assert.equal(evs[1]!.wallTime, 1700000000.5);
});

/** The fixture: a run of 4 steps, then a run resumed at step 3 that logs steps 3..5 again with other values. */
function writeFixture(dir: string) {
  let t = 1700000000;
  const a = new EventWriter(dir, { now: () => t, host: "fixture" });
  for (let step = 1; step <= 4; step++) {
    t += 1;
    a.scalars(step, [
      ["loss/loss_dmd", step === 2 ? null : 1 / 2 ** step],
      ["lr/lr_generator", 1e-5 * step],
    ]);
    if (step % 2 === 0) a.image(step, "samples/grid", gridPng);
  }
  a.close();
  t = 1700000100;
  const b = new EventWriter(dir, { now: () => t, host: "fixture" });
  b.sessionStart(3);
  for (let step = 3; step <= 5; step++) {
    t += 1;
    b.scalars(step, [
      ["loss/loss_dmd", 10 + step],
      ["lr/lr_generator", 1e-5 * step],
    ]);
  }
  b.image(5, "samples/grid", gridPng);
  b.close();
}

test("the shared fixture python-worker/tests/fixtures/tb is exactly what the writer writes", () => {
  const dir = scratchDir("dmd2-tb-fixture-");
  writeFixture(dir);
  const fixtureDir = path.join(fixtures, "tb");
  if (process.env.DMD2_UPDATE_FIXTURES === "1") {
    rmSync(fixtureDir, { recursive: true, force: true });
    mkdirSync(fixtureDir, { recursive: true });
    for (const f of eventFiles(dir)) writeFileSync(path.join(fixtureDir, path.basename(f)), readFileSync(f));
  }
  const names = eventFiles(dir).map((f) => path.basename(f));
  assert.deepEqual(names, ["events.out.tfevents.1700000001.fixture", "events.out.tfevents.1700000100.fixture"]);
  assert.deepEqual(eventFiles(fixtureDir).map((f) => path.basename(f)), names);
  for (const n of names) assert.ok(readFileSync(path.join(dir, n)).equals(readFileSync(path.join(fixtureDir, n))), `${n} differs from the fixture`);

  // what TensorBoard shows: steps 3 and 4 of the first file are replaced by the resumed run's
  const evs = effectiveEvents(dir);
  const dmd = evs.filter((e) => e.scalars.has("loss/loss_dmd")).map((e) => [e.step, e.scalars.get("loss/loss_dmd")]);
  assert.deepEqual(dmd, [[1, 0.5], [2, Number.NaN], [3, 13], [4, 14], [5, 15]]);
  assert.deepEqual(evs.filter((e) => e.images.size).map((e) => e.step), [2, 5]);
});
