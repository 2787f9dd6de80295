"""teacher_training.py: the built-in teacher learns the GMM's posterior mean; caching; determinism."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_recipe
from dmd2_worker.data.gmm import GaussianMixture
from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.teacher_training import (CONFIG_KEYS, ensure_cached_teacher, install_teacher, load_network,
                                          teacher_cache_key, train_teacher)


def test_teacher_denoiser_is_close_to_the_analytic_posterior_mean(teacher_dir, tiny_recipe):
    net, config = load_network(teacher_dir)
    gmm = GaussianMixture.from_config(tiny_recipe.data.gmm)
    schedule = NoiseSchedule.from_config(tiny_recipe.diffusion)
    g = torch.Generator().manual_seed(123)
    x0, y = gmm.sample(1024, g)
    null = torch.full_like(y, gmm.num_classes)
    with torch.no_grad():
        for step in (100, 300, 500):
            t = torch.full((1024,), step)
            x_t = schedule.add_noise(x0, t, torch.randn(x0.shape, generator=g))
            naive = x_t / schedule.alpha_bar[step].sqrt().float()
            for cond, bound in ((y, 0.06), (None, 0.12)):
                truth = gmm.analytic_x0(x_t, t, schedule, cond)
                pred = schedule.to_x0(net(x_t, t, y if cond is not None else null), x_t, t)
                err = (pred - truth).pow(2).mean().sqrt().item()
                err_naive = (naive - truth).pow(2).mean().sqrt().item()
                assert err < bound, (step, cond is not None, err)
                assert err < 0.5 * err_naive, (step, cond is not None, err, err_naive)


def test_cache_layout_and_hit(teacher_dir, tiny_recipe):
    assert teacher_dir.parent.name == "teachers"
    assert teacher_dir.parent.parent == Path(os.environ["DMD2_CACHE"])
    assert teacher_dir.name == teacher_cache_key(tiny_recipe)
    config = json.loads((teacher_dir / "config.json").read_text())
    assert set(config) == CONFIG_KEYS
    assert config["arch"] == "tiny_unet" and config["num_classes"] == 4 and config["image_shape"] == [1, 8, 8]
    assert config["diffusion"]["prediction_type"] == "epsilon"
    mtime = (teacher_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_cached_teacher(tiny_recipe) == teacher_dir  # a hit: not trained again
    assert (teacher_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert not [p for p in teacher_dir.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_cache_key_covers_what_changes_the_weights(tiny_recipe, tmp_path):
    key = teacher_cache_key(tiny_recipe)
    assert teacher_cache_key(make_tiny_recipe(tmp_path / "other-run-dir")) == key
    assert teacher_cache_key(make_tiny_recipe(tmp_path, seed=1)) != key
    assert teacher_cache_key(make_tiny_recipe(tmp_path, teacher__builtin__channels=8)) != key
    assert teacher_cache_key(make_tiny_recipe(tmp_path, data__gmm__std=0.2)) != key
    assert teacher_cache_key(make_tiny_recipe(tmp_path, diffusion__prediction_type="v_prediction")) != key
    assert teacher_cache_key(make_tiny_recipe(tmp_path, generator__lr=1.0)) == key


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_is_deterministic_given_the_seed(tmp_path, kind):
    r = make_tiny_recipe(tmp_path, teacher__builtin__train_steps=3, teacher__builtin__channels=8,
                         teacher__builtin__batch_size=16, diffusion__prediction_type=kind)
    a, info = train_teacher(r)
    b, _ = train_teacher(r)
    assert info["steps"] == 3
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    c, _ = train_teacher(make_tiny_recipe(tmp_path, seed=1, teacher__builtin__train_steps=3,
                                          teacher__builtin__channels=8, teacher__builtin__batch_size=16,
                                          diffusion__prediction_type=kind))
    assert not torch.equal(a.conv_in.weight, c.conv_in.weight)


def test_install_into_run_dir(teacher_dir, tiny_recipe, tmp_path):
    target = install_teacher(tiny_recipe, tmp_path / "run")
    assert target == tmp_path / "run" / "teacher"
    assert (target / "model.safetensors").read_bytes() == (teacher_dir / "model.safetensors").read_bytes()
    assert install_teacher(tiny_recipe, tmp_path / "run") == target  # a resumed run keeps it
    other = make_tiny_recipe(tmp_path, data__gmm__num_classes=3)
    with pytest.raises(ValueError, match="another recipe"):
        install_teacher(other, tmp_path / "run")
