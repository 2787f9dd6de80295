"""Shared fixtures of the math/roles tests: the tiny recipe and a built-in teacher trained once per session."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

from dmd2_worker.config import Recipe, parse_recipe

FIXTURES = Path(__file__).parent / "fixtures"

# The values recipes/tiny.yaml sets on top of the documented example (tests/fixtures/tiny.resolved.json, a copy of
# docs/recipe.md "Resolved form"): a 16-channel teacher (trains in ~8 s on 2 cores) and learning rates tuned for
# this 8x8 mixture (the documented 1e-4 / 1e-4 leaves the fake score too slow to track the generator).
TINY_OVERRIDES: dict = {}  # the fixture is recipes/tiny.yaml resolved (test/recipe.test.ts checks that)

torch.set_num_threads(2)


def tiny_dict() -> dict:
    return json.loads((FIXTURES / "tiny.resolved.json").read_text())


def make_tiny_recipe(run_dir: Path, **overrides) -> Recipe:
    """The tiny recipe with TINY_OVERRIDES, `run_dir` and any `dotted__key=value` overrides."""
    obj = copy.deepcopy(tiny_dict())
    obj["run_dir"] = str(run_dir)
    items = dict(TINY_OVERRIDES)
    items.update({k.replace("__", "."): v for k, v in overrides.items()})
    for dotted, value in items.items():
        node = obj
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return parse_recipe(obj)


@pytest.fixture(scope="session", autouse=True)
def dmd2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private teacher cache for the session: the built-in teacher is trained once, at first use."""
    path = tmp_path_factory.mktemp("dmd2-cache")
    old = os.environ.get("DMD2_CACHE")
    os.environ["DMD2_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DMD2_CACHE", None)
    else:
        os.environ["DMD2_CACHE"] = old


@pytest.fixture
def one_torch_thread():
    """torch on 1 thread for the test: tiny convolutions on 2 threads crawl when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Recipe:
    return make_tiny_recipe(tmp_path / "run")


@pytest.fixture(scope="session")
def teacher_dir(dmd2_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cached built-in teacher of the tiny recipe (trained on first use)."""
    from dmd2_worker.teacher_training import ensure_cached_teacher

    return ensure_cached_teacher(make_tiny_recipe(tmp_path_factory.mktemp("run")))
