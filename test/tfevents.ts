// Test-only reader of TensorBoard event files, written apart from src/run/tensorboard.ts so that the writer is
// checked against an independent decoder: its own bitwise crc32c (no table), its own protobuf wire-format parser.
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";

/** crc32c, bit by bit (reflected Castagnoli polynomial 0x82F63B78). */
export function crc32cBitwise(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = (crc >>> 1) ^ (0x82f63b78 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}

const unmask = (m: number) => {
  const rot = (m - 0xa282ead8) >>> 0;
  return ((rot >>> 17) | (rot << 15)) >>> 0;
};

/** The records of a TFRecord file; throws on a bad length or data crc, or trailing bytes. */
export function readRecords(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let o = 0;
  while (o < buf.length) {
    if (o + 12 > buf.length) throw new Error(`truncated record header at ${o}`);
    const len = Number(buf.readBigUInt64LE(o));
    if (unmask(buf.readUInt32LE(o + 8)) !== crc32cBitwise(buf.subarray(o, o + 8))) throw new Error(`bad length crc at ${o}`);
    const data = buf.subarray(o + 12, o + 12 + len);
    if (data.length !== len || o + 16 + len > buf.length) throw new Error(`truncated record at ${o}`);
    if (unmask(buf.readUInt32LE(o + 12 + len)) !== crc32cBitwise(data)) throw new Error(`bad data crc at ${o}`);
    out.push(data);
    o += 16 + len;
  }
  return out;
}

type Field = { field: number; wire: number; int?: bigint; bytes?: Buffer; fixed?: Buffer };

export function parseProto(buf: Buffer): Field[] {
  const fields: Field[] = [];
  let o = 0;
  const varint = (): bigint => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      if (o >= buf.length) throw new Error("truncated varint");
      const b = buf[o++]!;
      v |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
      shift += 7n;
    }
  };
  while (o < buf.length) {
    const k = Number(varint());
    const field = k >>> 3;
    const wire = k & 7;
    if (wire === 0) fields.push({ field, wire, int: varint() });
    else if (wire === 1) (fields.push({ field, wire, fixed: buf.subarray(o, o + 8) }), (o += 8));
    else if (wire === 5) (fields.push({ field, wire, fixed: buf.subarray(o, o + 4) }), (o += 4));
    else if (wire === 2) {
      const n = Number(varint());
      fields.push({ field, wire, bytes: buf.subarray(o, o + n) });
      o += n;
    } else throw new Error(`unexpected wire type ${wire}`);
    if (o > buf.length) throw new Error("truncated field");
  }
  return fields;
}

export interface DecodedEvent {
  wallTime: number;
  step: number;
  fileVersion?: string;
  sessionStatus?: number;
  scalars: Map<string, number>;
  images: Map<string, { height: number; width: number; colorspace: number; png: Buffer }>;
}

export function decodeEvent(buf: Buffer): DecodedEvent {
  const ev: DecodedEvent = { wallTime: Number.NaN, step: 0, scalars: new Map(), images: new Map() };
  for (const f of parseProto(buf)) {
    if (f.field === 1 && f.wire === 1) ev.wallTime = f.fixed!.readDoubleLE(0);
    else if (f.field === 2 && f.wire === 0) ev.step = Number(BigInt.asIntN(64, f.int!));
    else if (f.field === 3 && f.wire === 2) ev.fileVersion = f.bytes!.toString("utf8");
    else if (f.field === 7 && f.wire === 2) ev.sessionStatus = Number(parseProto(f.bytes!).find((x) => x.field === 1)?.int ?? 0n);
    else if (f.field === 5 && f.wire === 2) {
      for (const v of parseProto(f.bytes!).filter((x) => x.field === 1)) {
        const vf = parseProto(v.bytes!);
        const tag = vf.find((x) => x.field === 1)!.bytes!.toString("utf8");
        const simple = vf.find((x) => x.field === 2 && x.wire === 5);
        const image = vf.find((x) => x.field === 4 && x.wire === 2);
        if (simple) ev.scalars.set(tag, simple.fixed!.readFloatLE(0));
        if (image) {
          const im = parseProto(image.bytes!);
          const int = (n: number) => Number(im.find((x) => x.field === n)?.int ?? 0n);
          ev.images.set(tag, { height: int(1), width: int(2), colorspace: int(3), png: im.find((x) => x.field === 4)!.bytes! });
        }
      }
    } else throw new Error(`unexpected Event field ${f.field} (wire ${f.wire})`);
  }
  return ev;
}

export const readEventFile = (file: string) => readRecords(readFileSync(file)).map(decodeEvent);

/** The event files of a folder, in the order TensorBoard reads them (by name). */
export const eventFiles = (dir: string) =>
  readdirSync(dir)
    .filter((n) => n.includes("tfevents"))
    .sort()
    .map((n) => path.join(dir, n));

/**
 * What TensorBoard would show: the events of all files in order, where a SessionLog START at step s drops
 * everything earlier files logged at step s and later.
 */
export function effectiveEvents(dir: string): DecodedEvent[] {
  let out: DecodedEvent[] = [];
  for (const file of eventFiles(dir)) {
    for (const ev of readEventFile(file)) {
      if (ev.sessionStatus === 1) out = out.filter((e) => e.step < ev.step);
      else if (ev.scalars.size || ev.images.size) out.push(ev);
    }
  }
  return out;
}
