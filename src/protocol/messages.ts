/**
 * Typed messages of the dmd2 worker protocol (docs/protocol.md). Field names of headers and bodies are the
 * wire names (snake_case), so a message object reads like the JSON it becomes.
 */

export const PROTOCOL_VERSION = 1;

/** Item size in bytes of each dtype the protocol allows (docs/protocol.md §2). */
export const DTYPE_ITEMSIZE = {
  float32: 4,
  float16: 2,
  bfloat16: 2,
  float64: 8,
  int64: 8,
  int32: 4,
  uint8: 1,
  bool: 1,
} as const;

export type DType = keyof typeof DTYPE_ITEMSIZE;
export const DTYPES = Object.keys(DTYPE_ITEMSIZE) as DType[];

export function isDType(value: unknown): value is DType {
  return typeof value === "string" && Object.prototype.hasOwnProperty.call(DTYPE_ITEMSIZE, value);
}

export const ROLES = ["teacher", "generator", "fake_score", "discriminator"] as const;
export type Role = (typeof ROLES)[number];

export function isRole(value: unknown): value is Role {
  return typeof value === "string" && (ROLES as readonly string[]).includes(value);
}

export const REQUEST_TYPES = ["hello", "setup", "op", "save", "restore", "shutdown"] as const;
export type RequestType = (typeof REQUEST_TYPES)[number];
export type ReplyType = `${RequestType}_reply`;
export type MessageType = RequestType | ReplyType | "heartbeat";

export const MESSAGE_TYPES: readonly MessageType[] = [
  ...REQUEST_TYPES,
  ...REQUEST_TYPES.map((type) => `${type}_reply` as const),
  "heartbeat",
];

export function isRequestType(type: string): type is RequestType {
  return (REQUEST_TYPES as readonly string[]).includes(type);
}
export function isReplyType(type: string): type is ReplyType {
  return type.endsWith("_reply") && isRequestType(type.slice(0, -"_reply".length));
}
export function replyTypeOf(type: RequestType): ReplyType {
  return `${type}_reply`;
}

export type ReplyStatus = "ok" | "error";

/** A tensor as the header describes it: where its bytes are (frame, 1-based). */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
  frame: number;
}

/** The JSON header, frame 0 of a message, exactly as on the wire. */
export interface Header<B = unknown> {
  version: number;
  id: string;
  type: MessageType;
  reply_to: string | null;
  status: ReplyStatus | null;
  sender: string;
  body: B;
  tensors: TensorSpec[];
}

/**
 * A tensor with its bytes. `data` is passed through untouched: the coordinator never reads tensor data, and
 * neither the encoder nor the decoder copies it.
 */
export interface TensorFrame {
  name: string;
  dtype: DType;
  shape: number[];
  data: Buffer;
}

/** A decoded message: the header's fields, with the tensors' bytes attached (frame order). */
export interface Message<B = unknown> {
  version: number;
  id: string;
  type: MessageType;
  reply_to: string | null;
  status: ReplyStatus | null;
  sender: string;
  body: B;
  tensors: TensorFrame[];
}

// --- bodies (docs/protocol.md §3) -------------------------------------------------------------------------

export type EmptyBody = Record<string, never>;

export interface HelloBody {
  worker: string;
  roles: Role[];
  run_dir: string;
  /** The resolved recipe (docs/recipe.md, "Resolved form"). */
  recipe: Record<string, unknown>;
  torch_threads: number;
}

export interface HelloReplyBody {
  pid: number;
  hostname: string;
  python: string;
  torch: string;
  cuda: boolean;
  /** what this worker's torch can place work on: "cpu", "cuda:0", ... */
  devices: string[];
  /** names of the CUDA devices, in index order (absent from older workers) */
  cuda_names?: string[];
  /** a replicated role's rank and world size (0 and 1 otherwise) */
  rank?: number;
  world?: number;
  roles: Role[];
}

export interface SetupBody {
  role: Role;
  teacher_dir: string | null;
}

export interface SetupReplyBody {
  params: number;
  /** Only from a LoRA generator: the adapters' parameters (what trains). */
  trained_params?: number;
  /** Only from the teacher: `<run_dir>/teacher`. */
  teacher_dir?: string;
}

export interface OpBody {
  role: Role;
  op: string;
  step: number;
  args: Record<string, unknown>;
  return: string[];
}

export interface OpReplyBody {
  /** null stands for a NaN or infinite value */
  metrics: Record<string, number | null>;
  /** when the op ran, in the worker's wall clock (seconds since the epoch): [start, end] */
  time?: [number, number];
}

export interface SaveBody {
  dir: string;
  step: number;
}

export interface SavedFile {
  name: string;
  bytes: number;
  sha256: string;
}

export interface SaveReplyBody {
  files: SavedFile[];
}

export interface RestoreBody {
  dir: string;
}

export type RestoreReplyBody = EmptyBody;
export type ShutdownBody = EmptyBody;
export type ShutdownReplyBody = EmptyBody;

export interface ErrorBody {
  ename: string;
  evalue: string;
  traceback: string;
}

export interface HeartbeatBody {
  worker: string;
  pid: number;
  busy: boolean;
  /** Unix seconds on the worker's clock. */
  time: number;
}

/** Request body by request type. */
export interface RequestBodies {
  hello: HelloBody;
  setup: SetupBody;
  op: OpBody;
  save: SaveBody;
  restore: RestoreBody;
  shutdown: ShutdownBody;
}

/** Body of an ok reply by request type. */
export interface ReplyBodies {
  hello: HelloReplyBody;
  setup: SetupReplyBody;
  op: OpReplyBody;
  save: SaveReplyBody;
  restore: RestoreReplyBody;
  shutdown: ShutdownReplyBody;
}

export type RequestMessage<T extends RequestType = RequestType> = Message<RequestBodies[T]> & { type: T };
export type OkReplyMessage<T extends RequestType = RequestType> = Message<ReplyBodies[T]> & {
  type: `${T}_reply`;
  status: "ok";
};
export type ErrorReplyMessage = Message<ErrorBody> & { type: ReplyType; status: "error" };
export type HeartbeatMessage = Message<HeartbeatBody> & { type: "heartbeat" };

/** Number of elements of a shape (1 for a 0-d tensor). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const dim of shape) n *= dim;
  return n;
}

/** Bytes a tensor of this dtype and shape takes on the wire. */
export function byteLength(dtype: DType, shape: readonly number[]): number {
  return numel(shape) * DTYPE_ITEMSIZE[dtype];
}
