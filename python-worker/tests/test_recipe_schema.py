"""config.py's dataclasses and value rules against the CLI's recipe schema (src/recipe/schema.ts), which is the
one definition of a recipe's shape. tests/fixtures/recipe_schema.json is the schema dumped by
scripts/dump-recipe-schema.mjs (test/recipe-shape.test.ts fails when it is stale); see test/recipeSchemaFixture.ts
for what it holds. A key, type, default or minimum that differs between the two languages fails here."""
from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import pytest

from dmd2_worker.config import (LoraConfig, Recipe, RecipeError, StageConfig, TeacherRecipe, lora_problems, parse_recipe,
                                parse_teacher_recipe)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "recipe_schema.json").read_text())
KINDS = {"recipe": (Recipe, parse_recipe), "teacher_recipe": (TeacherRecipe, parse_teacher_recipe)}


def expected_annotation(leaf: dict) -> Any:
    """The dataclass annotation a resolved leaf of this schema kind must have."""
    kind = leaf["kind"]
    base = {
        "int": int, "number": float, "string": str, "path": str, "bool": bool, "devices": list[str],
        "intList": list[int], "stringList": list[str], "numberPair": list[float], "stages": list[StageConfig],
    }.get(kind)
    if kind == "enum":
        base = Literal[tuple(leaf.get("resolvedValues", leaf["values"]))]
    assert base is not None, f"unknown leaf kind {kind}"
    if leaf.get("nullable") and not leaf.get("filled"):
        return base | None
    return base


# Filled keys added after runs already existed: a recipe.resolved.json written before them lacks them, so config.py
# reads them as optional (None), the one deliberate difference from the schema's resolved type.
ABSENT_FROM_OLDER_RUNS = {"teacher.family", "teacher.conditioning"}


def same_annotation(a: Any, b: Any) -> bool:
    """Equal annotations, with `X | None` and Optional[X] alike and Literal's order ignored."""
    oa, ob = typing.get_origin(a), typing.get_origin(b)
    if oa in (Union, types.UnionType) and ob in (Union, types.UnionType):
        return set(typing.get_args(a)) == set(typing.get_args(b))
    if oa is Literal and ob is Literal:
        return set(typing.get_args(a)) == set(typing.get_args(b))
    return a == b


def schema_default(node: dict) -> Any:
    if node["kind"] == "group":
        return {k: schema_default(n) for k, n in node["fields"].items()}
    return node["default"]


def mismatches(cls: type, group: dict, at: str, extra: tuple[str, ...] = ()) -> list[str]:
    """Every difference between a dataclass and a schema group, one line each."""
    out: list[str] = []
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    want = list(group["fields"]) + list(extra)
    for k in sorted(set(fields) - set(want)):
        out.append(f"{at}{k}: in config.py, not in the schema")
    for k in sorted(set(want) - set(fields)):
        out.append(f"{at}{k}: in the schema, not in config.py")
    for key, node in group["fields"].items():
        if key not in fields:
            continue
        f, tp = fields[key], hints[key]
        if node["kind"] == "group":
            if not dataclasses.is_dataclass(tp):
                out.append(f"{at}{key}: a group in the schema, {tp} in config.py")
                continue
            out += mismatches(tp, node, f"{at}{key}.")
            if f.default_factory is not dataclasses.MISSING and dataclasses.asdict(f.default_factory()) != schema_default(node):
                out.append(f"{at}{key}: config.py's default {dataclasses.asdict(f.default_factory())} is not the schema's {schema_default(node)}")
            continue
        want_tp = expected_annotation(node)
        if f"{at}{key}" in ABSENT_FROM_OLDER_RUNS:
            want_tp = want_tp | None
        if not same_annotation(tp, want_tp):
            out.append(f"{at}{key}: {tp} in config.py, {want_tp} from the schema's {node}")
        if f.default is not dataclasses.MISSING and f.default != node["default"]:
            out.append(f"{at}{key}: config.py's default {f.default!r} is not the schema's {node['default']!r}")
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_dataclasses_match_the_schema(kind):
    cls, _ = KINDS[kind]
    assert mismatches(cls, FIXTURE[kind], "", tuple(FIXTURE["resolved_extra"][kind])) == []


def test_the_walk_finds_a_mismatch():
    """The comparison itself: a changed minimum-free leaf kind, default or key shows up."""
    schema = copy.deepcopy(FIXTURE["recipe"])
    schema["fields"]["gan"]["fields"]["enabled"]["kind"] = "int"
    schema["fields"]["generator"]["fields"]["last_step_only"]["default"] = True
    schema["fields"]["train"]["fields"]["new_key"] = {"kind": "int", "default": 1}
    del schema["fields"]["sample"]
    assert mismatches(Recipe, schema, "", ("version",)) == [
        "sample: in config.py, not in the schema",
        "generator.last_step_only: config.py's default False is not the schema's True",
        "gan.enabled: <class 'bool'> in config.py, <class 'int'> from the schema's {'kind': 'int', 'default': True}",
        "train.new_key: in the schema, not in config.py",
    ]


def names_key(problem: str, key: str) -> bool:
    """Whether a problem line is about `key` ("a.b: ..." or "a.b, c: ..." naming several keys of a group)."""
    head = problem.split(":")[0]
    parts = [p.strip() for p in head.split(",")]
    group = parts[0].rsplit(".", 1)[0] if "." in parts[0] else ""
    full = [p if "." in p or not group else f"{group}.{p}" for p in parts]
    return key in full


def python_problems(kind: str, key: str, value: float) -> list[str]:
    _, parse = KINDS[kind]
    obj = copy.deepcopy(FIXTURE["bases"][kind])
    *parents, last = key.split(".")
    node = obj
    for k in parents:
        node = node[k]
    node[last] = value
    try:
        parse(obj)
    except RecipeError as e:
        return e.problems
    return []


@pytest.mark.parametrize("kind", KINDS)
def test_value_rules_keep_the_schema_range(kind):
    """For every number leaf: where config.py checks a key's range at all (it names the key for some probe), it
    rejects a value below the schema's minimum; and it never rejects by name a value the CLI accepts."""
    by_key: dict[str, list[dict]] = {}
    for p in FIXTURE["probes"][kind]:
        by_key.setdefault(p["key"], []).append(p)
    wrong = []
    for key, probes in by_key.items():
        results = [(p, python_problems(kind, key, p["value"])) for p in probes]
        checks_key = any(any(names_key(x, key) for x in problems) for _, problems in results)
        for p, problems in results:
            if p["cli_accepts"] and any(names_key(x, key) for x in problems):
                wrong.append(f"{key}={p['value']}: the schema accepts it, config.py says {problems}")
            below_min = not p["in_range"] and p["value"] < min(q["value"] for q in probes if q["in_range"])
            if checks_key and below_min and not problems:
                wrong.append(f"{key}={p['value']}: below the schema's minimum, config.py accepts it")
    assert wrong == []


def test_the_range_check_finds_a_looser_minimum():
    assert python_problems("recipe", "data.gmm.num_classes", 11) != []
    assert python_problems("recipe", "data.gmm.num_classes", 1) != []  # was accepted (config.py said 1..10)


@pytest.mark.parametrize("case", FIXTURE["lora_cases"], ids=lambda c: json.dumps(c["lora"]) + c["teacher_source"] + c["strategy"])
def test_lora_rules_are_the_clis(case):
    """config.py's lora_problems (the worker's backstop) gives the problems resolve.ts's loraProblems gives."""
    lora = LoraConfig(**case["lora"])
    assert lora_problems(lora, case["teacher_source"], case["strategy"]) == case["problems"]


def test_lora_cases_cover_every_rule():
    assert len({p for c in FIXTURE["lora_cases"] for p in c["problems"]}) == 3
