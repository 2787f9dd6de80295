"""The generic checks, over every family of the registry (families.json; docs/adapters.md, "Adding a family"): its
tiny builder (tests/pipelines.py TINY_BUILDERS) makes a folder the registry reads as that family, two training steps
of every role move the generator and the fake score, the generator samples, and `dmd2 plan` sizes the recipe with
the family's step tensors. A family registered without a tiny builder fails here."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_recipe, tiny_dict
from dmd2_worker.adapters.registry import family_of
from dmd2_worker.families import registry
from dmd2_worker.local_loop import build_roles, train_step
from dmd2_worker.roles.base import TensorStore
from pipelines import TINY_BUILDERS, write_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = sorted(registry().families)


def recipe_values(fam, folder: Path, tmp_path: Path) -> dict:
    """The tiny recipe's overrides for a teacher of this family (by its kind of conditioning, not its name)."""
    values = dict(teacher__source="diffusers", teacher__path=str(folder), train__batch_size=4, generator__lr=1e-3,
                  fake_score__lr=1e-3, optim__warmup_steps=0, ttur__ratio=2)
    if fam.is_text:
        prompts = tmp_path / "prompts.txt"
        prompts.write_text("a cat\nthe dog on a mat\n")
        images = write_images(tmp_path / "images", 4, size=20)
        values.update(data__source="prompts", data__prompts={"file": str(prompts), "images": str(images)},
                      dmd__real_guidance_scale=2.0)
    return values


def test_every_family_has_a_tiny_builder():
    missing = [f"{name} (tiny_builder {registry().family(name).tiny_builder!r})" for name in FAMILIES
               if registry().family(name).tiny_builder not in TINY_BUILDERS]
    assert not missing, f"families without a tiny builder in tests/pipelines.py TINY_BUILDERS: {', '.join(missing)}"


@pytest.mark.parametrize("name", FAMILIES)
def test_family_builds_trains_samples_and_plans(name, tmp_path):
    fam = registry().family(name)
    assert fam.tiny_builder in TINY_BUILDERS, f"{name}: no tiny builder {fam.tiny_builder!r} in tests/pipelines.py"
    folder = TINY_BUILDERS[fam.tiny_builder](tmp_path / "teacher", tmp_path / "work")
    assert family_of(folder) == name

    # a training step of every role (GAN on)
    values = recipe_values(fam, folder, tmp_path)
    recipe = make_tiny_recipe(tmp_path / "run", **values)
    ctx, roles = build_roles(recipe)
    gen_before = {k: v.clone() for k, v in roles["generator"].net.state_dict().items()}
    fake_before = {k: v.clone() for k, v in roles["fake_score"].net.state_dict().items()}
    metrics: dict[str, float] = {}
    for step in range(2):
        metrics.update(train_step(step, recipe, ctx))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert any(not torch.equal(v, gen_before[k]) for k, v in roles["generator"].net.state_dict().items())
    assert any(not torch.equal(v, fake_before[k]) for k, v in roles["fake_score"].net.state_dict().items())

    # the conditioning step tensors the generator wrote are the registry's
    store = TensorStore()
    store.step = 0
    roles["generator"].run_op("generate", {"seed": 1, "batch_size": 4, "grad": False, "dmd": True}, store, ctx)
    for t in fam.step_tensors:
        assert t.name in store and store[t.name].shape[0] == 4, t.name
        assert str(store[t.name].dtype) == f"torch.{t.dtype}", t.name

    # sampling
    out = tmp_path / "samples"
    args = {"seed": 0, "n": 2, "steps": 1, "classes": None, "out_dir": str(out)}
    if fam.is_text:
        args["prompts"] = ["a cat"]
    else:
        args["classes"] = [0, 1]
    store = TensorStore()
    roles["generator"].run_op("sample", args, store, ctx)
    assert store["samples"].shape[0] == 2 and torch.isfinite(store["samples"]).all()

    # dmd2 plan sizes it: the UNet's parameters exactly, and the family's step tensors between the processes
    node = shutil.which("node")
    cli = ROOT / "dist" / "src" / "cli" / "main.js"
    assert node is not None and cli.is_file(), "the plan check needs node and the built CLI (npm run build)"
    obj = tiny_dict()
    obj["run_dir"] = str(tmp_path / "plan-run")
    for dotted, value in values.items():
        node_obj = obj
        *parents, leaf = dotted.split("__")
        for p in parents:
            node_obj = node_obj[p]
        node_obj[leaf] = value
    obj.pop("version", None)
    for derived in ("family", "conditioning"):  # resolve.ts derives these from the folder; a recipe leaves them out
        obj["teacher"].pop(derived, None)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(json.dumps(obj))  # JSON is YAML
    run = subprocess.run([node, str(ROOT / "bin" / "dmd2.js"), "plan", str(recipe_file), "--json",
                          "--set", "placement=per_role"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr or run.stdout
    plan = json.loads(run.stdout)
    assert not plan["problems"], plan["problems"]
    want = sum(p.numel() for p in roles["teacher"].net.parameters())
    assert plan["memory"]["network"]["params"] == want
    moved = {t["tensor"] for kind in plan["traffic"]["kinds"] for t in kind["transfers"]}
    assert set(fam.step_tensor_names) <= moved, (fam.step_tensor_names, moved)
    if fam.is_text:
        assert plan["memory"]["network"]["text"]["family"] == name
