"""The worker's request loop (dmd2_worker/server.py, __main__.py), driven as the coordinator drives it: a
DEALER and a PULL bound on ipc endpoints, the server connected to them. The roles are fakes defined here."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal

import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import zmq

from dmd2_worker.protocol import Message, decode, encode
from dmd2_worker.server import WorkerServer, apply_curve_client

PACKAGE_DIR = Path(__file__).resolve().parents[1]
TIMEOUT_MS = 10_000


# ------------------------------------------------------------------------------------------------ fakes


class FakeRecipeError(ValueError):
    pass


def fake_parse_recipe(recipe: dict[str, Any]) -> SimpleNamespace:
    if "bogus" in recipe:
        raise FakeRecipeError("recipe.bogus: unknown key")
    return SimpleNamespace(**recipe)


@dataclass
class FakeContext:
    worker: str
    recipe: Any
    run_dir: Path
    device: torch.device
    roles: dict[str, Any] = field(default_factory=dict)


class FakeRole:
    """Ops: `double` (store[out] = 2 * store[in]), `add_` (in place), `sleep`, `fail`, `count`."""

    def __init__(self, name: str):
        self.name = name
        self.setup_bodies: list[dict] = []
        self.restored: bytes | None = None

    def setup(self, body, ctx):
        assert isinstance(ctx, FakeContext) or hasattr(ctx, "roles")
        self.setup_bodies.append(body)
        return {"params": 3}

    def run_op(self, op, args, store, ctx):
        if op == "double":
            if args["in"] not in store:
                raise LookupError(f"input {args['in']!r} is not in the store")
            store[args["out"]] = store[args["in"]] * 2
            return {"n_stored": len(store), "bad": float("nan"), "t": torch.tensor(0.5)}
        if op == "add_":
            store[args["name"]].add_(args["value"])
            return {}
        if op == "sleep":
            time.sleep(args["seconds"])
            return {"slept": args["seconds"]}
        if op == "fail":
            raise ValueError(f"boom in {self.name}")
        if op == "count":
            return {"n_stored": len(store)}
        raise ValueError(f"unknown op {op!r}")

    def save(self, directory: Path):
        path = directory / f"{self.name}.safetensors"
        path.write_bytes(f"weights of {self.name}".encode())
        return [path]

    def restore(self, directory: Path):
        self.restored = (directory / f"{self.name}.safetensors").read_bytes()


FAKES = dict(role_factory=FakeRole, recipe_parser=fake_parse_recipe, context_factory=FakeContext)
ROLES = ["generator", "fake_score", "discriminator"]


# ------------------------------------------------------------------------------------------ coordinator


@pytest.fixture
def ipc_dir():
    path = tempfile.mkdtemp(prefix="dmd2-test-", dir="/tmp")  # short: ipc paths are limited to ~100 bytes
    os.chmod(path, 0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Coordinator:
    """The coordinator's two sockets, bound like src/workers/ binds them."""

    def __init__(self, ipc_dir: str, worker: str = "w"):
        self.worker = worker
        self.req_endpoint = f"ipc://{ipc_dir}/{worker}.req"
        self.hb_endpoint = f"ipc://{ipc_dir}/hb"
        self.ctx = zmq.Context()
        self.req = self.ctx.socket(zmq.DEALER)
        self.req.bind(self.req_endpoint)
        self.hb = self.ctx.socket(zmq.PULL)
        self.hb.bind(self.hb_endpoint)
        self._n = 0

    def next_id(self) -> str:
        self._n += 1
        return f"c-{self._n}"

    def send(self, type_: str, body=None, tensors=None) -> str:
        msg_id = self.next_id()
        self.req.send_multipart(encode(Message(id=msg_id, type=type_, body=body or {}, tensors=tensors or {})))
        return msg_id

    def recv(self, timeout_ms: int = TIMEOUT_MS) -> Message:
        assert self.req.poll(timeout_ms), "no reply from the worker"
        return decode(self.req.recv_multipart())

    def request(self, type_: str, body=None, tensors=None) -> Message:
        msg_id = self.send(type_, body, tensors)
        reply = self.recv()
        assert reply.reply_to == msg_id and reply.type == f"{type_}_reply"
        assert reply.sender == self.worker
        return reply

    def ok(self, type_: str, body=None, tensors=None) -> Message:
        reply = self.request(type_, body, tensors)
        assert reply.status == "ok", reply.body
        return reply

    def error(self, type_: str, body=None, tensors=None) -> dict:
        reply = self.request(type_, body, tensors)
        assert reply.status == "error", reply.body
        return reply.body

    def heartbeats(self, timeout_ms: int = 0) -> list[Message]:
        out = []
        while self.hb.poll(timeout_ms if not out else 0):
            out.append(decode(self.hb.recv_multipart()))
        return out

    def hello(self, roles=ROLES, **overrides) -> Message:
        body = {"worker": self.worker, "roles": roles, "run_dir": "/tmp/run", "recipe": {"version": 1},
                "torch_threads": 1}
        body.update(overrides)
        return self.request("hello", body)

    def close(self):
        self.req.close(linger=0)
        self.hb.close(linger=0)
        self.ctx.term()


class ServerThread:
    def __init__(self, coordinator: Coordinator, **options):
        kwargs = {**FAKES, "heartbeat_interval": 0.1, "verbose": False, **options}
        self.server = WorkerServer(coordinator.worker, coordinator.req_endpoint, coordinator.hb_endpoint, **kwargs)
        self.result: list[Any] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.server.serve()), daemon=True)
        self.thread.start()

    def join(self, timeout=10.0) -> str:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"
        return self.result[0]


@pytest.fixture
def coordinator(ipc_dir):
    c = Coordinator(ipc_dir)
    yield c
    c.close()


@pytest.fixture
def worker(coordinator):
    s = ServerThread(coordinator)
    yield s
    s.server.stop()
    s.join()


# -------------------------------------------------------------------------------------------------- tests


def test_a_whole_session(coordinator, worker, tmp_path):
    c = coordinator
    hello = c.ok("hello", {"worker": "w", "roles": ROLES, "run_dir": str(tmp_path), "recipe": {"version": 1},
                           "torch_threads": 1})
    assert hello.body["pid"] == os.getpid() and hello.body["roles"] == ROLES
    assert hello.body["torch"] == torch.__version__ and hello.body["python"].startswith(f"{sys.version_info[0]}.")
    assert hello.body["devices"] == ["cpu"] and isinstance(hello.body["cuda"], bool) and hello.body["hostname"]
    context = worker.server._context
    assert list(context.roles) == ROLES and context.run_dir == tmp_path and context.recipe.version == 1

    for role in ROLES:
        assert c.ok("setup", {"role": role, "teacher_dir": None}).body == {"params": 3}
    assert context.roles["fake_score"].setup_bodies == [{"role": "fake_score", "teacher_dir": None}]

    # Tensor store: inputs go in, `return` comes back, a consumer at the same step finds the producer's output.
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    op = {"role": "generator", "op": "double", "step": 0, "args": {"in": "x", "out": "y"}, "return": ["y"]}
    reply = c.ok("op", op, {"x": x})
    assert torch.equal(reply.tensors["y"], 2 * x) and list(reply.tensors) == ["y"]
    start, end = reply.body.pop("time")
    assert start <= end <= time.time()  # when the op ran, on the worker's clock
    assert reply.body == {"metrics": {"n_stored": 2, "bad": None, "t": 0.5}}
    reply = c.ok("op", {**op, "role": "fake_score", "args": {"in": "y", "out": "z"}, "return": ["z", "x"]})
    assert torch.equal(reply.tensors["z"], 4 * x) and torch.equal(reply.tensors["x"], x)
    # A new step starts with an empty store.
    err = c.error("op", {**op, "step": 1, "return": []})
    assert err["ename"] == "LookupError" and "'x' is not in the store" in err["evalue"]
    assert c.ok("op", {**op, "op": "count", "step": 1, "return": []}).body["metrics"] == {"n_stored": 0}

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    files = c.ok("save", {"dir": str(ckpt), "step": 1}).body["files"]
    assert [f["name"] for f in files] == [f"{r}.safetensors" for r in ROLES]
    for f in files:
        data = (ckpt / f["name"]).read_bytes()
        assert f["bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert c.ok("restore", {"dir": str(ckpt)}).body == {}
    assert context.roles["discriminator"].restored == b"weights of discriminator"

    assert c.ok("shutdown").body == {}
    assert worker.join() == "shutdown"


def test_requests_before_a_good_hello_are_errors(coordinator, worker):
    c = coordinator
    for type_, body in [("setup", {"role": "generator", "teacher_dir": None}), ("shutdown", {})]:
        err = c.error(type_, body)
        assert err["ename"] == "ProtocolError" and f"'{type_}' before 'hello'" in err["evalue"]
    assert "addressed to worker 'x'" in c.hello(worker="x").body["evalue"]
    assert c.hello(recipe={"bogus": 1}).body["ename"] == "FakeRecipeError"
    assert c.hello(roles=["discriminator"]).body["ename"] == "ValueError"
    assert "lacks 'torch_threads'" in c.request("hello", {"worker": "w", "roles": ["generator"], "run_dir": "/r",
                                                         "recipe": {}}).body["evalue"]
    assert "'torch_threads' must be an integer >= 1" in c.hello(torch_threads=0).body["evalue"]
    assert c.error("op", {"role": "generator", "op": "count", "step": 0, "args": {}, "return": []})["ename"] == \
        "ProtocolError"

    assert c.hello(roles=["generator"]).status == "ok"
    assert "second 'hello'" in c.hello().body["evalue"]
    assert c.ok("setup", {"role": "generator", "teacher_dir": "/t"}).body == {"params": 3}


def test_exceptions_become_error_replies(coordinator, worker):
    c = coordinator
    c.hello()
    op = {"role": "generator", "op": "fail", "step": 0, "args": {}, "return": []}
    err = c.error("op", op)
    assert (err["ename"], err["evalue"]) == ("ValueError", "boom in generator")
    assert err["traceback"].startswith("Traceback (most recent call last):")
    assert "run_op" in err["traceback"] and err["traceback"].rstrip().endswith("ValueError: boom in generator")

    err = c.error("op", {**op, "op": "count", "return": ["nothing"]})
    assert err["ename"] == "LookupError" and "'nothing' named in 'return'" in err["evalue"]
    assert "does not host role 'teacher'" in c.error("op", {**op, "role": "teacher"})["evalue"]
    assert "lacks 'step'" in c.error("op", {k: v for k, v in op.items() if k != "step"})["evalue"]
    assert "unknown field(s) 'extra'" in c.error("op", {**op, "extra": 1})["evalue"]
    assert "'return' must be" in c.error("op", {**op, "return": ["a", "a"]})["evalue"]
    assert c.error("save", {"dir": "/nonexistent/dir", "step": 0})["ename"] == "FileNotFoundError"
    assert c.ok("op", {**op, "op": "count"}).body["metrics"] == {"n_stored": 0}  # still serving


def test_malformed_messages_do_not_stop_the_worker(coordinator, worker, capsys):
    c = coordinator
    c.hello()
    op = {"role": "generator", "op": "count", "step": 0, "args": {}, "return": []}
    good = encode(Message(id="c-100", type="op", body=op, tensors={"a": torch.ones(2)}))

    # No readable id: dropped, one line on stderr.
    c.req.send_multipart([b"{not json", b"\x00"])
    c.req.send_multipart([b"\x00"] * 3)
    # Readable id: answered with ProtocolError.
    c.req.send_multipart([bytes(good[0])])  # the tensor frame is missing
    reply = c.recv()
    assert (reply.reply_to, reply.type, reply.status) == ("c-100", "op_reply", "error")
    assert reply.body["ename"] == "ProtocolError" and "frame 1 is not in the message" in reply.body["evalue"]
    c.req.send_multipart([bytes(good[0]), bytes(good[1])[:-1]])  # truncated
    assert "needs 8 bytes" in c.recv().body["evalue"]
    header = json.loads(bytes(good[0]))
    c.req.send_multipart([json.dumps({**header, "version": 2, "id": "c-101"}).encode(), bytes(good[1])])
    reply = c.recv()
    assert (reply.reply_to, reply.type, reply.body["ename"]) == ("c-101", "op_reply", "ProtocolVersionError")
    c.req.send_multipart([json.dumps({**header, "type": "frobnicate", "id": "c-102"}).encode(), bytes(good[1])])
    reply = c.recv()
    assert (reply.reply_to, reply.type, reply.body["ename"]) == ("c-102", "error_reply", "ProtocolError")
    # Not requests: never answered.
    c.req.send_multipart(encode(Message(id="x-1", type="heartbeat", sender="x",
                                        body={"worker": "x", "pid": 1, "busy": False, "time": 0.0})))
    c.req.send_multipart([json.dumps({**header, "version": 2, "id": "x-2", "type": "op_reply", "reply_to": "c-1",
                                      "status": "ok"}).encode(), bytes(good[1])])

    assert c.ok("op", op).body["metrics"] == {"n_stored": 0}  # the next reply is this one: nothing else was answered
    err = capsys.readouterr().err
    assert err.count("dropped a malformed message") == 3 and err.count("dropped a heartbeat message") == 1
    assert "not valid JSON" in err and "version 2 is not supported" in err
    assert len(err.strip().splitlines()) == 4


def test_heartbeats_keep_coming_while_an_op_runs(coordinator, worker):
    c = coordinator
    c.hello()
    idle = c.heartbeats(timeout_ms=TIMEOUT_MS)
    assert idle and all(not h.tensors for h in idle)
    h = idle[-1]
    assert (h.type, h.sender, h.reply_to, h.status) == ("heartbeat", "w", None, None)
    assert h.body["worker"] == "w" and h.body["pid"] == os.getpid() and abs(h.body["time"] - time.time()) < 60

    started = time.monotonic()
    c.send("op", {"role": "fake_score", "op": "sleep", "step": 0, "args": {"seconds": 1.5}, "return": []})
    during = []
    while not c.req.poll(0):
        during += c.heartbeats(timeout_ms=100)
        assert time.monotonic() - started < 10
    assert c.recv().body["metrics"] == {"slept": 1.5}
    busy = [m for m in during if m.body["busy"]]
    assert len(busy) >= 5, [m.body for m in during]
    ids = [m.id for m in idle + during]
    assert len(set(ids)) == len(ids) and all(i.startswith("w-") for i in ids)
    time.sleep(0.25)
    assert not c.heartbeats(timeout_ms=TIMEOUT_MS)[-1].body["busy"]


def test_reply_tensors_are_not_modified_in_flight(coordinator, worker):
    """The reply's frames share memory with the store; the next request must wait until they are sent."""
    c = coordinator
    c.hello()
    big = torch.zeros(1 << 20)  # 4 MiB: more than the socket buffers, so sending takes the coordinator's reads
    op = {"role": "generator", "op": "double", "step": 0, "args": {"in": "x", "out": "y"}, "return": ["y"]}
    c.send("op", op, {"x": big})
    c.send("op", {**op, "op": "add_", "args": {"name": "y", "value": 1.0}, "return": ["y"]})
    time.sleep(0.3)
    first, second = c.recv(), c.recv()
    assert first.status == second.status == "ok"
    assert torch.count_nonzero(first.tensors["y"]) == 0
    assert torch.all(second.tensors["y"] == 1.0)


def test_small_reply_tensors_are_copied_before_the_next_request(coordinator, worker):
    """Small reply frames are copied into their messages (no tracker wait): changing the tensor right after is
    safe too."""
    c = coordinator
    c.hello()
    op = {"role": "generator", "op": "double", "step": 0, "args": {"in": "x", "out": "y"}, "return": ["y"]}
    c.send("op", op, {"x": torch.zeros(16)})
    c.send("op", {**op, "op": "add_", "args": {"name": "y", "value": 1.0}, "return": ["y"]})
    first, second = c.recv(), c.recv()
    assert first.status == second.status == "ok"
    assert torch.count_nonzero(first.tensors["y"]) == 0
    assert torch.all(second.tensors["y"] == 1.0)


def test_large_request_tensors_can_be_changed_in_place(coordinator, worker):
    """Large request frames become the store's tensors without a copy; ops may still modify them in place, and
    the modified tensor can be sent back."""
    c = coordinator
    c.hello()
    x = torch.arange(1 << 18, dtype=torch.float32)  # 1 MiB
    add = {"role": "generator", "op": "add_", "step": 0, "args": {"name": "x", "value": 1.0}, "return": ["x"]}
    reply = c.ok("op", add, {"x": x})
    assert torch.equal(reply.tensors["x"], x + 1)
    reply = c.ok("op", add)  # the same (borrowed) tensor, still in the store
    assert torch.equal(reply.tensors["x"], x + 2)


def test_verbose_logs_one_line_per_request(coordinator, monkeypatch, capsys):
    monkeypatch.setenv("DMD2_WORKER_VERBOSE", "1")
    s = ServerThread(coordinator, verbose=None)
    coordinator.hello()
    coordinator.ok("op", {"role": "generator", "op": "count", "step": 3, "args": {}, "return": []})
    coordinator.error("op", {"role": "generator", "op": "fail", "step": 3, "args": {}, "return": []})
    coordinator.ok("shutdown")
    assert s.join() == "shutdown"
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("dmd2-worker[w]: hello (c-1) -> ok")
    assert "op generator.count step=3 (c-2) -> ok" in lines[1]
    assert "op generator.fail step=3 (c-3) -> error ValueError: boom in generator" in lines[2]


def test_real_worker_context_when_available(coordinator):
    base = pytest.importorskip("dmd2_worker.roles.base", reason="config.py / roles not written yet")
    s = ServerThread(coordinator, context_factory=None)
    coordinator.hello(roles=["generator"])
    assert isinstance(s.server._context, base.WorkerContext) and isinstance(s.server._store, base.TensorStore)
    coordinator.ok("op", {"role": "generator", "op": "count", "step": 0, "args": {}, "return": []})
    coordinator.ok("shutdown")
    assert s.join() == "shutdown"


def test_main_exits_0_after_shutdown(coordinator):
    from dmd2_worker.__main__ import main

    result = []
    argv = ["--name", "w", "--connect", coordinator.req_endpoint, "--heartbeat", coordinator.hb_endpoint,
            "--heartbeat-interval", "0.2"]
    t = threading.Thread(target=lambda: result.append(main(argv, parent_pid=None, **FAKES)), daemon=True)
    t.start()
    assert coordinator.hello().status == "ok"
    coordinator.ok("shutdown")
    t.join(10)
    assert result == [0]


@pytest.mark.parametrize("which", ["connect", "heartbeat"])
def test_an_endpoint_that_cannot_be_connected_is_raised(which, ipc_dir):
    endpoints = {"connect": f"ipc://{ipc_dir}/w.req", "heartbeat": f"ipc://{ipc_dir}/hb"}
    endpoints[which] = "nope://x"
    server = WorkerServer("w", endpoints["connect"], endpoints["heartbeat"], **FAKES)
    raised: list[BaseException] = []

    def run():
        try:
            server.serve()
        except BaseException as exc:  # noqa: BLE001
            raised.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "serve() hung instead of raising"
    assert len(raised) == 1 and isinstance(raised[0], zmq.ZMQError)


# ------------------------------------------------------------------------------------------- subprocesses


def worker_cmd(c: Coordinator) -> list[str]:
    return [sys.executable, "-m", "dmd2_worker", "--name", c.worker, "--connect", c.req_endpoint,
            "--heartbeat", c.hb_endpoint, "--heartbeat-interval", "0.2"]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR), env.get("PYTHONPATH")]))
    env.pop("DMD2_WORKER_VERBOSE", None)
    return env


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "dmd2_worker", "--help"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert out.returncode == 0 and "--connect" in out.stdout and "--heartbeat-interval" in out.stdout


def test_bad_arguments_exit_2():
    out = subprocess.run([sys.executable, "-m", "dmd2_worker", "--name", "w", "--connect", "ipc:///tmp/x",
                          "--heartbeat", "ipc:///tmp/y", "--heartbeat-interval", "0"],
                         capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert out.returncode == 2 and "positive number of seconds" in out.stderr


def test_worker_process_answers_and_dies_on_sigterm(coordinator):
    proc = subprocess.Popen(worker_cmd(coordinator), env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert coordinator.heartbeats(timeout_ms=30_000), "the worker never sent a heartbeat"
        err = coordinator.error("setup", {"role": "teacher", "teacher_dir": None})
        assert err["ename"] == "ProtocolError" and "before 'hello'" in err["evalue"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited (a zombie if nobody reaps orphans here)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_orphaned_worker_exits_by_itself(coordinator, ipc_dir):
    log = Path(ipc_dir) / "worker.err"
    # A parent shell that starts the worker, prints its pid and exits when its stdin closes.
    script = '"$@" >/dev/null 2>"$LOG" & echo $!; read _'
    parent = subprocess.Popen(["sh", "-c", script, "sh", *worker_cmd(coordinator)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**subprocess_env(), "LOG": str(log)})
    pid = int(parent.stdout.readline())
    try:
        assert coordinator.heartbeats(timeout_ms=30_000), "the worker never sent a heartbeat"
        parent.stdin.close()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while not _gone(pid):
            assert time.monotonic() < deadline, "the orphaned worker is still running"
            time.sleep(0.1)
        assert "is gone" in log.read_text()
    finally:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
        parent.stdout.close()


def _fuzz_message(rng: random.Random, good: list[bytes]) -> list[bytes]:
    """One hostile message: random frames, a valid message with bytes flipped, cut or frames dropped/added, or a
    JSON header with fields of the wrong types."""
    kind = rng.randrange(4)
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 200)) for _ in range(rng.randrange(1, 5))]
    if kind == 1:
        frames = [bytearray(f) for f in good]
        for _ in range(rng.randrange(1, 8)):
            f = frames[rng.randrange(len(frames))]
            if f:
                f[rng.randrange(len(f))] = rng.randrange(256)
        return [bytes(f) for f in frames]
    if kind == 2:
        frames = list(good)
        cut = rng.randrange(len(frames))
        frames[cut] = frames[cut][: rng.randrange(len(frames[cut]) + 1)]
        if rng.random() < 0.5:
            frames.append(rng.randbytes(rng.randrange(0, 64)))
        elif len(frames) > 1:
            frames.pop(rng.randrange(len(frames)))
        return frames
    header = json.loads(good[0])
    junk = [None, True, -1, 2**70, 1.5, "", "x" * 300, [], {}, [1, "a"], {"a": {"b": None}}]
    for _ in range(rng.randrange(1, 4)):
        key = rng.choice(list(header) + ["extra"])
        header[key] = rng.choice(junk)
    return [json.dumps(header).encode(), *good[1:]]


def test_random_frames_do_not_crash_the_worker(coordinator, worker, capsys):
    """10,000 hostile messages (issue 5): the worker answers what has a readable id with an error, drops the rest,
    and afterwards still runs a good op."""
    c = coordinator
    c.hello()
    op = {"role": "generator", "op": "count", "step": 0, "args": {}, "return": []}
    good = [bytes(f) for f in encode(Message(id="c-fuzz", type="op", body=op, tensors={"a": torch.ones(3)}))]
    rng = random.Random(0)
    answered = 0
    for i in range(10_000):
        c.req.send_multipart(_fuzz_message(rng, good))
        if i % 100 == 99:  # keep the queues short; count the replies that came back
            while c.req.poll(0):
                reply = decode(c.req.recv_multipart())
                assert reply.type.endswith("_reply"), reply  # a mutated but well-formed op may even succeed
                answered += 1
    time.sleep(0.2)
    while c.req.poll(200):
        c.req.recv_multipart()
        answered += 1
    assert worker.thread.is_alive(), "the worker stopped"
    fresh = {**op, "step": 1}  # a new step: a fresh tensor store (fuzzed ops of step 0 may have stored tensors)
    assert c.ok("op", fresh).body["metrics"] == {"n_stored": 0}
    assert answered > 100, "some fuzzed messages kept a readable id and must have been answered"
    assert "internal error" not in capsys.readouterr().err, "every malformed message is a protocol error, not a bug"


def test_curve_keys_from_the_environment():
    """tcp runs (docs/protocol.md §1): the coordinator's CURVE keys come in the environment; none: plain socket;
    some but not all: an error naming what is missing."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        server_public, _ = zmq.curve_keypair()
        public, secret = zmq.curve_keypair()
        assert apply_curve_client(sock, {}) is False
        env = {"DMD2_CURVE_SERVER_KEY": server_public.decode(), "DMD2_CURVE_PUBLIC_KEY": public.decode(),
               "DMD2_CURVE_SECRET_KEY": secret.decode()}
        assert apply_curve_client(sock, env) is True
        assert sock.getsockopt(zmq.MECHANISM) == zmq.CURVE  # (the key options are write-only)
        with pytest.raises(RuntimeError, match="DMD2_CURVE_SECRET_KEY missing"):
            apply_curve_client(sock, {k: v for k, v in env.items() if k != "DMD2_CURVE_SECRET_KEY"})
    finally:
        sock.close(linger=0)
        ctx.term()
