"""train_teacher.py: `python -m dmd2_worker.train_teacher` (docs/pipeline.md §3): JSON lines, the teacher folder
written atomically, determinism, refusing an existing `out`, bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dmd2_worker import train_teacher
from dmd2_worker.config import parse_teacher_recipe
from dmd2_worker.data import build_data_source
from dmd2_worker.teacher_training import load_network

WORKER_ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # main sets the recipe's 1 thread; restored after each test


def teacher_recipe(out: Path, **overrides) -> dict:
    """A resolved teacher recipe small enough to train in a second; `dotted__key=value` overrides."""
    obj = {
        "version": 1, "kind": "teacher", "name": "t", "seed": 0, "out": str(out), "python": None,
        "torch_threads": 1, "device": "cpu",
        "data": {"source": "gmm", "gmm": {"num_classes": 4, "image_size": 8, "std": 0.1},
                 "folder": {"path": None, "channels": 1}},
        "diffusion": {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                      "beta_end": 0.012, "prediction_type": "epsilon"},
        "model": {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4},
        "train": {"steps": 3, "batch_size": 16, "lr": 0.001, "warmup_steps": 2, "weight_decay": 0.0,
                  "grad_clip": 1.0, "ema_decay": 0.999, "label_dropout": 0.1, "log_every": 2},
    }
    for dotted, value in overrides.items():
        node = obj
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return obj


def run_main(tmp_path: Path, recipe: dict, capsys) -> tuple[int, list[dict], str]:
    """train_teacher.main in this process; (exit status, the JSON events on stdout, stderr)."""
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.json"
    path.write_text(json.dumps(recipe))
    code = train_teacher.main([str(path)])
    printed = capsys.readouterr()
    return code, [json.loads(line) for line in printed.out.splitlines()], printed.err


def test_subprocess_run_prints_json_lines_and_writes_the_folder(tmp_path):
    out = tmp_path / "teachers" / "gmm"
    recipe = tmp_path / "resolved.json"
    recipe.write_text(json.dumps(teacher_recipe(out)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(WORKER_ROOT))
    r = subprocess.run([sys.executable, "-m", "dmd2_worker.train_teacher", str(recipe)], capture_output=True,
                       text=True, timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events] == ["start", "progress", "progress", "done"]
    start, p2, p3, done = events
    assert set(start) == {"event", "steps", "params", "train_images"}
    assert start["steps"] == 3 and start["params"] > 0 and start["train_images"] is None  # gmm: fresh draws
    assert [p["step"] for p in (p2, p3)] == [2, 3]  # every log_every steps and at the end
    for p in (p2, p3):
        assert set(p) == {"event", "step", "steps", "loss", "lr", "elapsed_s"} and p["steps"] == 3 and p["loss"] > 0
    assert p2["lr"] == pytest.approx(0.001)  # the end of the 2-step warm-up
    assert set(done) == {"event", "out", "seconds", "final_loss"}
    assert done["out"] == str(out) and done["final_loss"] == p3["loss"]
    assert os.listdir(out.parent) == ["gmm"]  # renamed from gmm.tmp-<pid>, nothing else left
    net, config = load_network(out)
    assert config["num_classes"] == 4 and config["image_shape"] == [1, 8, 8] and net.null_class == 4
    assert config["diffusion"] == teacher_recipe(out)["diffusion"]
    info = json.loads((out / "dmd2_teacher.json").read_text())
    # the data group as parsed: data.prompts (added later, absent from this recipe dict) with its defaults
    assert info["data"] == {**teacher_recipe(out)["data"], "prompts": {"file": None, "images": None}}
    assert info["train"]["steps"] == 3 and info["train"]["seed"] == 0


def test_training_is_deterministic(tmp_path, capsys):
    weights = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        code, events, _ = run_main(tmp_path, teacher_recipe(tmp_path / name, seed=seed, data__source="digits"), capsys)
        assert code == 0, events
        assert events[0]["train_images"] == 901
        weights.append(load_file(str(tmp_path / name / WEIGHTS)))
    a, b, c = weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv_in.weight"], c["conv_in.weight"])


def test_saved_weights_are_the_ema(tmp_path):
    recipe = parse_teacher_recipe(teacher_recipe(tmp_path / "x", train__ema_decay=0.0))
    data = build_data_source(recipe.data, "train")

    def trained(decay: float):
        recipe.train.ema_decay = decay
        unet = train_teacher.build_teacher_unet(recipe, data)
        ema, _ = train_teacher.train(unet, recipe, data, torch.device("cpu"), lambda event: None)
        return unet, ema

    raw, ema = trained(0.0)
    assert all(torch.equal(p, q) for p, q in zip(raw.parameters(), ema.parameters()))
    raw, ema = trained(0.999)
    assert not torch.equal(raw.conv_in.weight, ema.conv_in.weight)
    init = train_teacher.build_teacher_unet(recipe, data)
    assert not torch.equal(init.conv_in.weight, ema.conv_in.weight)


def test_unconditional_data_trains_an_unconditional_teacher(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy()).save(images / f"{i}.png")
    out = tmp_path / "u"
    code, events, _ = run_main(tmp_path, teacher_recipe(out, data__source="folder", data__folder__path=str(images)),
                            capsys)
    assert code == 0, events
    assert events[0]["train_images"] == 4
    net, config = load_network(out)
    assert config["num_classes"] is None and net.num_classes is None and net.unet.config.num_class_embeds is None


def test_refuses_an_existing_out_unless_forced(tmp_path, capsys):
    out = tmp_path / "t"
    out.mkdir()
    (out / "keep").write_text("mine")
    code, events, _ = run_main(tmp_path, teacher_recipe(out), capsys)
    assert code == 2
    assert events == [{"event": "error", "key": "out", "message": f"out: {out} exists: remove it or pass --force"}]
    assert os.listdir(out) == ["keep"]
    code, events, _ = run_main(tmp_path, {**teacher_recipe(out), "force": True}, capsys)
    assert code == 0 and events[-1]["event"] == "done"
    assert not (out / "keep").exists() and (out / WEIGHTS).is_file()
    assert sorted(os.listdir(tmp_path)) == ["recipe-0.json", "recipe-1.json", "t"]


@pytest.mark.parametrize("recipe, key, message", [
    (lambda out: teacher_recipe(out, train__ema_decay=1.0), "train.ema_decay", "train.ema_decay: must be in [0, 1)"),
    (lambda out: teacher_recipe(out, train__steps=0), "train.steps", "train.steps: must be >= 1, got 0"),
    (lambda out: {**teacher_recipe(out), "colour": "red"}, "colour", "colour: unknown key"),
    (lambda out: {**teacher_recipe(out), "force": "yes"}, "force", "force: expected boolean"),
    (lambda out: teacher_recipe(out, data__source="folder", data__folder__path=str(out.parent / "nowhere")),
     "data.folder.path", "does not exist"),
    (lambda out: teacher_recipe(out, model__block_out_channels=[8] * 5), "model.block_out_channels",
     "5 levels halve the image 4 times, but the data's images are 8x8"),
    (lambda out: teacher_recipe(out, device="nonsense"), "device", "device: 'nonsense' cannot be used here"),
])
def test_bad_input_is_an_error_event_and_exit_2(tmp_path, capsys, recipe, key, message):
    out = tmp_path / "t"
    code, events, _ = run_main(tmp_path, recipe(out), capsys)
    assert code == 2
    assert len(events) == 1 and events[0]["event"] == "error" and events[0]["key"] == key
    assert message in events[0]["message"] and "\n" not in events[0]["message"]
    assert not out.exists()


def test_unreadable_recipe_file(tmp_path, capsys):
    (tmp_path / "r.json").write_text("{")
    assert train_teacher.main([str(tmp_path / "r.json")]) == 2
    (event,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert event["key"] is None and "cannot read the resolved recipe" in event["message"]


def test_anything_else_is_exit_1_with_the_traceback_on_stderr(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(train_teacher, "write_teacher_folder", broken)
    code, events, err = run_main(tmp_path, teacher_recipe(tmp_path / "t"), capsys)
    assert code == 1
    assert events[-1] == {"event": "error", "message": "RuntimeError: disk on fire", "key": None}
    assert [e["event"] for e in events[:-1]] == ["start", "progress", "progress"]
    assert "Traceback" in err and "disk on fire" in err
