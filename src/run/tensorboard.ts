// TensorBoard event files, written by hand: no TensorFlow, no protobuf library. A file is a sequence of TFRecords
//   u64 length (LE) | u32 masked crc32c(length bytes) | data | u32 masked crc32c(data)
// each holding one serialised `tensorflow.Event`; the first event carries only file_version "brain.Event:2".
// The protobuf subset used (field numbers from tensorflow/core/util/event.proto and framework/summary.proto):
//   Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; SessionLog session_log = 7 }
//   Summary    { repeated Value value = 1 }
//   Value      { string tag = 1; float simple_value = 2; Image image = 4 }
//   Image      { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4 }
//   SessionLog { enum status = 1 (START = 1) }

import { closeSync, existsSync, mkdirSync, openSync, readdirSync, rmSync, writeSync } from "node:fs";
import os from "node:os";
import path from "node:path";

// --- crc32c (Castagnoli, reflected polynomial 0x82F63B78) ---------------------------------------------------------

const CRC32C_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

export function crc32c(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC32C_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** TFRecord's masked crc: rotate right by 15 and add a constant, so that crcs of crcs stay well spread. */
export function maskedCrc32c(data: Uint8Array): number {
  const c = crc32c(data);
  return ((((c >>> 15) | (c << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

export function tfrecord(data: Uint8Array): Buffer {
  const out = Buffer.alloc(8 + 4 + data.length + 4);
  out.writeBigUInt64LE(BigInt(data.length), 0);
  out.writeUInt32LE(maskedCrc32c(out.subarray(0, 8)), 8);
  out.set(data, 12);
  out.writeUInt32LE(maskedCrc32c(data), 12 + data.length);
  return out;
}

// --- protobuf encoding (wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32) ---------------------------

function varint(n: number | bigint): Buffer {
  let v = BigInt(n);
  if (v < 0n) v = BigInt.asUintN(64, v); // int64: negative numbers take ten bytes, two's complement
  const bytes: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    bytes.push(b);
  } while (v > 0n);
  return Buffer.from(bytes);
}

const key = (field: number, wire: number) => varint((field << 3) | wire);
const pbVarint = (field: number, n: number) => Buffer.concat([key(field, 0), varint(n)]);
const pbBytes = (field: number, data: Uint8Array | string) => {
  const b = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  return Buffer.concat([key(field, 2), varint(b.length), b]);
};
const pbDouble = (field: number, x: number) => {
  const b = Buffer.alloc(8);
  b.writeDoubleLE(x);
  return Buffer.concat([key(field, 1), b]);
};
const pbFloat = (field: number, x: number) => {
  const b = Buffer.alloc(4);
  b.writeFloatLE(x);
  return Buffer.concat([key(field, 5), b]);
};

export interface ImageValue {
  height: number;
  width: number;
  /** 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA */
  colorspace: number;
  png: Uint8Array;
}

/** `text`: TensorBoard's text plugin (markdown), a string tensor with the plugin named in the value's metadata. */
export type SummaryValue = { tag: string; simpleValue: number } | { tag: string; image: ImageValue } | { tag: string; text: string };

export interface EventFields {
  wallTime: number;
  step: number;
  fileVersion?: string;
  summary?: SummaryValue[];
  sessionStart?: boolean;
}

export function encodeEvent(e: EventFields): Buffer {
  const parts: Buffer[] = [pbDouble(1, e.wallTime), pbVarint(2, e.step)];
  if (e.fileVersion !== undefined) parts.push(pbBytes(3, e.fileVersion));
  if (e.summary) {
    const values = e.summary.map((v) => {
      const inner: Buffer[] = [pbBytes(1, v.tag)];
      if ("simpleValue" in v) inner.push(pbFloat(2, v.simpleValue));
      else if ("text" in v) {
        // Summary.Value.metadata (9) = SummaryMetadata{plugin_data (1) = PluginData{plugin_name (1): "text"}};
        // Summary.Value.tensor (8) = TensorProto{dtype (1): DT_STRING = 7, tensor_shape (2): scalar, string_val (8)}
        inner.push(pbBytes(9, pbBytes(1, pbBytes(1, "text"))));
        inner.push(pbBytes(8, Buffer.concat([pbVarint(1, 7), pbBytes(2, Buffer.alloc(0)), pbBytes(8, v.text)])));
      } else {
        const img = v.image;
        inner.push(pbBytes(4, Buffer.concat([pbVarint(1, img.height), pbVarint(2, img.width), pbVarint(3, img.colorspace), pbBytes(4, img.png)])));
      }
      return pbBytes(1, Buffer.concat(inner));
    });
    parts.push(pbBytes(5, Buffer.concat(values)));
  }
  if (e.sessionStart) parts.push(pbBytes(7, pbVarint(1, 1)));
  return Buffer.concat(parts);
}

// --- PNG header -----------------------------------------------------------------------------------------------

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Width, height and TensorBoard colorspace from a PNG's IHDR chunk (the first chunk, right after the signature). */
export function pngInfo(png: Uint8Array): { width: number; height: number; colorspace: number } {
  const b = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  if (b.length < 33 || !b.subarray(0, 8).equals(PNG_SIGNATURE) || b.toString("latin1", 12, 16) !== "IHDR") {
    throw new Error("not a PNG file (no signature and IHDR chunk)");
  }
  const colorType = b[25]!;
  const colorspace = ({ 0: 1, 2: 3, 3: 3, 4: 2, 6: 4 } as Record<number, number>)[colorType];
  if (colorspace === undefined) throw new Error(`PNG colour type ${colorType} is not valid`);
  return { width: b.readUInt32BE(16), height: b.readUInt32BE(20), colorspace };
}

// --- the writer -----------------------------------------------------------------------------------------------

/**
 * Appends events to `<dir>/events.out.tfevents.<unix seconds>.<host>` (a numbered suffix if that exists). The file
 * is made on the first write, so a writer that is never used leaves nothing behind. Writes are synchronous: each
 * event is in the file (for TensorBoard to read) when the call returns.
 */
export class EventWriter {
  readonly dir: string;
  private fd: number | null = null;
  private fileName = "";
  private readonly now: () => number;
  private readonly host: string;

  /** `now` (unix seconds) and `host` only for tests that need the same bytes every time. */
  constructor(dir: string, opts: { now?: () => number; host?: string } = {}) {
    this.dir = dir;
    this.now = opts.now ?? (() => Date.now() / 1000);
    this.host = opts.host ?? os.hostname();
  }

  get file(): string {
    return this.fileName;
  }

  private open(): number {
    if (this.fd !== null) return this.fd;
    if (!existsSync(this.dir)) mkdirSync(this.dir); // one level: its parent (the run folder) is there
    const base = `events.out.tfevents.${Math.floor(this.now())}.${this.host}`;
    let name = path.join(this.dir, base);
    for (let i = 1; existsSync(name); i++) name = path.join(this.dir, `${base}.${i}`);
    this.fileName = name;
    this.fd = openSync(name, "wx");
    this.write({ wallTime: this.now(), step: 0, fileVersion: "brain.Event:2" });
    return this.fd;
  }

  write(e: EventFields): void {
    const fd = this.open();
    writeSync(fd, tfrecord(encodeEvent(e)));
  }

  /** One event with a scalar per entry (null, a non-finite value in metrics.jsonl, is written as NaN). */
  scalars(step: number, values: Array<[string, number | null]>, wallTime = this.now()): void {
    if (values.length === 0) return;
    this.write({ wallTime, step, summary: values.map(([tag, v]) => ({ tag, simpleValue: v ?? Number.NaN })) });
  }

  image(step: number, tag: string, png: Uint8Array, wallTime = this.now()): void {
    this.write({ wallTime, step, summary: [{ tag, image: { ...pngInfo(png), png } }] });
  }

  /** A text summary (markdown) at `step`: TensorBoard shows it in its Text tab. */
  text(step: number, tag: string, markdown: string, wallTime = this.now()): void {
    this.write({ wallTime, step, summary: [{ tag, text: markdown }] });
  }

  /**
   * A SessionLog START at `step`: TensorBoard then drops what earlier files logged at this step and later (a run
   * resumed from a checkpoint logs those steps again).
   */
  sessionStart(step: number, wallTime = this.now()): void {
    this.write({ wallTime, step, sessionStart: true });
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

/** Removes the event files in `dir` (a run that starts over from step 0 writes its own); other files stay. */
export function removeEventFiles(dir: string): void {
  if (!existsSync(dir)) return;
  for (const n of readdirSync(dir)) if (n.startsWith("events.out.tfevents.")) rmSync(path.join(dir, n), { force: true });
}
