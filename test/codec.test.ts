// The wire codec (docs/protocol.md §2-3): every message type and every dtype round-trips with tensor buffers
// passed through untouched, and tampered messages are rejected with the right ProtocolError code.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ProtocolError } from "../src/errors.js";
import { decodeMessage, encodeMessage, peekHeader } from "../src/protocol/codec.js";
import {
  DTYPES,
  DTYPE_ITEMSIZE,
  PROTOCOL_VERSION,
  byteLength,
  type DType,
  type Message,
  type MessageType,
  type TensorFrame,
} from "../src/protocol/messages.js";

function tensor(name: string, dtype: DType, shape: number[]): TensorFrame {
  const data = Buffer.alloc(byteLength(dtype, shape));
  for (let i = 0; i < data.length; i++) data[i] = (i * 37 + name.length) & 0xff;
  return { name, dtype, shape, data };
}

function request(type: MessageType, body: unknown, tensors: TensorFrame[] = []): Message {
  return { version: PROTOCOL_VERSION, id: "c-1", type, reply_to: null, status: null, sender: "coordinator", body, tensors };
}

function reply(type: MessageType, body: unknown, tensors: TensorFrame[] = [], status: "ok" | "error" = "ok"): Message {
  return { version: PROTOCOL_VERSION, id: "teacher-1", type, reply_to: "c-1", status, sender: "teacher", body, tensors };
}

const x = () => tensor("x_t_dmd", "float32", [2, 1, 4, 4]);
const t = () => tensor("t_dmd", "int64", [2]);

const examples: Record<string, Message> = {
  hello: request("hello", { worker: "fake_score", roles: ["fake_score", "discriminator"], run_dir: "/r", recipe: { seed: 0, gan: { enabled: true } }, torch_threads: 2 }),
  hello_reply: reply("hello_reply", { pid: 42, hostname: "h", python: "3.12.1", torch: "2.13.0", cuda: false, devices: ["cpu"], roles: ["teacher"] }),
  setup: request("setup", { role: "generator", teacher_dir: "/r/teacher" }),
  setup_teacher: request("setup", { role: "teacher", teacher_dir: null }),
  setup_reply: reply("setup_reply", { teacher_dir: "/r/teacher", params: 123456 }),
  op: request("op", { role: "teacher", op: "predict_x0", step: 7, args: { guidance_scale: 1.5 }, return: ["x0_real"] }, [x(), t(), tensor("cond", "int64", [2])]),
  op_reply: reply("op_reply", { metrics: { loss_dmd: 0.25, gen_k: 1 } }, [tensor("x0_real", "float32", [2, 1, 4, 4])]),
  save: request("save", { dir: "/r/checkpoints/step-00000100.tmp", step: 100 }),
  save_reply: reply("save_reply", { files: [{ name: "generator.safetensors", bytes: 1024, sha256: "ab".repeat(32) }] }),
  restore: request("restore", { dir: "/r/checkpoints/step-00000100" }),
  restore_reply: reply("restore_reply", {}),
  shutdown: request("shutdown", {}),
  shutdown_reply: reply("shutdown_reply", {}),
  heartbeat: { ...request("heartbeat", { worker: "teacher", pid: 42, busy: true, time: 1732000000.25 }), id: "teacher-7", sender: "teacher" },
  error_reply: reply("op_reply", { ename: "RuntimeError", evalue: "injected fault", traceback: "Traceback (most recent call last):\n..." }, [], "error"),
};

describe("round trip", () => {
  for (const [label, message] of Object.entries(examples)) {
    test(label, () => {
      const frames = encodeMessage(message);
      assert.equal(frames.length, 1 + message.tensors.length);
      const header = JSON.parse(frames[0]!.toString("utf8")) as Record<string, unknown>;
      assert.deepEqual(Object.keys(header).sort(), ["body", "id", "reply_to", "sender", "status", "tensors", "type", "version"]);
      const decoded = decodeMessage(frames);
      assert.deepEqual({ ...decoded, tensors: decoded.tensors.map((tf) => ({ ...tf, data: null })) }, { ...message, tensors: message.tensors.map((tf) => ({ ...tf, data: null })) });
      // Tensor bytes are the very same buffers, not copies.
      message.tensors.forEach((tf, i) => {
        assert.equal(frames[i + 1], tf.data);
        assert.equal(decoded.tensors[i]!.data, tf.data);
      });
    });
  }

  test("header frame numbers are 1-based, in tensor order", () => {
    const frames = encodeMessage(examples.op!);
    const header = JSON.parse(frames[0]!.toString("utf8")) as { tensors: { name: string; frame: number }[] };
    assert.deepEqual(header.tensors.map((s) => [s.name, s.frame]), [["x_t_dmd", 1], ["t_dmd", 2], ["cond", 3]]);
  });
});

describe("dtypes", () => {
  test("the table of item sizes is the protocol's", () => {
    assert.deepEqual(DTYPE_ITEMSIZE, { float32: 4, float16: 2, bfloat16: 2, float64: 8, int64: 8, int32: 4, uint8: 1, bool: 1 });
  });
  for (const dtype of DTYPES) {
    test(`${dtype}: shapes [3, 5], [] and [0, 4] round-trip byte for byte`, () => {
      const tensors = [tensor("a", dtype, [3, 5]), tensor("scalar", dtype, []), tensor("empty", dtype, [0, 4])];
      assert.equal(tensors[0]!.data.length, 15 * DTYPE_ITEMSIZE[dtype]);
      assert.equal(tensors[1]!.data.length, DTYPE_ITEMSIZE[dtype]);
      assert.equal(tensors[2]!.data.length, 0);
      const snapshot = tensors.map((tf) => Buffer.from(tf.data));
      const decoded = decodeMessage(encodeMessage(request("op", { role: "generator", op: "echo", step: 0, args: {}, return: [] }, tensors)));
      decoded.tensors.forEach((tf, i) => {
        assert.equal(tf.dtype, dtype);
        assert.deepEqual(tf.shape, tensors[i]!.shape);
        assert.ok(tf.data.equals(snapshot[i]!));
      });
    });
  }
  test("bfloat16 is carried as raw bytes (never converted)", () => {
    // 1.0, -2.0, NaN and a subnormal in bfloat16, little-endian.
    const data = Buffer.from([0x80, 0x3f, 0x00, 0xc0, 0xc0, 0x7f, 0x01, 0x00]);
    const decoded = decodeMessage(encodeMessage(request("op", { role: "generator", op: "echo", step: 0, args: {}, return: [] }, [{ name: "w", dtype: "bfloat16", shape: [4], data }])));
    assert.equal(decoded.tensors[0]!.data, data);
    assert.deepEqual([...decoded.tensors[0]!.data], [0x80, 0x3f, 0x00, 0xc0, 0xc0, 0x7f, 0x01, 0x00]);
  });
});

// --- tampering -----------------------------------------------------------------------------------------------

function framesOf(message: Message): Buffer[] {
  return encodeMessage(message);
}
function withHeader(frames: Buffer[], edit: (h: Record<string, any>) => void): Buffer[] {
  const header = JSON.parse(frames[0]!.toString("utf8")) as Record<string, any>;
  edit(header);
  return [Buffer.from(JSON.stringify(header)), ...frames.slice(1)];
}
function rejects(frames: Buffer[], code: string, pattern?: RegExp): void {
  assert.throws(
    () => decodeMessage(frames),
    (error: unknown) => {
      assert.ok(error instanceof ProtocolError, `expected ProtocolError, got ${String(error)}`);
      assert.equal(error.code, code, error.message);
      assert.equal(error.exitCode, 1);
      assert.ok(!error.message.includes("\n"), "one line");
      if (pattern) assert.match(error.message, pattern);
      return true;
    },
  );
}

describe("tampered messages are rejected", () => {
  const op = () => framesOf(examples.op!);
  const opReply = () => framesOf(examples.op_reply!);

  test("no frames at all", () => rejects([], "PROTOCOL_MISSING_FRAME"));
  test("header is not JSON", () => rejects([Buffer.from("{not json"), ...op().slice(1)], "PROTOCOL_BAD_JSON"));
  test("header is not UTF-8", () => rejects([Buffer.from([0x7b, 0xff, 0xfe, 0x7d])], "PROTOCOL_BAD_JSON"));
  test("header is a JSON array", () => rejects([Buffer.from("[1, 2]")], "PROTOCOL_BAD_JSON"));
  test("another protocol version", () => rejects(withHeader(op(), (h) => (h.version = 2)), "PROTOCOL_VERSION", /version 2.*version 1/));
  test("version checked before anything else", () => rejects([Buffer.from('{"version": 99}')], "PROTOCOL_VERSION"));
  test("version is not an integer", () => rejects(withHeader(op(), (h) => (h.version = "1")), "PROTOCOL_BAD_FIELD"));
  for (const field of ["version", "id", "type", "reply_to", "status", "sender", "body", "tensors"]) {
    test(`missing ${field}`, () => rejects(withHeader(op(), (h) => delete h[field]), "PROTOCOL_MISSING_FIELD", new RegExp(field)));
  }
  test("unknown type", () => rejects(withHeader(op(), (h) => (h.type = "launch_missiles")), "PROTOCOL_BAD_FIELD", /unknown type/));
  test("a request with a status", () => rejects(withHeader(op(), (h) => (h.status = "ok")), "PROTOCOL_BAD_FIELD", /status/));
  test("a reply without reply_to", () => rejects(withHeader(opReply(), (h) => (h.reply_to = null)), "PROTOCOL_BAD_FIELD", /reply_to/));
  test("a reply with a bad status", () => rejects(withHeader(opReply(), (h) => (h.status = "fine")), "PROTOCOL_BAD_FIELD", /status/));
  test("body is not an object", () => rejects(withHeader(op(), (h) => (h.body = [])), "PROTOCOL_BAD_FIELD", /body/));
  test("op body lacks step", () => rejects(withHeader(op(), (h) => delete h.body.step), "PROTOCOL_MISSING_FIELD", /body\.step/));
  test("op reply metrics are not numbers", () => rejects(withHeader(opReply(), (h) => (h.body.metrics = { loss: "low" })), "PROTOCOL_BAD_FIELD", /metrics/));
  test("error reply lacks ename", () => rejects(withHeader(framesOf(examples.error_reply!), (h) => delete h.body.ename), "PROTOCOL_MISSING_FIELD", /ename/));
  test("heartbeat lacks busy", () => rejects(withHeader(framesOf(examples.heartbeat!), (h) => delete h.body.busy), "PROTOCOL_MISSING_FIELD", /busy/));
  test("tensor entry lacks dtype", () => rejects(withHeader(op(), (h) => delete h.tensors[0].dtype), "PROTOCOL_MISSING_FIELD", /dtype/));
  test("unknown dtype", () => rejects(withHeader(op(), (h) => (h.tensors[0].dtype = "complex64")), "PROTOCOL_BAD_FIELD", /complex64/));
  test("negative dimension", () => rejects(withHeader(op(), (h) => (h.tensors[0].shape = [-2, 16])), "PROTOCOL_BAD_FIELD", /shape/));
  test("fractional dimension", () => rejects(withHeader(op(), (h) => (h.tensors[0].shape = [2.5])), "PROTOCOL_BAD_FIELD", /shape/));
  test("frame 0 named as a tensor", () => rejects(withHeader(op(), (h) => (h.tensors[0].frame = 0)), "PROTOCOL_BAD_FIELD", /frame/));
  test("a frame that is not there", () => rejects(op().slice(0, 3), "PROTOCOL_MISSING_FRAME", /frame 3/));
  test("a frame named twice", () => rejects(withHeader(op(), (h) => (h.tensors[2].frame = 2)), "PROTOCOL_BAD_FIELD", /frame 2/));
  test("an extra frame", () => rejects([...op(), Buffer.alloc(4)], "PROTOCOL_EXTRA_FRAME", /frame 4/));
  test("a frame one byte short", () => {
    const frames = op();
    rejects([frames[0]!, frames[1]!.subarray(0, frames[1]!.length - 1), ...frames.slice(2)], "PROTOCOL_FRAME_LENGTH", /x_t_dmd.*127 bytes.*expected 128/);
  });
  test("a frame too long", () => {
    const frames = op();
    rejects([frames[0]!, frames[1]!, Buffer.concat([frames[2]!, Buffer.alloc(8)]), frames[3]!], "PROTOCOL_FRAME_LENGTH", /t_dmd/);
  });
  test("shape changed without the bytes", () => rejects(withHeader(op(), (h) => (h.tensors[0].shape = [2, 1, 4, 5])), "PROTOCOL_FRAME_LENGTH"));
  test("dtype changed without the bytes", () => rejects(withHeader(op(), (h) => (h.tensors[0].dtype = "float64")), "PROTOCOL_FRAME_LENGTH"));
  test("duplicate tensor names", () => rejects(withHeader(op(), (h) => (h.tensors[1].name = "x_t_dmd")), "PROTOCOL_DUPLICATE_TENSOR", /x_t_dmd/));
});

describe("encoder", () => {
  test("refuses a tensor whose bytes do not match its shape", () => {
    const bad = { ...x(), shape: [3] };
    assert.throws(() => encodeMessage(request("op", { role: "teacher", op: "predict_x0", step: 0, args: {}, return: [] }, [bad])), { code: "PROTOCOL_FRAME_LENGTH" });
  });
  test("refuses duplicate tensor names", () => {
    assert.throws(() => encodeMessage(request("op", { role: "teacher", op: "predict_x0", step: 0, args: {}, return: [] }, [x(), x()])), { code: "PROTOCOL_DUPLICATE_TENSOR" });
  });
  test("refuses a request body that lacks a field", () => {
    assert.throws(() => encodeMessage(request("setup", { role: "teacher" })), { code: "PROTOCOL_MISSING_FIELD" });
  });
});

describe("leniency", () => {
  test("Python's NaN / Infinity literals in metrics are read as JS numbers", () => {
    const text = '{"version": 1, "id": "g-1", "type": "op_reply", "reply_to": "c-1", "status": "ok", "sender": "generator", "body": {"metrics": {"a": NaN, "b": Infinity, "c": -Infinity, "d": 1.5}, "note": "NaN stays a string"}, "tensors": []}';
    const m = decodeMessage([Buffer.from(text)]);
    const body = m.body as { metrics: Record<string, number>; note: string };
    assert.ok(Number.isNaN(body.metrics.a));
    assert.equal(body.metrics.b, Infinity);
    assert.equal(body.metrics.c, -Infinity);
    assert.equal(body.metrics.d, 1.5);
    assert.equal(body.note, "NaN stays a string");
  });
  test("extra body fields are allowed", () => {
    const m = decodeMessage(withHeader(framesOf(examples.setup_reply!), (h) => (h.body.extra = { any: 1 })));
    assert.equal((m.body as { extra: { any: number } }).extra.any, 1);
  });
  test("peekHeader reads what it can from a broken message", () => {
    const frames = withHeader(framesOf(examples.op_reply!), (h) => (h.version = 3));
    assert.deepEqual(peekHeader(frames), { id: "teacher-1", type: "op_reply", reply_to: "c-1", version: 3 });
    assert.deepEqual(peekHeader([Buffer.from("garbage")]), {});
  });
});
