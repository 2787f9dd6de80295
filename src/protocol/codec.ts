/**
 * Encoding and strict decoding of protocol messages (docs/protocol.md §2). Frame 0 is the JSON header, frames
 * 1..n the tensors' raw bytes. Tensor buffers are passed through as they are: never copied, never read.
 */
import { ProtocolError, type ProtocolErrorCode } from "../errors.js";
import {
  DTYPE_ITEMSIZE,
  MESSAGE_TYPES,
  PROTOCOL_VERSION,
  isDType,
  isReplyType,
  numel,
  type Header,
  type Message,
  type MessageType,
  type TensorFrame,
  type TensorSpec,
} from "./messages.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });

function fail(code: ProtocolErrorCode, message: string): never {
  throw new ProtocolError(message, { code });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  if (value === undefined) return "nothing";
  try {
    const text = JSON.stringify(value);
    return text.length > 60 ? `${text.slice(0, 60)}...` : text;
  } catch {
    return String(value);
  }
}

// --- header ------------------------------------------------------------------------------------------------

type Check = (value: unknown) => boolean;
const isString: Check = (v) => typeof v === "string";
const isNonEmptyString: Check = (v) => typeof v === "string" && v.length > 0;
const isInt: Check = (v) => typeof v === "number" && Number.isSafeInteger(v);
const isNonNegInt: Check = (v) => isInt(v) && (v as number) >= 0;
const isNumber: Check = (v) => typeof v === "number";
const isBool: Check = (v) => typeof v === "boolean";
const isStringOrNull: Check = (v) => v === null || typeof v === "string";
const isStringArray: Check = (v) => Array.isArray(v) && v.every((x) => typeof x === "string");
/** Metrics: numbers, or null for a value that was NaN or infinite (JSON has neither; docs/protocol.md §3). */
const isMetricRecord: Check = (v) => isObject(v) && Object.values(v).every((x) => typeof x === "number" || x === null);
const isSavedFiles: Check = (v) =>
  Array.isArray(v) &&
  v.every((f) => isObject(f) && isString(f.name) && isNonNegInt(f.bytes) && isString(f.sha256));

/** Required body fields per message type (extra fields are allowed). Error replies use ERROR_BODY. */
const BODY_FIELDS: Record<MessageType, Record<string, [Check, string]>> = {
  hello: {
    worker: [isNonEmptyString, "a string"],
    roles: [isStringArray, "a list of strings"],
    run_dir: [isString, "a string"],
    recipe: [isObject, "an object"],
    torch_threads: [isInt, "an integer"],
  },
  hello_reply: {
    pid: [isInt, "an integer"],
    hostname: [isString, "a string"],
    python: [isString, "a string"],
    torch: [isString, "a string"],
    cuda: [isBool, "a boolean"],
    devices: [isStringArray, "a list of strings"],
    roles: [isStringArray, "a list of strings"],
  },
  setup: { role: [isNonEmptyString, "a string"], teacher_dir: [isStringOrNull, "a string or null"] },
  setup_reply: { params: [isNonNegInt, "a non-negative integer"] },
  op: {
    role: [isNonEmptyString, "a string"],
    op: [isNonEmptyString, "a string"],
    step: [isInt, "an integer"],
    args: [isObject, "an object"],
    return: [isStringArray, "a list of strings"],
  },
  op_reply: { metrics: [isMetricRecord, "an object of numbers (or null for non-finite values)"] },
  save: { dir: [isString, "a string"], step: [isInt, "an integer"] },
  save_reply: { files: [isSavedFiles, "a list of {name, bytes, sha256}"] },
  restore: { dir: [isString, "a string"] },
  restore_reply: {},
  shutdown: {},
  shutdown_reply: {},
  heartbeat: {
    worker: [isNonEmptyString, "a string"],
    pid: [isInt, "an integer"],
    busy: [isBool, "a boolean"],
    time: [isNumber, "a number"],
  },
};

const ERROR_BODY: Record<string, [Check, string]> = {
  ename: [isString, "a string"],
  evalue: [isString, "a string"],
  traceback: [isString, "a string"],
};

function checkFields(
  where: string,
  object: Record<string, unknown>,
  fields: Record<string, [Check, string]>,
  prefix: string,
): void {
  for (const [key, [check, expected]] of Object.entries(fields)) {
    if (!(key in object)) fail("PROTOCOL_MISSING_FIELD", `${where}: missing ${prefix}${key}`);
    if (!check(object[key])) {
      fail("PROTOCOL_BAD_FIELD", `${where}: ${prefix}${key} must be ${expected}, got ${describe(object[key])}`);
    }
  }
}

function checkTensorSpec(where: string, entry: unknown, index: number): TensorSpec {
  const at = `${where}: tensors[${index}]`;
  if (!isObject(entry)) fail("PROTOCOL_BAD_FIELD", `${at} must be an object, got ${describe(entry)}`);
  for (const key of ["name", "dtype", "shape", "frame"]) {
    if (!(key in entry)) fail("PROTOCOL_MISSING_FIELD", `${at}: missing ${key}`);
  }
  const { name, dtype, shape, frame } = entry;
  if (!isNonEmptyString(name)) fail("PROTOCOL_BAD_FIELD", `${at}.name must be a non-empty string`);
  if (!isDType(dtype)) {
    fail(
      "PROTOCOL_BAD_FIELD",
      `${at} (${describe(name)}): dtype ${describe(dtype)} is not one of ${Object.keys(DTYPE_ITEMSIZE).join(", ")}`,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
    fail("PROTOCOL_BAD_FIELD", `${at} (${describe(name)}): shape must be a list of non-negative integers, got ${describe(shape)}`);
  }
  if (!isInt(frame) || (frame as number) < 1) {
    fail("PROTOCOL_BAD_FIELD", `${at} (${describe(name)}): frame must be an integer >= 1, got ${describe(frame)}`);
  }
  const bytes = numel(shape as number[]) * DTYPE_ITEMSIZE[dtype];
  if (!Number.isSafeInteger(bytes)) fail("PROTOCOL_BAD_FIELD", `${at} (${describe(name)}): shape is too large`);
  return { name: name as string, dtype, shape: [...(shape as number[])], frame: frame as number };
}

/**
 * Checks a parsed header against docs/protocol.md §2–3 and returns it typed. Does not look at frames.
 * Throws ProtocolError (code PROTOCOL_VERSION for another version, checked before anything else but the
 * header being an object).
 */
export function checkHeader(raw: unknown): Header {
  if (!isObject(raw)) fail("PROTOCOL_BAD_JSON", `header must be a JSON object, got ${describe(raw)}`);
  if (!("version" in raw)) fail("PROTOCOL_MISSING_FIELD", "header: missing version");
  if (!isInt(raw.version)) fail("PROTOCOL_BAD_FIELD", `header: version must be an integer, got ${describe(raw.version)}`);
  if (raw.version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      `protocol version ${raw.version as number} received, this side speaks version ${PROTOCOL_VERSION}`,
      {
        code: "PROTOCOL_VERSION",
        hint: "the coordinator and the worker package come from different dmd2 versions: run npm install",
      },
    );
  }
  for (const key of ["id", "type", "reply_to", "status", "sender", "body", "tensors"]) {
    if (!(key in raw)) fail("PROTOCOL_MISSING_FIELD", `header: missing ${key}`);
  }
  if (!isNonEmptyString(raw.id)) fail("PROTOCOL_BAD_FIELD", `header: id must be a non-empty string, got ${describe(raw.id)}`);
  const where = `message ${raw.id as string}`;
  if (typeof raw.type !== "string" || !(MESSAGE_TYPES as readonly string[]).includes(raw.type)) {
    fail("PROTOCOL_BAD_FIELD", `${where}: unknown type ${describe(raw.type)}`);
  }
  const type = raw.type as MessageType;
  const label = `${where} (${type})`;
  if (!isNonEmptyString(raw.sender)) fail("PROTOCOL_BAD_FIELD", `${label}: sender must be a non-empty string`);
  if (isReplyType(type)) {
    if (!isNonEmptyString(raw.reply_to)) {
      fail("PROTOCOL_BAD_FIELD", `${label}: reply_to must be the id of a request, got ${describe(raw.reply_to)}`);
    }
    if (raw.status !== "ok" && raw.status !== "error") {
      fail("PROTOCOL_BAD_FIELD", `${label}: status must be "ok" or "error", got ${describe(raw.status)}`);
    }
  } else {
    if (raw.reply_to !== null) fail("PROTOCOL_BAD_FIELD", `${label}: reply_to must be null, got ${describe(raw.reply_to)}`);
    if (raw.status !== null) fail("PROTOCOL_BAD_FIELD", `${label}: status must be null, got ${describe(raw.status)}`);
  }
  if (!isObject(raw.body)) fail("PROTOCOL_BAD_FIELD", `${label}: body must be an object, got ${describe(raw.body)}`);
  checkFields(label, raw.body, raw.status === "error" ? ERROR_BODY : BODY_FIELDS[type], "body.");
  if (!Array.isArray(raw.tensors)) fail("PROTOCOL_BAD_FIELD", `${label}: tensors must be a list, got ${describe(raw.tensors)}`);
  const names = new Set<string>();
  const tensors = raw.tensors.map((entry, index) => {
    const spec = checkTensorSpec(label, entry, index);
    if (names.has(spec.name)) fail("PROTOCOL_DUPLICATE_TENSOR", `${label}: tensor name "${spec.name}" appears twice`);
    names.add(spec.name);
    return spec;
  });
  return {
    version: raw.version,
    id: raw.id as string,
    type,
    reply_to: raw.reply_to as string | null,
    status: raw.status as Header["status"],
    sender: raw.sender as string,
    body: raw.body,
    tensors,
  };
}

// --- JSON --------------------------------------------------------------------------------------------------

const NON_FINITE = "\u0000dmd2:";

/**
 * Python's json.dumps writes NaN, Infinity and -Infinity (not JSON) for non-finite floats, e.g. a diverged
 * loss in `metrics`. Strict JSON is tried first; only if it fails, those bare tokens (outside strings) are read
 * as the JS numbers NaN / Infinity / -Infinity.
 */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (error) {
    const patched = patchNonFinite(text);
    if (patched === null) throw error;
    return JSON.parse(patched, (_key, value: unknown) => {
      if (typeof value === "string" && value.startsWith(NON_FINITE)) {
        const token = value.slice(NON_FINITE.length);
        return token === "NaN" ? NaN : token === "-Infinity" ? -Infinity : Infinity;
      }
      return value;
    });
  }
}

function patchNonFinite(text: string): string | null {
  let out = "";
  let changed = false;
  let i = 0;
  while (i < text.length) {
    const ch = text[i]!;
    if (ch === '"') {
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    const token = ["-Infinity", "Infinity", "NaN"].find((t) => text.startsWith(t, i));
    if (token !== undefined) {
      out += JSON.stringify(NON_FINITE + token);
      i += token.length;
      changed = true;
      continue;
    }
    out += ch;
    i += 1;
  }
  return changed ? out : null;
}

// --- encode / decode ---------------------------------------------------------------------------------------

/**
 * Encodes a message into ZeroMQ frames: the JSON header, then one frame per tensor, in the order of
 * `msg.tensors` (tensor i goes to frame i + 1). The tensors' `data` buffers are the frames themselves (no
 * copy). Throws ProtocolError when the message would be malformed.
 */
export function encodeMessage(msg: Message): Buffer[] {
  const specs: TensorSpec[] = msg.tensors.map((t, index) => ({
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    frame: index + 1,
  }));
  const header: Header = {
    version: msg.version,
    id: msg.id,
    type: msg.type,
    reply_to: msg.reply_to,
    status: msg.status,
    sender: msg.sender,
    body: msg.body ?? {},
    tensors: specs,
  };
  const checked = checkHeader(header);
  const frames: Buffer[] = [Buffer.from(JSON.stringify(header), "utf8")];
  msg.tensors.forEach((tensor, index) => {
    const spec = checked.tensors[index]!;
    if (!Buffer.isBuffer(tensor.data)) {
      fail("PROTOCOL_BAD_FIELD", `message ${msg.id} (${msg.type}): tensor "${tensor.name}" has no Buffer data`);
    }
    checkLength(`message ${msg.id} (${msg.type})`, spec, tensor.data);
    frames.push(tensor.data);
  });
  return frames;
}

function checkLength(label: string, spec: TensorSpec, data: Buffer): void {
  const expected = numel(spec.shape) * DTYPE_ITEMSIZE[spec.dtype];
  if (data.length !== expected) {
    fail(
      "PROTOCOL_FRAME_LENGTH",
      `${label}: tensor "${spec.name}" (${spec.dtype} [${spec.shape.join(", ")}]) has ${data.length} bytes in frame ${spec.frame}, expected ${expected}`,
    );
  }
}

/**
 * Decodes and validates ZeroMQ frames into a message. The tensors' `data` are the received frame buffers
 * themselves (no copy). Throws ProtocolError: PROTOCOL_VERSION for another protocol version, otherwise a code
 * naming what is malformed (bad JSON, missing or bad field, missing or extra frame, frame length, duplicate
 * tensor name).
 */
export function decodeMessage(frames: readonly Buffer[]): Message {
  if (frames.length === 0) fail("PROTOCOL_MISSING_FRAME", "empty message: no header frame");
  let raw: unknown;
  try {
    raw = parseJson(utf8.decode(frames[0]!));
  } catch (error) {
    throw new ProtocolError(`header is not valid UTF-8 JSON: ${(error as Error).message}`, {
      code: "PROTOCOL_BAD_JSON",
    });
  }
  const header = checkHeader(raw);
  const label = `message ${header.id} (${header.type})`;
  const used = new Set<number>();
  const tensors: TensorFrame[] = header.tensors.map((spec) => {
    if (spec.frame >= frames.length) {
      fail(
        "PROTOCOL_MISSING_FRAME",
        `${label}: tensor "${spec.name}" is in frame ${spec.frame}, but the message has ${frames.length} frames (0..${frames.length - 1})`,
      );
    }
    if (used.has(spec.frame)) fail("PROTOCOL_BAD_FIELD", `${label}: frame ${spec.frame} is named by two tensors`);
    used.add(spec.frame);
    const data = frames[spec.frame]!;
    checkLength(label, spec, data);
    return { name: spec.name, dtype: spec.dtype, shape: spec.shape, data };
  });
  if (used.size !== frames.length - 1) {
    const extra = [];
    for (let i = 1; i < frames.length; i++) if (!used.has(i)) extra.push(i);
    fail("PROTOCOL_EXTRA_FRAME", `${label}: frame${extra.length === 1 ? "" : "s"} ${extra.join(", ")} named by no tensor`);
  }
  return {
    version: header.version,
    id: header.id,
    type: header.type,
    reply_to: header.reply_to,
    status: header.status,
    sender: header.sender,
    body: header.body,
    tensors,
  };
}

/**
 * Best-effort look at a header that failed to decode, to tell which request a malformed reply answers.
 * Never throws.
 */
export function peekHeader(frames: readonly Buffer[]): {
  id?: string;
  type?: string;
  reply_to?: string;
  version?: number;
} {
  try {
    const raw = parseJson(utf8.decode(frames[0]!));
    if (!isObject(raw)) return {};
    const out: { id?: string; type?: string; reply_to?: string; version?: number } = {};
    if (typeof raw.id === "string") out.id = raw.id;
    if (typeof raw.type === "string") out.type = raw.type;
    if (typeof raw.reply_to === "string") out.reply_to = raw.reply_to;
    if (typeof raw.version === "number") out.version = raw.version;
    return out;
  } catch {
    return {};
  }
}
