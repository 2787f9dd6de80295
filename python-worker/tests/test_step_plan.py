"""step_plan.py, the Python port of the training step, against the TypeScript plan: tests/fixtures/step-plan.json
(scripts/regen-step-fixture.mjs writes it from src/schedule/stepPlan.ts; test/step-plan.test.ts keeps it current).
A change to the port alone fails here; a change to the TypeScript plan alone fails there. Also: local_loop runs
exactly these op calls, and its per-role runner carries exactly the tensors routeTensors attaches."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from dmd2_worker.config import parse_recipe
from dmd2_worker.local_loop import run_phases, train_step
from dmd2_worker.roles.base import WorkerContext
from dmd2_worker import step_plan
from dmd2_worker.step_plan import plan_step

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "step-plan.json").read_text())
CASES = {c["name"]: c for c in FIXTURE["cases"]}
PER_ROLE = {"teacher": "teacher", "generator": "generator", "fake_score": "fake_score", "discriminator": "fake_score"}


def same(a: Any, b: Any) -> bool:
    """JSON equality, with booleans kept apart from numbers (True == 1 in Python, not in the TypeScript plan)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def as_json(phases) -> list:
    return [[dataclasses.asdict(c) for c in phase] for phase in phases]


@pytest.mark.parametrize("name", list(CASES))
def test_the_port_gives_the_typescript_plan(name):
    case = CASES[name]
    recipe = parse_recipe(case["recipe"])
    for plan in case["plans"]:
        got = as_json(plan_step(plan["step"], recipe))
        assert same(got, plan["phases"]), f"{name}, step {plan['step']}:\n port {got}\n plan {plan['phases']}"


HELPERS = {
    "is_generator_step": lambda s, k: int(step_plan.is_generator_step(s, k)),
    "generator_updates_before": step_plan.generator_updates_before,
    "warmup_lr": step_plan.warmup_lr,
    "gan_generator_weight": step_plan.gan_generator_weight,
    "op_seed": step_plan.op_seed,
}


@pytest.mark.parametrize("name", list(HELPERS))
def test_the_schedule_helpers_give_the_typescript_values(name):
    rows = FIXTURE["helpers"][name]
    assert rows
    for *args, value in rows:
        assert HELPERS[name](*args) == value, f"{name}{tuple(args)}"


def test_the_seed_salts_are_the_typescript_ones():
    assert FIXTURE["seed_salt"] == {"generate": step_plan.SALT_GENERATE, "generatorGanGrad": step_plan.SALT_GAN_GRAD,
                                    "fakeScoreUpdate": step_plan.SALT_FAKE_UPDATE}


def test_the_comparison_tells_booleans_from_numbers():
    assert same([{"grad": True, "lr": 1}], [{"grad": True, "lr": 1.0}])
    assert not same({"grad": 1}, {"grad": True})
    assert not same({"a": 1}, {"a": 1, "b": 2})
    assert not same(["cond"], ["cond", "x_gen"])


class Recorder:
    """A stand-in role: records its op calls (with the tensors carried into its store just before) and writes a
    tensor under each output name it is told to make, its value the name's index in `names`."""

    def __init__(self, name: str, log: list, outputs: dict, names: list[str], carried: list[str]):
        self.name, self.log, self.outputs, self.names, self.carried = name, log, outputs, names, carried

    def run_op(self, op, args, store, ctx):
        self.log.append({"role": self.name, "op": op, "args": dict(args), "store": sorted(store),
                         "carried": list(self.carried)})
        self.carried.clear()
        for out in self.outputs.get((self.name, op), []):
            store[out] = torch.tensor([self.names.index(out)])
        return {}


def recorder_contexts(recipe, workers: dict[str, str], log: list, outputs=None, names=None,
                      carried=None) -> dict[str, WorkerContext]:
    ctxs = {w: WorkerContext(worker=w, recipe=recipe, run_dir=Path("/nonexistent"), device=torch.device("cpu"))
            for w in sorted(set(workers.values()))}
    for role, w in workers.items():
        ctxs[w].roles[role] = Recorder(role, log, outputs or {}, names or [], carried if carried is not None else [])
    return {role: ctxs[w] for role, w in workers.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_local_loop_runs_the_production_plan(name):
    """local_loop.train_step makes exactly the op calls of the TypeScript plan, in its order."""
    case = CASES[name]
    recipe = parse_recipe(case["recipe"])
    log: list = []
    ctx = recorder_contexts(recipe, {r: "all" for r in PER_ROLE}, log)["teacher"]
    for plan in case["plans"]:
        log.clear()
        train_step(plan["step"], recipe, ctx)
        want = [{"role": c["role"], "op": c["op"], "args": c["args"]} for phase in plan["phases"] for c in phase]
        got = [{k: e[k] for k in ("role", "op", "args")} for e in log]
        assert same(got, want), f"{name}, step {plan['step']}"


@pytest.mark.parametrize("name", list(CASES))
def test_the_per_role_runner_carries_what_route_tensors_attaches(name):
    """run_phases with one context per worker (the per_role layout) carries into each call exactly the inputs
    routeTensors attaches to it, the tensors their producers made, and each call finds all its inputs."""
    case = CASES[name]
    recipe = parse_recipe(case["recipe"])
    for route in case["routes"]:
        phases = plan_step(route["step"], recipe)
        calls = [c for phase in phases for c in phase]
        names = sorted({n for c in calls for n in c.outputs})
        log: list = []
        carried: list[str] = []

        def carry(t: torch.Tensor) -> torch.Tensor:
            carried.append(names[int(t.item())])
            return t.clone()

        home = recorder_contexts(recipe, PER_ROLE, log, {(c.role, c.op): c.outputs for c in calls}, names, carried)
        assert run_phases(route["step"], phases, home, carry=carry) == {}
        assert [e["carried"] for e in log] == route["attach"], f"{name}, step {route['step']}"
        for call, entry in zip(calls, log, strict=True):
            assert set(call.inputs) <= set(entry["store"]), f"{name}: {call.role}.{call.op} ran without its inputs"
