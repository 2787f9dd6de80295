"""config.py: strict parsing of the resolved recipe (docs/recipe.md, "Resolved form")."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_dict
from dmd2_worker.config import (GanConfig, Recipe, RecipeError, parse_recipe, recipe_to_dict)
from dmd2_worker.step_plan import op_seed


def problems_of(obj) -> list[str]:
    with pytest.raises(RecipeError) as e:
        parse_recipe(obj)
    return e.value.problems


def test_tiny_example_parses_to_typed_dataclasses():
    r = parse_recipe(tiny_dict())
    assert isinstance(r, Recipe)
    assert isinstance(r.gan, GanConfig)
    assert r.name == "tiny" and r.python is None and r.torch_threads == 1
    assert r.generator.timesteps == [999, 499]
    assert r.data.gmm.num_classes == 4
    assert r.dmd.weight == 1.0 and isinstance(r.dmd.weight, float)  # JSON 1 is a number
    assert isinstance(r.heartbeat.timeout_s, float)
    assert r.optim.betas == [0.9, 0.999]


def test_round_trip():
    obj = tiny_dict()
    r = parse_recipe(obj)
    d = recipe_to_dict(r)
    assert d == obj
    assert parse_recipe(json.loads(json.dumps(d))) == r


def test_unknown_key_names_its_path():
    obj = tiny_dict()
    obj["gan"]["extra"] = 1
    assert problems_of(obj) == ["gan.extra: unknown key"]
    obj = tiny_dict()
    obj["colour"] = "red"
    assert problems_of(obj) == ["colour: unknown key"]


def test_missing_key_names_its_path():
    obj = tiny_dict()
    del obj["heartbeat"]["timeout_s"]
    assert problems_of(obj) == ["heartbeat.timeout_s: missing key (expected number)"]
    obj = tiny_dict()
    del obj["sample"]
    assert problems_of(obj) == ["sample: missing key (expected object)"]


def test_a_run_folder_from_before_a_key_existed_gets_its_default():
    """Keys added later have a default in their dataclass: a resolved recipe written before them (an older run
    folder) still loads, with the behaviour runs had then."""
    obj = tiny_dict()
    del obj["generator"]["last_step_only"]
    assert parse_recipe(obj).generator.last_step_only is False


def test_wrong_types():
    obj = tiny_dict()
    obj["gan"]["generator_weight"] = "0.003"
    assert problems_of(obj) == ["gan.generator_weight: expected number, got str"]
    cases = [
        (("ttur", "ratio"), True, "ttur.ratio: expected integer, got bool"),
        (("ttur", "ratio"), 5.0, "ttur.ratio: expected integer, got float"),
        (("gan", "enabled"), 1, "gan.enabled: expected boolean, got int"),
        (("data",), [], "data: expected object, got list"),
        (("generator", "timesteps"), [999, "499"], "generator.timesteps[1]: expected integer, got str"),
        (("optim", "betas"), 0.9, "optim.betas: expected list of numbers, got float"),
        (("python",), 3, "python: expected string or null, got int"),
        (("name",), None, "name: expected string, got null"),
    ]
    for path, value, message in cases:
        obj = tiny_dict()
        node = obj
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
        assert problems_of(obj) == [message], path


def test_enum_values():
    obj = tiny_dict()
    obj["placement"] = "both"
    (line,) = problems_of(obj)
    assert line.startswith("placement: expected one of 'per_role', 'colocated', got 'both'")
    obj = tiny_dict()
    obj["diffusion"]["prediction_type"] = "eps"
    (line,) = problems_of(obj)
    assert line.startswith("diffusion.prediction_type:")


def test_every_problem_is_reported_at_once():
    obj = tiny_dict()
    obj["gan"]["generator_weight"] = "x"
    del obj["train"]["steps"]
    obj["dmd"]["bogus"] = 0
    lines = problems_of(obj)
    assert sorted(lines) == sorted([
        "gan.generator_weight: expected number, got str",
        "train.steps: missing key (expected integer)",
        "dmd.bogus: unknown key",
    ])
    with pytest.raises(ValueError):  # RecipeError is a ValueError
        parse_recipe(obj)


def test_value_rules_the_math_relies_on():
    obj = tiny_dict()
    obj["generator"]["timesteps"] = [999]
    assert any(l.startswith("generator.timesteps: expected 2 entries") for l in problems_of(obj))
    obj = tiny_dict()
    obj["generator"]["timesteps"] = [999, 1000]
    assert any("strictly decreasing" in l for l in problems_of(obj))
    obj = tiny_dict()
    obj["version"] = 2
    assert any(l.startswith("version:") for l in problems_of(obj))


def test_not_an_object():
    assert problems_of([1]) == ["recipe: expected object, got list"]


def test_op_seed_matches_the_documented_formula():
    assert op_seed(0, 0, 1) == 1
    assert op_seed(3, 10, 2) == (3 * 1000003 + 10 * 7919 + 2) % 2**31
    assert op_seed(2**31, 10**9, 3) == (2**31 * 1000003 + 10**9 * 7919 + 3) % 2**31
