"""The scheduler config `dmd2 export` writes (export.lcm_scheduler_config): diffusers' LCMScheduler, stepped with a
network's raw output at the student's timesteps and the pipeline's random generator, is dmd2's own few-step sampler
(sampling.sample_generator: x0 prediction, re-noised with fresh noise from the same generator) for every prediction
type and schedule dmd2 supports and for 1- to 4-step timesteps, including ones off LCM's default grid. The "network"
is a fixed nonlinear function of (x, t), so the check is about the sampler alone; test_export.py and
test/export.test.ts check it with real students."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from diffusers import LCMScheduler

from dmd2_worker.diffusion import NoiseSchedule
from dmd2_worker.export import TIMESTEP_SCALING, lcm_scheduler_config
from dmd2_worker.sampling import sample_generator

SCHEDULES = {
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
}
TIMESTEPS = [[999, 749, 499, 249], [599, 449, 299, 149], [599], [999], [399, 199], [999, 666, 333]]


def teacher_folder(tmp_path: Path, schedule: str, prediction_type: str) -> Path:
    (tmp_path / "scheduler").mkdir(parents=True)
    cfg = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "prediction_type": prediction_type,
           **SCHEDULES[schedule]}
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    return tmp_path


def raw_output(x: torch.Tensor, t: int) -> torch.Tensor:
    """A stand-in network: deterministic, nonlinear in x, depends on t; O(1) like a trained network's output."""
    return 0.8 * torch.tanh(1.3 * x + 0.002 * t) + 0.1 * torch.sin(3.0 * x)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
def test_lcm_steps_are_the_generator_sampler(tmp_path, schedule, prediction_type):
    cfg = lcm_scheduler_config(teacher_folder(tmp_path, schedule, prediction_type))
    assert cfg["timestep_scaling"] == TIMESTEP_SCALING and cfg["prediction_type"] == prediction_type
    assert cfg["beta_schedule"] == schedule and cfg["original_inference_steps"] == 1000
    ours_schedule = NoiseSchedule(1000, schedule, SCHEDULES[schedule]["beta_start"], SCHEDULES[schedule]["beta_end"],
                                  prediction_type)

    def G(x, t, cond):
        return ours_schedule.to_x0(raw_output(x, int(t[0])), x, t)

    for ts in TIMESTEPS:
        scheduler = LCMScheduler.from_config(cfg)
        scheduler.set_timesteps(timesteps=ts)
        assert scheduler.timesteps.tolist() == ts
        g = torch.Generator().manual_seed(5)
        x = torch.randn(3, 2, 4, 4, generator=g)
        for t in scheduler.timesteps:
            x = scheduler.step(raw_output(x, int(t)), t, x, generator=g).prev_sample
        g = torch.Generator().manual_seed(5)
        z = torch.randn(3, 2, 4, 4, generator=g)
        ours = sample_generator(G, z, None, ts, ours_schedule, g)
        # diffusers keeps alpha_bar in float32, dmd2 in float64: x0 = (x - sqrt(1-a) eps) / sqrt(a) scales that
        # difference by up to 1/sqrt(a) (~160 at t = 999 of the linear schedule)
        tol = 1e-5 if prediction_type != "epsilon" or schedule == "scaled_linear" else 1e-4
        assert torch.allclose(x, ours, atol=tol), (ts, float((x - ours).abs().max()))
        if len(ts) > 1:  # fresh noise matters: the same steps without it (DDIM-like, eta 0) give something else
            assert float((x - G(z, torch.full((3,), ts[-1]), None)).abs().max()) > 1e-2


def test_lcm_boundary_scalings_are_exact_and_steps_need_no_custom_timesteps(tmp_path):
    scheduler = LCMScheduler.from_config(lcm_scheduler_config(teacher_folder(tmp_path, "scaled_linear", "epsilon")))
    for t in (1, 149, 249, 599, 999):
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip < 1e-8 and abs(1.0 - c_out) < 1e-8, (t, c_skip, c_out)
    # the stock default timestep_scaling (10) is close at the usual timesteps but not at low ones (t = 1: 2.5e-3)
    stock = LCMScheduler(timestep_scaling=10.0)
    assert stock.get_scalings_for_boundary_condition_discrete(149)[0] > 1e-7
    assert stock.get_scalings_for_boundary_condition_discrete(1)[0] > 1e-3
    # num_inference_steps alone gives dmd2's default timesteps from 999 (generator_timesteps(N, 999))
    for n, want in [(1, [999]), (2, [999, 499]), (3, [999, 666, 333]), (4, [999, 749, 499, 249])]:
        scheduler.set_timesteps(num_inference_steps=n)
        assert scheduler.timesteps.tolist() == want
    # custom timesteps off LCM's default 50-step grid are taken without its "not on the original schedule" warning
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    lcm_logger = logging.getLogger("diffusers.schedulers.scheduling_lcm")
    lcm_logger.addHandler(handler)
    try:
        scheduler.set_timesteps(timesteps=[999, 749, 499, 249])
        LCMScheduler().set_timesteps(timesteps=[999, 749, 499, 249])  # the stock default does warn: the check works
    finally:
        lcm_logger.removeHandler(handler)
    assert len(records) == 1 and "not on the original" in records[0].getMessage()
