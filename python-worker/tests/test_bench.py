"""Benchmark helpers (dmd2_worker/bench.py, bench_worker.py): the echo role stays out of the production roles."""
from __future__ import annotations

import pytest
import torch

from dmd2_worker.bench import build_parser
from dmd2_worker.bench_worker import EchoRole, make_echo_role
from dmd2_worker.roles import ROLE_CLASSES, make_role


def test_echo_role_is_bench_only():
    assert "echo" not in ROLE_CLASSES and EchoRole not in ROLE_CLASSES.values()
    with pytest.raises(ValueError, match="unknown role"):
        make_role("echo")


def test_echo_role_leaves_the_store_as_the_request_filled_it():
    role = make_echo_role("generator")
    store = {"x": torch.arange(3)}
    assert role.run_op("echo", {}, store, None) == {}
    assert torch.equal(store["x"], torch.arange(3))
    with pytest.raises(ValueError, match="has no op"):
        role.run_op("generate", {}, store, None)


def test_bench_cli_parses_its_subcommands():
    p = build_parser()
    a = p.parse_args(["local", "--recipe", "r.json", "--run-dir", "d", "--steps", "3", "--threads", "2"])
    assert (a.cmd, a.steps, a.warmup, a.threads) == ("local", 3, 5, 2)
    a = p.parse_args(["sample", "--recipe", "r.json", "--run-dir", "d", "--student-steps", "1,4"])
    assert a.student_steps == [1, 4] and a.teacher_steps == [50]
    assert p.parse_args(["bare-echo", "--connect", "ipc:///tmp/x"]).connect == "ipc:///tmp/x"
