"""The worker's socket side (docs/protocol.md §1, §3, §4).

`WorkerServer.serve()` connects a DEALER to the coordinator's request channel and answers requests one at a
time, in arrival order; a background thread with its own PUSH socket sends heartbeats, also while a request is
being computed. Every exception raised while handling a request becomes an error reply; a malformed message is
answered when its id can be read and logged to stderr otherwise. Nothing a peer sends stops the loop.

The roles (roles/base.py) do the work; this module owns sockets, framing, the tensor store and error replies.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch
import zmq

from .placement import available_devices, cuda_names, device_for, init_process_group, set_tf32, shard_from_env
from .store import TensorStore
from .protocol import (
    Message,
    MessageIds,
    ProtocolError,
    encode,
    decode,
    heartbeat,
    make_error_reply,
    make_error_reply_to,
    make_reply,
)

POLL_MS = 200                 # how often the idle loop looks at the stop flag and the parent process
ORPHAN_GRACE_S = 3.0          # parent gone and no request for this long: exit
SHUTDOWN_LINGER_MS = 2000     # how long closing may wait for the shutdown reply to leave
HEARTBEAT_HWM = 8             # heartbeats queued while the coordinator is not there; more are dropped
COPY_REPLY_MAX_BYTES = 256 * 1024  # reply tensor frames up to this size are copied, larger ones sent zero-copy

Reply = tuple[dict[str, Any], dict[str, torch.Tensor]]


class WorkerServer:
    """One worker process's request loop.

    role_factory(name) -> Role, recipe_parser(dict) -> Recipe and context_factory(worker=, recipe=, run_dir=,
    device=) -> WorkerContext default to `roles.make_role`, `config.parse_recipe` and `roles.base.WorkerContext`
    (imported when `hello` arrives); tests pass stand-ins. With `parent_pid`, the server exits (`serve()`
    returns "orphaned") once the parent process has been gone for `orphan_grace_s` without a request.
    """

    def __init__(
        self,
        name: str,
        connect: str,
        heartbeat_endpoint: str,
        heartbeat_interval: float = 0.5,
        *,
        role_factory: Callable[[str], Any] | None = None,
        recipe_parser: Callable[[dict[str, Any]], Any] | None = None,
        context_factory: Callable[..., Any] | None = None,
        parent_pid: int | None = None,
        orphan_grace_s: float = ORPHAN_GRACE_S,
        verbose: bool | None = None,
    ):
        if not name:
            raise ValueError("worker name must not be empty")
        if not (heartbeat_interval > 0 and math.isfinite(heartbeat_interval)):
            raise ValueError(f"heartbeat_interval must be a positive number of seconds, got {heartbeat_interval!r}")
        self.name = name
        self.connect = connect
        self.heartbeat_endpoint = heartbeat_endpoint
        self.heartbeat_interval = float(heartbeat_interval)
        self._role_factory = role_factory
        self._recipe_parser = recipe_parser
        self._context_factory = context_factory
        self._parent_pid = parent_pid
        self._orphan_grace_s = orphan_grace_s
        self.verbose = os.environ.get("DMD2_WORKER_VERBOSE") == "1" if verbose is None else verbose

        self._ids = MessageIds(name)
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._busy = False
        self._shutdown = False
        self._orphan_since: float | None = None

        self._context: Any = None            # the WorkerContext, once `hello` succeeded
        self._role_contexts: dict[str, Any] = {}  # each role's view of it (its device, precision, shard)
        self._shard = shard_from_env()       # rank and world size of a replicated role (placement.py)
        self._group_joined = False
        self._store = TensorStore()
        self._last_step: int | None = None

    # ------------------------------------------------------------------------------------------- running

    def serve(self) -> str:
        """Run until `shutdown` ("shutdown"), `stop()` ("stopped") or the parent is gone ("orphaned").
        Raises only when it cannot run at all (e.g. an endpoint cannot be connected)."""
        zctx = zmq.Context()
        sock = zctx.socket(zmq.DEALER)
        hb_thread: threading.Thread | None = None
        linger = 0
        try:
            apply_curve_client(sock)
            sock.connect(self.connect)
            hb_thread = self._start_heartbeat(zctx)
            reason = self._loop(sock)
            if reason == "shutdown":
                linger = SHUTDOWN_LINGER_MS  # the reply is queued: let it leave before the socket goes
            return reason
        finally:
            self._stop.set()
            if hb_thread is not None:
                hb_thread.join()
            sock.close(linger=linger)
            zctx.term()

    def stop(self) -> None:
        """Ask `serve()` to return (from any thread); it finishes the request in progress first."""
        self._stop.set()

    def _loop(self, sock: zmq.Socket) -> str:
        while not self._stop.is_set():
            if not sock.poll(POLL_MS, zmq.POLLIN):
                if self._orphaned():
                    self._log(f"parent process {self._parent_pid} is gone and no request came for "
                              f"{self._orphan_grace_s:g} s: exiting")
                    return "orphaned"
                continue
            self._orphan_since = None
            frames = sock.recv_multipart(copy=False)
            try:
                self._handle(sock, frames)
            except Exception as exc:  # a bug here must not take the worker down
                self._log(f"internal error while handling a message: {type(exc).__name__}: {exc}")
            if self._shutdown:
                return "shutdown"
        return "stopped"

    def _orphaned(self) -> bool:
        if self._parent_pid is None or os.getppid() == self._parent_pid:
            self._orphan_since = None
            return False
        now = time.monotonic()
        if self._orphan_since is None:
            self._orphan_since = now
        return now - self._orphan_since >= self._orphan_grace_s

    # ----------------------------------------------------------------------------------------- heartbeat

    def _start_heartbeat(self, zctx: zmq.Context) -> threading.Thread:
        ready = threading.Event()
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._heartbeat_loop, args=(zctx, ready, failure),
                                  name=f"dmd2-heartbeat-{self.name}", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        return thread

    def _heartbeat_loop(self, zctx: zmq.Context, ready: threading.Event, failure: list[BaseException]) -> None:
        # The PUSH socket is created, used and closed in this thread only.
        push = None
        try:
            push = zctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, HEARTBEAT_HWM)
            apply_curve_client(push)
            push.connect(self.heartbeat_endpoint)
        except BaseException as exc:
            if push is not None:
                push.close(linger=0)  # an open socket would make the context's term() wait forever
            failure.append(exc)
            ready.set()
            return
        ready.set()
        try:
            while True:
                msg = heartbeat(self.name, self._pid, self._busy, time.time(), msg_id=self._ids())
                try:
                    push.send_multipart(encode(msg), flags=zmq.NOBLOCK)
                except zmq.Again:
                    pass  # nobody is taking heartbeats right now; this one is stale by the next anyway
                if self._stop.wait(self.heartbeat_interval):
                    return
        finally:
            push.close(linger=0)

    # ------------------------------------------------------------------------------------------ requests

    def _handle(self, sock: zmq.Socket, frames: list[Any]) -> None:
        started = time.monotonic()
        self._busy = True
        try:
            try:
                request = decode(frames, borrow=True)  # the frames are ours: large tensors are not copied
            except ProtocolError as exc:
                request_id = exc.request_id
                if request_id is None:
                    self._log(f"dropped a malformed message: {exc}")
                    return
                reply = make_error_reply_to(request_id, exc.request_type, exc, sender=self.name, msg_id=self._ids())
                self._send(sock, encode(reply))
                self._log_request(f"malformed message {request_id!r}", reply, started)
                return
            if not request.is_request:
                self._log(f"dropped a {request.type} message {request.id!r}: a worker takes only requests")
                return
            frames_out, reply_status = self._answer(request)
            self._send(sock, frames_out)
            self._log_request(_describe(request), reply_status, started)
        finally:
            self._busy = False

    def _answer(self, request: Message) -> tuple[list[Any], str]:
        """The encoded reply to a well-formed request: ok, or error with whatever went wrong."""
        try:
            body, tensors = self._dispatch(request)
            return encode(make_reply(request, body, tensors, sender=self.name, msg_id=self._ids())), "ok"
        except Exception as exc:
            reply = make_error_reply(request, exc, sender=self.name, msg_id=self._ids())
            return encode(reply), f"error {reply.body['ename']}: {reply.body['evalue']}"

    def _send(self, sock: zmq.Socket, frames: list[Any]) -> None:
        """Send the reply. Small tensor frames are copied into their messages; large ones are sent without a
        copy, and then we wait until ZeroMQ no longer needs their memory, so the next request may modify the
        tensors (they may live on in the store)."""
        header, *buffers = frames
        tracked: list[zmq.Frame] = []
        out: list[Any] = [header]
        for buf in buffers:
            if memoryview(buf).nbytes <= COPY_REPLY_MAX_BYTES:
                out.append(zmq.Frame(buf, copy=True))  # a memcpy is cheaper than a tracker's round trip
            else:
                tracked.append(zmq.Frame(buf, copy=False, track=True))
                out.append(tracked[-1])
        if not tracked:
            sock.send_multipart(out, copy=True)
            return
        tracker = zmq.MessageTracker(*tracked)
        sock.send_multipart(out, copy=False)
        # pyzmq sends a reference to each Frame's message: ZeroMQ lets go of the memory (and the tracker
        # completes) only once these Frame objects are gone too.
        del tracked, out
        while True:
            try:
                tracker.wait(POLL_MS / 1000)
                return
            except zmq.NotDone:
                # The coordinator is not reading. Stop waiting only when the loop will exit anyway.
                if self._stop.is_set() or self._orphaned():
                    return

    def _dispatch(self, request: Message) -> Reply:
        if request.type != "hello" and self._context is None:
            raise ProtocolError(f"received '{request.type}' before 'hello'")
        handler = {
            "hello": self._hello,
            "setup": self._setup,
            "op": self._op,
            "save": self._save,
            "restore": self._restore,
            "shutdown": self._shutdown_request,
        }[request.type]
        return handler(request)

    def _hello(self, request: Message) -> Reply:
        if self._context is not None:
            raise ProtocolError("received a second 'hello'")
        body = _fields(request, worker=_NAME, roles=_NAMES_NONEMPTY, run_dir=_NAME, recipe=_OBJECT,
                       torch_threads=_POSITIVE_INT)
        if body["worker"] != self.name:
            raise ProtocolError(f"'hello' is addressed to worker {body['worker']!r}, this is worker {self.name!r}")
        roles: list[str] = body["roles"]
        if "discriminator" in roles and "fake_score" not in roles:
            raise ValueError("the discriminator must share a worker with fake_score (docs/protocol.md §1)")

        role_factory, recipe_parser, context_factory = self._role_factory, self._recipe_parser, self._context_factory
        if role_factory is None:
            from .roles import make_role as role_factory
        if recipe_parser is None:
            from .config import parse_recipe as recipe_parser
        if context_factory is None:
            from .roles.base import WorkerContext as context_factory
        store = TensorStore()

        torch.set_num_threads(body["torch_threads"])
        recipe = recipe_parser(body["recipe"])
        if getattr(recipe, "tf32", False):
            set_tf32(True)
        # Devices are not checked here: the hello reply says what this process has, the coordinator checks the
        # recipe's placement against it (one clear message), and `setup` checks again as a backstop.
        context = context_factory(worker=self.name, recipe=recipe, run_dir=Path(body["run_dir"]),
                                  device=torch.device("cpu"))
        for role_name in roles:
            context.roles[role_name] = role_factory(role_name)
        # Only now is the worker said hello to: a failed hello leaves it waiting for another.
        self._context, self._store, self._last_step = context, store, None
        self._role_contexts = {}
        return {
            "pid": self._pid,
            "hostname": socket.gethostname(),
            "python": platform.python_version(),
            "torch": str(torch.__version__),
            "cuda": bool(torch.cuda.is_available()),
            "devices": available_devices(),
            "cuda_names": cuda_names(),
            "rank": 0 if self._shard is None else self._shard.rank,
            "world": 1 if self._shard is None else self._shard.world,
            "roles": list(roles),
        }, {}

    def _role_context(self, role_name: str) -> Any:
        """The context `role_name`'s calls get: the worker's, with the role's device (this rank's), precision,
        gradient checkpointing and shard (recipe.roles, placement.py). Stand-in recipes without `roles` (tests)
        share the worker's context."""
        ctx = self._role_contexts.get(role_name)
        if ctx is not None:
            return ctx
        ctx = self._context
        roles_cfg = getattr(ctx.recipe, "roles", None)
        if roles_cfg is not None and dataclasses.is_dataclass(ctx):
            placed = roles_cfg.of(role_name)
            rank = 0 if self._shard is None else self._shard.rank
            key = "fake_score" if role_name == "discriminator" else role_name
            device = device_for(placed.device[rank], f"roles.{key}.device")
            if self._shard is not None and not self._group_joined and role_name != "teacher":
                # the frozen teacher's replicas only split the batch: no gradients, no group
                init_process_group(self._shard, placed.backend, device)
                self._group_joined = True
            ctx = dataclasses.replace(ctx, device=device, precision=placed.precision,
                                      gradient_checkpointing=placed.gradient_checkpointing, shard=self._shard,
                                      strategy=placed.strategy)
        self._role_contexts[role_name] = ctx
        return ctx

    def _setup(self, request: Message) -> Reply:
        body = _fields(request, role=_NAME, teacher_dir=_OPTIONAL_STR)
        role = self._role(body["role"])
        result = role.setup(dict(body), self._role_context(body["role"]))
        if not isinstance(result, dict):
            raise TypeError(f"{body['role']}.setup returned {type(result).__name__}, not a dict")
        return result, {}

    def _op(self, request: Message) -> Reply:
        body = _fields(request, role=_NAME, op=_NAME, step=_NON_NEGATIVE_INT, args=_OBJECT, **{"return": _NAMES})
        role_name, op, step = body["role"], body["op"], body["step"]
        role = self._role(role_name)
        if step != self._last_step:
            self._store.clear()
            self._last_step = step
        self._store.update(request.tensors)
        self._store.step = step
        started = time.time()
        ctx = self._role_context(role_name)
        metrics = _metrics(role.run_op(op, body["args"], self._store, ctx), f"{role_name}.{op}")
        ended = time.time()
        device = ctx.device
        if isinstance(device, torch.device) and device.type == "cuda":
            # per worker, so that merged step metrics keep every process's figure (scripts/gpu-check.sh reads them)
            metrics[f"cuda_peak_mb_{self.name}"] = torch.cuda.max_memory_allocated(device) / 2**20
        missing = [n for n in body["return"] if n not in self._store]
        if missing:
            raise LookupError(
                f"{role_name}.{op} did not produce {', '.join(map(repr, missing))} named in 'return' "
                f"(the tensor store has: {', '.join(map(repr, sorted(self._store))) or 'nothing'})")
        out: dict[str, torch.Tensor] = {}
        for n in body["return"]:
            value = self._store[n]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{role_name}.{op}: store entry {n!r} is a {type(value).__name__}, not a tensor")
            out[n] = value
        return {"metrics": metrics, "time": [started, ended]}, out

    def _save(self, request: Message) -> Reply:
        body = _fields(request, dir=_NAME, step=_NON_NEGATIVE_INT)
        directory = _existing_dir(body["dir"], "save")
        files: list[dict[str, Any]] = []
        seen: set[str] = set()
        for role_name, role in self._context.roles.items():
            for written in role.save(directory) or []:
                entry = _file_entry(directory, Path(written), role_name)
                if entry["name"] in seen:
                    raise ValueError(f"save: two roles wrote {entry['name']!r}")
                seen.add(entry["name"])
                files.append(entry)
        return {"files": files}, {}

    def _restore(self, request: Message) -> Reply:
        body = _fields(request, dir=_NAME)
        directory = _existing_dir(body["dir"], "restore")
        for role in self._context.roles.values():
            role.restore(directory)
        # Tensors of the step before the restore must not leak into the steps after it.
        self._store.clear()
        self._last_step = None
        return {}, {}

    def _shutdown_request(self, request: Message) -> Reply:
        _fields(request)
        self._shutdown = True
        return {}, {}

    def _role(self, name: str) -> Any:
        roles = self._context.roles
        if name not in roles:
            raise ValueError(f"worker {self.name!r} does not host role {name!r} (it hosts: {', '.join(roles)})")
        return roles[name]

    # ------------------------------------------------------------------------------------------- logging

    def _log(self, line: str) -> None:
        print(f"dmd2-worker[{self.name}]: {line}", file=sys.stderr, flush=True)

    def _log_request(self, what: str, outcome: Any, started: float) -> None:
        if self.verbose:
            if isinstance(outcome, Message):
                outcome = f"{outcome.status} {outcome.body.get('ename', '')}".rstrip()
            self._log(f"{what} -> {outcome} ({(time.monotonic() - started) * 1000:.1f} ms)")


# --------------------------------------------------------------------------------------------- helpers


def _describe(request: Message) -> str:
    b = request.body
    if request.type == "op":
        return f"op {b.get('role')}.{b.get('op')} step={b.get('step')} ({request.id})"
    if request.type == "setup":
        return f"setup {b.get('role')} ({request.id})"
    return f"{request.type} ({request.id})"


# Body field checks: (what it must be, predicate).
_Check = tuple[str, Callable[[Any], bool]]
_NAME: _Check = ("a non-empty string", lambda v: isinstance(v, str) and v != "")
_OPTIONAL_STR: _Check = ("a string or null", lambda v: v is None or isinstance(v, str))
_OBJECT: _Check = ("an object", lambda v: isinstance(v, dict))
_NON_NEGATIVE_INT: _Check = ("an integer >= 0", lambda v: type(v) is int and v >= 0)
_POSITIVE_INT: _Check = ("an integer >= 1", lambda v: type(v) is int and v >= 1)
_NAMES: _Check = ("a list of distinct non-empty strings",
                  lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v))
_NAMES_NONEMPTY: _Check = ("a non-empty list of distinct non-empty strings", lambda v: _NAMES[1](v) and len(v) > 0)


def _fields(request: Message, **spec: _Check) -> dict[str, Any]:
    """Check that the request's body has exactly the fields of `spec`, each of the right kind."""
    body = request.body
    missing = [k for k in spec if k not in body]
    extra = sorted(k for k in body if k not in spec)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"lacks {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"has unknown field(s) {', '.join(map(repr, extra))}")
        raise ProtocolError(f"'{request.type}' body {' and '.join(problems)}")
    for key, (what, ok) in spec.items():
        if not ok(body[key]):
            raise ProtocolError(f"'{request.type}' body: {key!r} must be {what}, got {body[key]!r}")
    return body


CURVE_ENV = ("DMD2_CURVE_SERVER_KEY", "DMD2_CURVE_PUBLIC_KEY", "DMD2_CURVE_SECRET_KEY")


def apply_curve_client(sock: zmq.Socket, env: dict[str, str] | None = None) -> bool:
    """With the run's CURVE keys in the environment (the coordinator sets them for tcp runs, docs/protocol.md §1),
    make `sock` a CURVE client of the coordinator; before connect. Returns whether it did. Some but not all keys
    set is an error."""
    env = os.environ if env is None else env
    values = [env.get(name) for name in CURVE_ENV]
    if not any(values):
        return False
    if not all(values):
        missing = [n for n, v in zip(CURVE_ENV, values) if not v]
        raise RuntimeError(f"incomplete CURVE keys in the environment: {', '.join(missing)} missing")
    server, public, secret = (v.encode("ascii") for v in values)  # type: ignore[union-attr]
    sock.curve_serverkey = server
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    return True


def _metrics(metrics: Any, where: str) -> dict[str, int | float | None]:
    """The op's metrics as JSON numbers (NaN and infinities, which JSON lacks, become null)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, dict):
        raise TypeError(f"{where} returned {type(metrics).__name__} as metrics, not a dict")
    out: dict[str, int | float | None] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: metric names must be strings, got {key!r}")
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise TypeError(f"{where}: metric {key!r} is a tensor of shape {list(value.shape)}, not a number")
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # numpy scalars and the like
            except (TypeError, ValueError):
                raise TypeError(f"{where}: metric {key!r} is {value!r}, not a number") from None
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


def _existing_dir(path: str, what: str) -> Path:
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{what}: {path} is not an existing directory")
    return directory


def _file_entry(directory: Path, path: Path, role: str) -> dict[str, Any]:
    if path.resolve().parent != directory.resolve():
        raise ValueError(f"save: role {role} reported {str(path)!r}, which is not a file directly in {directory}")
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"name": path.name, "bytes": size, "sha256": digest.hexdigest()}
