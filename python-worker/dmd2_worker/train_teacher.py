"""`python -m dmd2_worker.train_teacher <resolved.json>`: train a teacher (docs/pipeline.md §3) and write its
diffusers teacher folder (§2).

The JSON file is the resolved teacher recipe, plus `"force": true` to replace an existing `out`. Progress is JSON
lines on stdout (start, progress every `train.log_every` steps and at the end, done, or error); tracebacks go to
stderr. Exit status (job.py): 0 done, 2 bad input (recipe, data source, device, `out` exists), 1 anything else.

Training: a UNet2DModel (no attention; `num_classes + 1` class embeddings, the last the null class) on the data's
train split; AdamW, linear warm-up then cosine lr, global gradient clipping, label dropout to the null class, the
loss weighting of the built-in teacher (`teacher_training.loss_weights`: epsilon targets weigh more at high noise),
an EMA of the weights (the saved weights; `ema_decay` 0: the raw weights). Deterministic: the initial weights come
from `torch.manual_seed`, every draw from one seeded CPU generator; per step, in order: the batch
(`DataSource.sample`), the label-dropout mask (conditional data only), t, noise.
"""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import UNet2DModel

from .config import RecipeError, TeacherRecipe, parse_teacher_recipe
from .step_plan import SALT_TEACHER_DATA, SALT_TEACHER_INIT, op_seed
from .data import DataSource, DataSourceError, build_data_source
from .diffusion import NoiseSchedule
from .job import JobInputError, emit, read_spec, run_job
from .models.unet2d import UNet2DNet, teacher_unet_config
from .optim import clip_grad_norm, warmup_cosine_lr
from .teacher_folder import write_teacher_folder
from .teacher_training import loss_weights, weighted_denoising_loss

EMA_WARMUP = 10  # the EMA decay is min(ema_decay, (1 + k) / (EMA_WARMUP + k)) at update k, so early steps count


def read_recipe(path: str) -> tuple[TeacherRecipe, bool]:
    """The parsed recipe and the top-level `force` flag (popped before parsing)."""
    obj = read_spec(path, "the resolved recipe")
    force = obj.pop("force", False) if isinstance(obj, dict) else False
    if not isinstance(force, bool):
        raise JobInputError("force", f"force: expected boolean, got {type(force).__name__}")
    try:
        return parse_teacher_recipe(obj), force
    except RecipeError as e:
        raise JobInputError(e.problems[0].split(":", 1)[0], str(e)) from None


def check_out(recipe: TeacherRecipe, force: bool) -> Path:
    out = Path(recipe.out).absolute()
    if out.exists() and not force:
        raise JobInputError("out", f"out: {out} exists: remove it or pass --force")
    return out


def open_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise JobInputError("device", f"device: {name!r} cannot be used here: {' '.join(str(e).split())}") from None
    return device


def open_data(recipe: TeacherRecipe) -> DataSource:
    try:
        data = build_data_source(recipe.data, "train")
    except DataSourceError as e:
        raise JobInputError(e.key, str(e)) from None
    size = data.image_shape[-1]
    downsamples = len(recipe.model.block_out_channels) - 1
    if size % 2**downsamples:
        raise JobInputError("model.block_out_channels", f"model.block_out_channels: {downsamples + 1} levels halve the "
                         f"image {downsamples} times, but the data's images are {size}x{size}")
    return data


def build_teacher_unet(recipe: TeacherRecipe, data: DataSource) -> UNet2DModel:
    """The untrained UNet2DModel, its weights drawn under torch.manual_seed (the global RNG is left as it was)."""
    m = recipe.model
    config = teacher_unet_config(image_shape=data.image_shape, block_out_channels=m.block_out_channels,
                                 layers_per_block=m.layers_per_block, norm_num_groups=m.norm_num_groups,
                                 num_classes=data.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(op_seed(recipe.seed, 0, SALT_TEACHER_INIT))
        return UNet2DModel(**config)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p, 1.0 - decay)


def train(unet: UNet2DModel, recipe: TeacherRecipe, data: DataSource, device: torch.device,
          progress: Callable[[dict[str, Any]], None]) -> tuple[UNet2DModel, float]:
    """Train `unet` (on `device`); return (its EMA copy, the mean loss of the last log window). `progress` gets
    each progress event."""
    cfg = recipe.train
    K = data.num_classes
    ema = copy.deepcopy(unet).requires_grad_(False)
    net = UNet2DNet(unet, K, K)
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    weights = loss_weights(schedule).to(device)
    T = schedule.num_train_timesteps
    g = torch.Generator().manual_seed(op_seed(recipe.seed, 0, SALT_TEACHER_DATA))
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cpu", "cuda"))
    net.train()
    start = time.perf_counter()
    window: list[float] = []
    last_loss = float("nan")
    for step in range(cfg.steps):
        x0, labels = data.sample(cfg.batch_size, g)
        if labels is not None:
            drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
            labels = torch.where(drop, torch.full_like(labels, K), labels).to(device)
        t = torch.randint(0, T, (cfg.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = weighted_denoising_loss(net, x0.to(device), t.to(device), noise.to(device), labels, schedule, weights)
        lr = warmup_cosine_lr(cfg.lr, step, cfg.steps, cfg.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(unet.parameters(), cfg.grad_clip)
        opt.step()
        update_ema(ema, unet, min(cfg.ema_decay, (1 + step) / (EMA_WARMUP + step)))
        window.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            last_loss = sum(window) / len(window)
            window.clear()
            progress({"event": "progress", "step": step + 1, "steps": cfg.steps, "loss": last_loss, "lr": lr,
                      "elapsed_s": round(time.perf_counter() - start, 3)})
    return ema.eval(), last_loss


def run(recipe: TeacherRecipe, force: bool) -> None:
    out = check_out(recipe, force)
    if recipe.torch_threads > 0:
        torch.set_num_threads(recipe.torch_threads)
    device = open_device(recipe.device)
    data = open_data(recipe)
    start = time.perf_counter()
    unet = build_teacher_unet(recipe, data).to(device)
    emit({"event": "start", "steps": recipe.train.steps, "params": sum(p.numel() for p in unet.parameters()),
          "train_images": len(data) if isinstance(data, collections.abc.Sized) else None})
    ema, final_loss = train(unet, recipe, data, device, emit)
    seconds = time.perf_counter() - start
    how = {**dataclasses.asdict(recipe.train), "seed": recipe.seed, "model": dataclasses.asdict(recipe.model),
           "final_loss": final_loss, "seconds": round(seconds, 3), "torch": torch.__version__}
    try:
        write_teacher_folder(out, ema.to("cpu"), recipe.diffusion, data.num_classes,
                             dataclasses.asdict(recipe.data), how, replace=force)
    except FileExistsError:
        raise JobInputError("out", f"out: {out} appeared while training: remove it or pass --force") from None
    emit({"event": "done", "out": str(out), "seconds": round(time.perf_counter() - start, 3),
          "final_loss": final_loss})


def main(argv: list[str] | None = None) -> int:
    return run_job(argv, "usage: python -m dmd2_worker.train_teacher <resolved-teacher-recipe.json>",
                   lambda path: run(*read_recipe(path)))


if __name__ == "__main__":
    sys.exit(main())
