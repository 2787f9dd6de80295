"""Wire format (dmd2_worker/protocol.py, docs/protocol.md §2-§3): round trips and tampered messages."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from dmd2_worker.protocol import (
    DTYPES,
    PROTOCOL_VERSION,
    Message,
    MessageIds,
    ProtocolError,
    ProtocolVersionError,
    decode,
    encode,
    heartbeat,
    make_error_reply,
    make_error_reply_to,
    make_reply,
)


def wire(frames):
    """What arrives at the other end: plain bytes per frame."""
    return [bytes(f) for f in frames]


def raw_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def header_of(frames) -> dict:
    return json.loads(bytes(frames[0]))


def with_header(frames, header: dict) -> list[bytes]:
    return [json.dumps(header).encode()] + wire(frames[1:])


def op_request(tensors=None) -> Message:
    return Message(id="c-3", type="op",
                   body={"role": "generator", "op": "generate", "step": 5,
                         "args": {"seed": 7, "batch_size": 4, "grad": True, "dmd": True},
                         "return": ["x_gen", "cond"]},
                   tensors=tensors if tensors is not None else {})


def _raise(exc: BaseException) -> None:
    raise exc


def caught(exc: BaseException) -> BaseException:
    try:
        _raise(exc)
    except BaseException as e:  # noqa: BLE001 - we want it with its traceback
        return e
    raise AssertionError


REQUEST = Message(id="c-1", type="hello")
MESSAGES = {
    "hello": Message(id="c-1", type="hello",
                     body={"worker": "all", "roles": ["teacher", "generator"], "run_dir": "/tmp/run",
                           "recipe": {"version": 1, "name": "tiny", "nested": {"a": [1, 2.5, None, "x"]}},
                           "torch_threads": 2}),
    "setup": Message(id="c-2", type="setup", body={"role": "teacher", "teacher_dir": None}),
    "op": op_request({"x_t_dmd": torch.randn(2, 1, 4, 4), "t_dmd": torch.tensor([3, 999]),
                      "cond": torch.tensor([0, 1])}),
    "save": Message(id="c-4", type="save", body={"dir": "/tmp/run/ckpt/step-100", "step": 100}),
    "restore": Message(id="c-5", type="restore", body={"dir": "/tmp/run/ckpt/step-100"}),
    "shutdown": Message(id="c-6", type="shutdown"),
    "heartbeat": heartbeat("fake_score", 1234, True, 1700000000.25, msg_id="fake_score-9"),
    "hello_reply": make_reply(REQUEST, {"pid": 1, "hostname": "h", "python": "3.11.7", "torch": "2.13.0",
                                        "cuda": False, "devices": ["cpu"], "roles": ["teacher"]},
                              sender="teacher", msg_id="teacher-1"),
    "op_reply": make_reply(op_request(), {"metrics": {"gen_k": 1, "loss": 0.5}},
                           {"x_gen": torch.randn(4, 1, 8, 8), "cond": torch.tensor([1, 2, 3, 0])},
                           sender="generator", msg_id="generator-2"),
    "error_reply": make_error_reply(REQUEST, caught(ValueError("bad recipe")), sender="all", msg_id="all-1"),
}


@pytest.mark.parametrize("kind", list(MESSAGES))
def test_round_trip_of_every_message_type(kind):
    msg = MESSAGES[kind]
    back = decode(wire(encode(msg)))
    for attr in ("id", "type", "version", "reply_to", "status", "sender", "body"):
        assert getattr(back, attr) == getattr(msg, attr), attr
    assert list(back.tensors) == list(msg.tensors)
    for name, t in msg.tensors.items():
        assert back.tensors[name].dtype == t.dtype
        assert raw_bytes(back.tensors[name]) == raw_bytes(t)


def test_header_layout_matches_the_spec():
    frames = encode(MESSAGES["op"])
    h = header_of(frames)
    assert list(h) == ["version", "id", "type", "reply_to", "status", "sender", "body", "tensors"]
    assert h["version"] == PROTOCOL_VERSION == 1
    assert h["tensors"] == [
        {"name": "x_t_dmd", "dtype": "float32", "shape": [2, 1, 4, 4], "frame": 1},
        {"name": "t_dmd", "dtype": "int64", "shape": [2], "frame": 2},
        {"name": "cond", "dtype": "int64", "shape": [2], "frame": 3},
    ]
    assert len(frames) == 4 and frames[1].nbytes == 2 * 16 * 4


def test_replies_point_at_their_request():
    ok = MESSAGES["op_reply"]
    assert (ok.type, ok.reply_to, ok.status, ok.sender, ok.id) == ("op_reply", "c-3", "ok", "generator", "generator-2")
    err = MESSAGES["error_reply"]
    assert (err.type, err.reply_to, err.status) == ("hello_reply", "c-1", "error")
    assert err.body["ename"] == "ValueError" and err.body["evalue"] == "bad recipe"
    assert err.body["traceback"].startswith("Traceback (most recent call last):")
    assert "_raise" in err.body["traceback"] and "ValueError: bad recipe" in err.body["traceback"]
    unknown = make_error_reply_to("c-9", None, ProtocolError("?"), sender="w", msg_id="w-1")
    assert unknown.type == "error_reply" and decode(wire(encode(unknown))).reply_to == "c-9"


def _bit_patterns(dtype: torch.dtype, shape) -> torch.Tensor:
    """Tensors whose bytes cover odd values: NaN payloads, -0.0, infinities, denormals, extremes."""
    g = torch.Generator().manual_seed(0)
    n = 1
    for d in shape:
        n *= d
    if dtype == torch.bool:
        return (torch.randint(0, 2, (n,), generator=g) == 1).reshape(shape)
    raw = torch.randint(0, 256, (n * dtype.itemsize,), generator=g, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (7,), (3, 2, 5)], ids=str)
def test_tensors_of_every_dtype_are_bit_exact(dtype_name, shape):
    dtype = DTYPES[dtype_name]
    t = _bit_patterns(dtype, shape)
    msg = Message(id="c-1", type="op", body={}, tensors={"t": t})
    frames = encode(msg)
    entry = header_of(frames)["tensors"][0]
    assert entry["dtype"] == dtype_name and entry["shape"] == list(shape)
    assert frames[1].nbytes == t.numel() * dtype.itemsize
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "buffer is not writable"
        back = decode(wire(frames)).tensors["t"]
        back.reshape(-1)[:1] = back.reshape(-1)[:1].clone()  # writable
    assert back.dtype == dtype and tuple(back.shape) == shape and back.is_contiguous()
    assert raw_bytes(back) == raw_bytes(t)


def test_special_float_values_survive():
    t = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, 3.5, -2.0])
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = t.to(dtype)
        back = decode(wire(encode(Message(id="c-1", type="op", tensors={"x": x})))).tensors["x"]
        assert raw_bytes(back) == raw_bytes(x)
        assert torch.signbit(back[1]) and torch.isnan(back[4])


def test_bfloat16_bytes_are_little_endian():
    frames = encode(Message(id="c-1", type="op", tensors={"x": torch.tensor([1.0], dtype=torch.bfloat16)}))
    assert bytes(frames[1]) == b"\x80\x3f"  # 0x3f80


def test_encode_shares_memory_with_contiguous_cpu_tensors():
    t = torch.zeros(4)
    frames = encode(Message(id="c-1", type="op", tensors={"t": t}))
    t[2] = 1.0
    assert bytes(frames[1]) == raw_bytes(torch.tensor([0.0, 0.0, 1.0, 0.0]))


def test_encode_accepts_views_and_grad_tensors():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    w = torch.ones(2, requires_grad=True) * 2
    tensors = {"transposed": base.t(), "sliced": base[1:, 1:3], "grad": w}
    back = decode(wire(encode(Message(id="c-1", type="op", tensors=tensors)))).tensors
    assert torch.equal(back["transposed"], base.t())
    assert torch.equal(back["sliced"], base[1:, 1:3])
    assert torch.equal(back["grad"], torch.full((2,), 2.0)) and not back["grad"].requires_grad


def test_decoded_tensors_do_not_alias_the_frames():
    frames = [bytearray(f) for f in encode(Message(id="c-1", type="op", tensors={"t": torch.ones(3)}))]
    t = decode(frames).tensors["t"]
    frames[1][:] = bytes(len(frames[1]))
    assert torch.equal(t, torch.ones(3))


def test_decode_accepts_zmq_frames():
    zmq = pytest.importorskip("zmq")
    frames = [zmq.Frame(bytes(f)) for f in encode(MESSAGES["op"])]
    back = decode(frames)
    assert torch.equal(back.tensors["cond"], torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------- tampered messages


def good_op():
    return encode(op_request({"a": torch.arange(6, dtype=torch.float32), "b": torch.tensor([1, 2])}))


def tamper(edit):
    frames = good_op()
    h = header_of(frames)
    edit(h)
    return with_header(frames, h)


def expect_error(frames, match, request_id="c-3", cls=ProtocolError):
    with pytest.raises(cls, match=match) as info:
        decode(frames)
    assert info.value.request_id == request_id
    return info.value


def test_bad_json_has_no_id():
    expect_error([b'{"version": 1, "id": "c-3", '], "not valid JSON", request_id=None)
    expect_error([b"\xff\xfe"], "not UTF-8", request_id=None)
    expect_error([b"[1, 2]"], "JSON object", request_id=None)
    expect_error([], "empty message", request_id=None)


def test_json_that_python_would_accept_but_the_spec_does_not():
    frames = good_op()
    text = bytes(frames[0]).decode()
    expect_error([text.replace('"step":5', '"step":NaN').encode()] + wire(frames[1:]), "not valid JSON",
                 request_id=None)
    dup = text.replace('"id":"c-3"', '"id":"c-3","id":"c-4"').encode()
    expect_error([dup] + wire(frames[1:]), "duplicate key", request_id=None)


@pytest.mark.parametrize("version", [2, 0])
def test_wrong_version(version):
    err = expect_error(tamper(lambda h: h.update(version=version)), "version", cls=ProtocolVersionError)
    assert err.request_type == "op"


def test_version_must_be_an_integer():
    err = expect_error(tamper(lambda h: h.update(version=True)), "'version' must be an integer")
    assert not isinstance(err, ProtocolVersionError)
    expect_error(tamper(lambda h: h.update(version="1")), "'version' must be an integer")


@pytest.mark.parametrize("field", ["version", "id", "type", "reply_to", "status", "sender", "body", "tensors"])
def test_missing_field(field):
    expect_error(tamper(lambda h: h.pop(field)), "lacks", request_id=None if field == "id" else "c-3")


@pytest.mark.parametrize("edit, match", [
    (lambda h: h.update(extra=1), "unknown field"),
    (lambda h: h.update(type="frobnicate"), "unknown message type"),
    (lambda h: h.update(sender=None), "'sender' must be"),
    (lambda h: h.update(body=[]), "'body' must be an object"),
    (lambda h: h.update(tensors={}), "'tensors' must be an array"),
    (lambda h: h.update(status="ok"), "'status' must be null"),
    (lambda h: h["tensors"][0].update(dtype="complex64"), "unknown dtype"),
    (lambda h: h["tensors"][0].update(shape=[-6]), "shape must be"),
    (lambda h: h["tensors"][0].update(shape=[True]), "shape must be"),
    (lambda h: h["tensors"][0].update(shape=6), "shape must be"),
    (lambda h: h["tensors"][0].update(extra=1), "exactly the fields"),
    (lambda h: h["tensors"][0].pop("frame"), "exactly the fields"),
    (lambda h: h["tensors"][0].update(name=""), "non-empty string"),
])
def test_bad_header_values(edit, match):
    expect_error(tamper(edit), match)


def test_an_empty_id_cannot_be_answered():
    expect_error(tamper(lambda h: h.update(id="")), "'id' must be", request_id=None)


def test_a_request_with_reply_to_is_not_answered():
    expect_error(tamper(lambda h: h.update(reply_to="w-1")), "'reply_to' must be null", request_id=None)


def test_replies_need_reply_to_status_and_error_fields():
    reply = encode(MESSAGES["error_reply"])

    def bad(edit, match):
        h = header_of(reply)
        edit(h)
        expect_error(with_header(reply, h), match, request_id=None)  # replies are never answered

    bad(lambda h: h.update(reply_to=None), "needs 'reply_to'")
    bad(lambda h: h.update(status=None), "needs 'status'")
    bad(lambda h: h.update(status="fine"), "needs 'status'")
    bad(lambda h: h["body"].pop("traceback"), "'traceback'")


def test_missing_frame():
    expect_error(good_op()[:2], r"frame 2 is not in the message")


def test_frame_zero_or_out_of_range():
    expect_error(tamper(lambda h: h["tensors"][0].update(frame=0)), "frame 0 is not in the message")
    expect_error(tamper(lambda h: h["tensors"][0].update(frame=9)), "frame 9 is not in the message")
    expect_error(tamper(lambda h: h["tensors"][0].update(frame="1")), "is not in the message")


def test_truncated_and_padded_frames():
    frames = wire(good_op())
    expect_error(frames[:1] + [frames[1][:-1]] + frames[2:], r"needs 24 bytes, its frame 1 has 23")
    expect_error(frames[:2] + [frames[2] + b"\x00"], r"needs 16 bytes, its frame 2 has 17")
    expect_error(tamper(lambda h: h["tensors"][0].update(shape=[7])), r"needs 28 bytes")
    expect_error(tamper(lambda h: h["tensors"][1].update(dtype="int32")), r"needs 8 bytes")


def test_extra_names_and_frames():
    expect_error(tamper(lambda h: h["tensors"][1].update(name="a")), "appears twice")
    expect_error(tamper(lambda h: h["tensors"][1].update(frame=1)), "named by two tensors")
    expect_error(tamper(lambda h: h["tensors"].append({"name": "c", "dtype": "uint8", "shape": [], "frame": 3})),
                 "frame 3 is not in the message")
    expect_error(wire(good_op()) + [b"\x00"], "not named by any tensor")
    expect_error(tamper(lambda h: h["tensors"].pop()), "not named by any tensor")


def test_bool_bytes_must_be_0_or_1():
    frames = wire(encode(Message(id="c-3", type="op", tensors={"m": torch.tensor([True, False])})))
    expect_error(frames[:1] + [b"\x01\x02"], "bytes other than 0 and 1")


def test_encode_refuses_what_decode_would_refuse():
    def bad(match, **fields):
        with pytest.raises(ProtocolError, match=match):
            encode(Message(**{"id": "c-1", "type": "op", **fields}))

    bad("dtype torch.complex64 is not supported", tensors={"z": torch.zeros(2, dtype=torch.complex64)})
    bad("expected a torch.Tensor", tensors={"z": [1.0]})
    bad("non-empty strings", tensors={"": torch.zeros(1)})
    bad("not plain JSON", body={"x": float("nan")})
    bad("not plain JSON", body={"x": torch.zeros(1)})
    bad("unknown message type", type="nope")
    bad("'reply_to' must be null", reply_to="c-0")
    bad("'version' must be an integer", version="1")


def test_message_ids_are_unique_and_prefixed():
    ids = MessageIds("teacher")
    assert [ids(), ids(), ids()] == ["teacher-1", "teacher-2", "teacher-3"]


# ------------------------------------------------------------------------------------ borrowed frames


def _address(buf) -> int:
    import numpy as np

    return np.frombuffer(buf, dtype=np.uint8).ctypes.data


def test_borrowed_decode_uses_large_received_frames_in_place():
    """decode(borrow=True), as the server calls it: a large frame just received with copy=False becomes the
    tensor's memory (no copy), bit-exact, writable, and kept alive by the tensor after the frame is dropped."""
    import gc

    import zmq

    from dmd2_worker.protocol import BORROW_MIN_BYTES

    t = _bit_patterns(torch.float32, (BORROW_MIN_BYTES // 4 + 3,))
    small = torch.arange(5, dtype=torch.int64)
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://borrow")
        b.connect("inproc://borrow")
        a.send_multipart(encode(Message(id="c-1", type="op", tensors={"t": t, "small": small})))
        frames = b.recv_multipart(copy=False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. torch's "buffer is not writable"
            msg = decode(frames, borrow=True)
        got, got_small = msg.tensors["t"], msg.tensors["small"]
        assert got.data_ptr() == _address(frames[1]), "large frame borrowed"
        assert got_small.data_ptr() != _address(frames[2]), "small frame copied"
        del frames, msg
        gc.collect()
        assert raw_bytes(got) == raw_bytes(t) and torch.equal(got_small, small)
        got[:3] = 1.5  # writable
        assert torch.all(got[:3] == 1.5)
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


def test_borrow_copies_what_it_cannot_use_in_place():
    from dmd2_worker.protocol import BORROW_MIN_BYTES

    t = torch.arange(BORROW_MIN_BYTES // 8 + 1, dtype=torch.float64)
    frames = encode(Message(id="c-1", type="op", tensors={"t": t}))
    header, data = bytes(frames[0]), bytes(frames[1])

    def shares(frame) -> bool:
        got = decode([header, frame], borrow=True).tensors["t"]
        assert raw_bytes(got) == raw_bytes(t)
        return got.data_ptr() == _address(frame)

    writable = bytearray(data)
    assert shares(writable)
    assert not shares(bytes(data))  # read-only: copied (and no "not writable" warning)
    shifted = bytearray(len(data) + 1)
    shifted[1:] = data
    assert not shares(memoryview(shifted)[1:])  # not 8-byte aligned for float64: copied
    got = decode([header, writable]).tensors["t"]  # without borrow: always a copy
    assert got.data_ptr() != _address(writable)
    writable[:8] = bytes(8)
    assert raw_bytes(got) == raw_bytes(t)
