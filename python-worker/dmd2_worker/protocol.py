"""Wire format of the dmd2 worker protocol (docs/protocol.md §2-§3).

A message is one ZeroMQ multipart message: frame 0 is a JSON header, frames 1..n are raw tensor bytes.
`encode` and `decode` are the only places that know the layout; both check a header with the same rules, so
whatever `encode` produces `decode` accepts, and a tampered message raises `ProtocolError`.

Tensors travel as the raw little-endian bytes of a C-contiguous CPU tensor. `encode` hands out memoryviews of
the tensors' own storage (no copy for a contiguous CPU tensor): the caller must not modify those tensors until
the frames are sent (with pyzmq `copy=False`, wait for the send's tracker). `decode` copies each frame once into
memory the tensor owns, so received tensors are aligned, writable and independent of the frames; with
`borrow=True` (the server, which owns the frames it received) a large writable frame whose address suits the
dtype becomes the tensor's memory instead, without a copy (the tensor keeps the frame alive).
"""
from __future__ import annotations

import json
import math
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

PROTOCOL_VERSION = 1

if sys.byteorder != "little":  # pragma: no cover - no big-endian host is supported
    raise ImportError("dmd2_worker.protocol: tensor frames are little-endian; this host is big-endian")

# Wire dtype name -> torch dtype (docs/protocol.md §2).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

REQUEST_TYPES = frozenset({"hello", "setup", "op", "save", "restore", "shutdown"})
# `error_reply` answers a request whose type could not be read or is unknown (there is no `<type>_reply` then).
REPLY_TYPES = frozenset({f"{t}_reply" for t in REQUEST_TYPES} | {"error_reply"})
EVENT_TYPES = frozenset({"heartbeat"})
MESSAGE_TYPES = REQUEST_TYPES | REPLY_TYPES | EVENT_TYPES

HEADER_FIELDS = ("version", "id", "type", "reply_to", "status", "sender", "body", "tensors")
TENSOR_FIELDS = ("name", "dtype", "shape", "frame")
ERROR_FIELDS = ("ename", "evalue", "traceback")
STATUSES = ("ok", "error")


class ProtocolError(Exception):
    """A message that breaks docs/protocol.md. `header` is the decoded JSON header when there was one, so a
    receiver can still answer the request (see `request_id`)."""

    def __init__(self, message: str, header: Any = None):
        super().__init__(message)
        self.header = header if isinstance(header, dict) else None

    @property
    def request_id(self) -> str | None:
        """The id to answer with an error reply, or None: no readable id, or the message says it is not a
        request (a reply or a heartbeat), which is never answered."""
        h = self.header
        if h is None:
            return None
        msg_id = h.get("id")
        if not isinstance(msg_id, str) or not msg_id:
            return None
        msg_type = h.get("type")
        if isinstance(msg_type, str) and (msg_type in EVENT_TYPES or msg_type.endswith("_reply")):
            return None
        if h.get("reply_to") is not None:
            return None
        return msg_id

    @property
    def request_type(self) -> str | None:
        """The header's type when it is a known request type, else None."""
        msg_type = self.header.get("type") if self.header is not None else None
        return msg_type if isinstance(msg_type, str) and msg_type in REQUEST_TYPES else None


class ProtocolVersionError(ProtocolError):
    """The header's `version` is not PROTOCOL_VERSION."""


@dataclass(eq=False)
class Message:
    id: str
    type: str
    version: int = PROTOCOL_VERSION
    reply_to: str | None = None
    status: str | None = None
    sender: str = "coordinator"
    body: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def is_request(self) -> bool:
        return self.type in REQUEST_TYPES


class MessageIds:
    """Message ids `<prefix>-<n>`, unique for the life of the process; safe to share between threads."""

    def __init__(self, prefix: str):
        self._prefix = prefix
        self._next = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self._next += 1
            return f"{self._prefix}-{self._next}"


# ---------------------------------------------------------------------------------------------- encode


def encode(msg: Message) -> list[bytes | memoryview]:
    """Frames of `msg`: the JSON header, then one memoryview per tensor (sharing the tensor's memory when it
    is a contiguous CPU tensor; other tensors are made contiguous / moved to the CPU first)."""
    if not isinstance(msg.tensors, dict):
        raise ProtocolError(f"tensors must be a dict of name -> tensor, got {type(msg.tensors).__name__}")
    entries: list[dict[str, Any]] = []
    frames: list[bytes | memoryview] = [b""]
    for name, tensor in msg.tensors.items():
        dtype_name, shape, buf = _tensor_bytes(name, tensor)
        entries.append({"name": name, "dtype": dtype_name, "shape": shape, "frame": len(frames)})
        frames.append(buf)
    header = {
        "version": msg.version,
        "id": msg.id,
        "type": msg.type,
        "reply_to": msg.reply_to,
        "status": msg.status,
        "sender": msg.sender,
        "body": msg.body,
        "tensors": entries,
    }
    try:
        text = json.dumps(header, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"message {msg.id!r} ({msg.type}): body is not plain JSON: {exc}", header) from exc
    # Re-read the header exactly as a receiver will, so nothing leaves that `decode` would reject.
    _check_header(json.loads(text), len(frames))
    frames[0] = text.encode("utf-8")
    for entry, buf in zip(entries, frames[1:]):
        _check_frame_length(entry, buf.nbytes, header)
    return frames


def _tensor_bytes(name: Any, tensor: Any) -> tuple[str, list[int], memoryview]:
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"tensor names must be non-empty strings, got {name!r}")
    if not isinstance(tensor, torch.Tensor):
        raise ProtocolError(f"tensor {name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
    dtype_name = _DTYPE_NAMES.get(tensor.dtype)
    if dtype_name is None:
        raise ProtocolError(
            f"tensor {name!r}: dtype {tensor.dtype} is not supported (supported: {', '.join(DTYPES)})")
    if tensor.layout != torch.strided:
        raise ProtocolError(f"tensor {name!r}: layout {tensor.layout} is not supported (dense tensors only)")
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()  # no-op (same tensor) when already C-contiguous
    shape = list(t.shape)
    # A flat byte view of the same memory; reshape(-1) first because 0-d tensors cannot change dtype by view.
    raw = t.reshape(-1).view(torch.uint8).numpy()
    return dtype_name, shape, memoryview(raw)


# ---------------------------------------------------------------------------------------------- decode


# Frames at least this large are borrowed (decode(borrow=True)) rather than copied: below it a copy costs less
# than it saves, and ZeroMQ may pack small frames together into one shared receive buffer.
BORROW_MIN_BYTES = 64 * 1024


def decode(frames: Sequence[Any], *, borrow: bool = False) -> Message:
    """Parse and check one multipart message (bytes, memoryviews or zmq.Frame objects). Raises
    ProtocolVersionError for another protocol version and ProtocolError for anything else malformed.

    With `borrow`, a tensor frame of at least BORROW_MIN_BYTES that is writable and aligned to its dtype's item
    size is used in place (the tensor shares the frame's memory and keeps it alive); only pass frames nobody else
    uses or changes, e.g. those just received with pyzmq `copy=False`. Other frames are copied as without it."""
    if len(frames) == 0:
        raise ProtocolError("empty message (no header frame)")
    header = _parse_header(_view(frames[0]))
    _check_header(header, len(frames))
    tensors: dict[str, torch.Tensor] = {}
    for entry in header["tensors"]:
        view = _view(frames[entry["frame"]])
        _check_frame_length(entry, view.nbytes, header)
        tensors[entry["name"]] = _tensor_from_bytes(entry, view, header, borrow=borrow)
    return Message(
        id=header["id"],
        type=header["type"],
        version=header["version"],
        reply_to=header["reply_to"],
        status=header["status"],
        sender=header["sender"],
        body=header["body"],
        tensors=tensors,
    )


def _view(frame: Any) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError as exc:
        raise ProtocolError(f"frame of type {type(frame).__name__} is not a bytes-like object") from exc
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_header(raw: memoryview) -> dict[str, Any]:
    try:
        text = str(raw, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"header is not UTF-8: {exc}") from exc
    try:
        header = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise ProtocolError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a JSON object, got {type(header).__name__}")
    return header


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is not an int here


def _check_header(h: dict[str, Any], n_frames: int) -> None:
    """Every rule of docs/protocol.md §2 that the header alone (plus the frame count) can break."""

    def fail(problem: str) -> None:
        msg_id = h.get("id")
        where = f"message {msg_id!r}" if isinstance(msg_id, str) else "message"
        raise ProtocolError(f"{where}: {problem}", h)

    # The version first: a message of another version may have other fields, and this is what to report.
    if "version" not in h:
        fail("header lacks the field 'version'")
    if not _is_int(h["version"]):
        fail(f"'version' must be an integer, got {h['version']!r}")
    if h["version"] != PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"protocol version {h['version']} is not supported (this worker speaks version {PROTOCOL_VERSION})", h)
    missing = [k for k in HEADER_FIELDS if k not in h]
    if missing:
        fail(f"header lacks the field(s) {', '.join(map(repr, missing))}")
    extra = sorted(k for k in h if k not in HEADER_FIELDS)
    if extra:
        fail(f"header has unknown field(s) {', '.join(map(repr, extra))}")
    if not isinstance(h["id"], str) or not h["id"]:
        fail(f"'id' must be a non-empty string, got {h['id']!r}")
    msg_type = h["type"]
    if not isinstance(msg_type, str) or msg_type not in MESSAGE_TYPES:  # (a list or object is not hashable)
        fail(f"unknown message type {msg_type!r}")
    if not isinstance(h["sender"], str) or not h["sender"]:
        fail(f"'sender' must be a non-empty string, got {h['sender']!r}")
    if not isinstance(h["body"], dict):
        fail(f"'body' must be an object, got {type(h['body']).__name__}")
    if msg_type in REPLY_TYPES:
        if not isinstance(h["reply_to"], str) or not h["reply_to"]:
            fail(f"a {msg_type} needs 'reply_to' (the request's id), got {h['reply_to']!r}")
        if not isinstance(h["status"], str) or h["status"] not in STATUSES:
            fail(f"a {msg_type} needs 'status' \"ok\" or \"error\", got {h['status']!r}")
        if h["status"] == "error":
            for key in ERROR_FIELDS:
                if not isinstance(h["body"].get(key), str):
                    fail(f"an error reply's body needs the string {key!r}")
    else:
        if h["reply_to"] is not None:
            fail(f"'reply_to' must be null in a {msg_type}, got {h['reply_to']!r}")
        if h["status"] is not None:
            fail(f"'status' must be null in a {msg_type}, got {h['status']!r}")

    entries = h["tensors"]
    if not isinstance(entries, list):
        fail(f"'tensors' must be an array, got {type(entries).__name__}")
    names: set[str] = set()
    used_frames: set[int] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            fail(f"tensors[{i}] must be an object")
        missing = [k for k in TENSOR_FIELDS if k not in entry]
        extra = sorted(k for k in entry if k not in TENSOR_FIELDS)
        if missing or extra:
            fail(f"tensors[{i}] must have exactly the fields {', '.join(TENSOR_FIELDS)}")
        name = entry["name"]
        if not isinstance(name, str) or not name:
            fail(f"tensors[{i}].name must be a non-empty string, got {name!r}")
        if name in names:
            fail(f"tensor name {name!r} appears twice")
        names.add(name)
        if entry["dtype"] not in DTYPES:
            fail(f"tensor {name!r}: unknown dtype {entry['dtype']!r}")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            fail(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
        frame = entry["frame"]
        if not _is_int(frame) or not 1 <= frame < n_frames:
            fail(f"tensor {name!r}: frame {frame!r} is not in the message ({n_frames} frames, header included)")
        if frame in used_frames:
            fail(f"tensor {name!r}: frame {frame} is named by two tensors")
        used_frames.add(frame)
    if len(used_frames) != n_frames - 1:
        fail(f"{n_frames - 1 - len(used_frames)} frame(s) are not named by any tensor")


def _nbytes(entry: dict[str, Any]) -> int:
    return math.prod(entry["shape"]) * DTYPES[entry["dtype"]].itemsize


def _check_frame_length(entry: dict[str, Any], actual: int, header: dict[str, Any]) -> None:
    expected = _nbytes(entry)
    if actual != expected:
        raise ProtocolError(
            f"message {header.get('id')!r}: tensor {entry['name']!r} ({entry['dtype']} {entry['shape']}) needs "
            f"{expected} bytes, its frame {entry['frame']} has {actual}", header)


def _tensor_from_bytes(entry: dict[str, Any], view: memoryview, header: dict[str, Any], *,
                       borrow: bool = False) -> torch.Tensor:
    dtype = DTYPES[entry["dtype"]]
    shape = entry["shape"]
    if view.nbytes == 0:  # torch.frombuffer refuses empty buffers
        return torch.empty(shape, dtype=dtype)
    raw: torch.Tensor | None = None
    if borrow and view.nbytes >= BORROW_MIN_BYTES and not view.readonly:
        raw = torch.frombuffer(view, dtype=torch.uint8)  # the frame's own memory, no copy
        if raw.data_ptr() % dtype.itemsize != 0:
            raw = None
    if raw is None:
        owned = bytearray(view)  # the one copy: aligned, writable, owned by the tensor
        raw = torch.frombuffer(owned, dtype=torch.uint8)
    if dtype == torch.bool and int(raw.max()) > 1:
        raise ProtocolError(
            f"message {header.get('id')!r}: bool tensor {entry['name']!r} has bytes other than 0 and 1", header)
    return raw.view(dtype).reshape(shape)


# ---------------------------------------------------------------------------------------------- replies


def reply_type(request_type: str | None) -> str:
    """The type of the reply to a request of `request_type` (`error_reply` when it is not a request type)."""
    return f"{request_type}_reply" if request_type in REQUEST_TYPES else "error_reply"


def make_reply(request: Message, body: dict[str, Any] | None = None,
               tensors: dict[str, torch.Tensor] | None = None, *, sender: str, msg_id: str) -> Message:
    """A `status: ok` reply to `request`."""
    return Message(id=msg_id, type=reply_type(request.type), reply_to=request.id, status="ok", sender=sender,
                   body={} if body is None else body, tensors={} if tensors is None else tensors)


def error_body(exc: BaseException) -> dict[str, str]:
    """{ename, evalue, traceback} of an exception (the traceback as Python prints it)."""
    try:
        evalue = str(exc)
    except Exception:  # an exception whose __str__ fails must still be reported
        evalue = f"<unprintable {type(exc).__name__}>"
    return {
        "ename": type(exc).__name__,
        "evalue": evalue,
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def make_error_reply(request: Message, exc: BaseException, *, sender: str, msg_id: str) -> Message:
    """A `status: error` reply to `request` carrying `exc`."""
    return make_error_reply_to(request.id, request.type, exc, sender=sender, msg_id=msg_id)


def make_error_reply_to(request_id: str, request_type: str | None, exc: BaseException, *, sender: str,
                        msg_id: str) -> Message:
    """An error reply to a request known only by its id and (maybe) type, e.g. a malformed one."""
    return Message(id=msg_id, type=reply_type(request_type), reply_to=request_id, status="error", sender=sender,
                   body=error_body(exc))


def heartbeat(worker: str, pid: int, busy: bool, time: float, *, msg_id: str) -> Message:
    return Message(id=msg_id, type="heartbeat", sender=worker,
                   body={"worker": worker, "pid": pid, "busy": busy, "time": time})


__all__ = [
    "PROTOCOL_VERSION", "DTYPES", "BORROW_MIN_BYTES", "REQUEST_TYPES", "REPLY_TYPES", "EVENT_TYPES", "MESSAGE_TYPES",
    "ProtocolError", "ProtocolVersionError", "Message", "MessageIds", "encode", "decode", "reply_type",
    "make_reply", "make_error_reply", "make_error_reply_to", "error_body", "heartbeat",
]
