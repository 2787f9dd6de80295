"""The built-in teacher: a tiny UNet trained on the recipe's GMM data at set-up, cached on disk.

Cache (docs/protocol.md §5): `$DMD2_CACHE` (default `~/.cache/dmd2`)`/teachers/<key>/` with `config.json` and
`model.safetensors` (plus `train.json`, how it was trained), written to a temporary folder and renamed. `<key>`
is the sha256 of the teacher, data and diffusion config, the recipe seed and TEACHER_FORMAT, i.e. of everything
that determines the trained weights, so a cache hit returns exactly what training would produce.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import load_module, read_json, save_module, write_json
from .config import Recipe
from .step_plan import SALT_TEACHER_DATA, SALT_TEACHER_INIT, op_seed
from .data.gmm import GaussianMixture
from .diffusion import NoiseSchedule
from .models.tiny_unet import ARCH_NAME, TinyUNet, default_arch_config
from .optim import clip_grad_norm, warmup_cosine_lr

TEACHER_FORMAT = 1  # bump whenever a change here would change the trained weights
CONFIG_KEYS = {"arch", "arch_config", "diffusion", "num_classes", "image_shape"}
WARMUP_STEPS = 50
GRAD_CLIP = 1.0
X0_WEIGHT_CAP = 20.0


def cache_root() -> Path:
    return Path(os.environ.get("DMD2_CACHE") or Path.home() / ".cache" / "dmd2")


def teacher_config(recipe: Recipe) -> dict[str, Any]:
    """The `config.json` of the built-in teacher for this recipe (which must use GMM data)."""
    if recipe.data.source != "gmm":
        raise ValueError("teacher.source builtin trains on data.source gmm only; train a teacher with "
                         "dmd2 train-teacher and set teacher.source: diffusers")
    gmm = recipe.data.gmm
    return {
        "arch": ARCH_NAME,
        "arch_config": default_arch_config(
            channels=recipe.teacher.builtin.channels, image_size=gmm.image_size, num_classes=gmm.num_classes
        ),
        "diffusion": dataclasses.asdict(recipe.diffusion),
        "num_classes": gmm.num_classes,
        "image_shape": [1, gmm.image_size, gmm.image_size],
    }


def teacher_cache_key(recipe: Recipe) -> str:
    ident = {
        "format": TEACHER_FORMAT,
        "teacher": dataclasses.asdict(recipe.teacher),
        "data": dataclasses.asdict(recipe.data),
        "diffusion": dataclasses.asdict(recipe.diffusion),
        "seed": recipe.seed,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_network(config: dict[str, Any]) -> TinyUNet:
    if config.get("arch") != ARCH_NAME:
        raise ValueError(f"teacher config: unsupported arch {config.get('arch')!r} (this worker builds {ARCH_NAME!r})")
    return TinyUNet(config["arch_config"])


def loss_weights(schedule: NoiseSchedule) -> torch.Tensor:
    """Per-timestep weights of the teacher's denoising loss, float32 (T,), mean 1.

    For epsilon prediction the x0 error is the epsilon error times 1/sqrt(SNR) (~15x at t = 999 for the default
    schedule), so plain epsilon MSE leaves the high-noise end imprecise. The weight `1 + min(1/SNR, X0_WEIGHT_CAP)`
    moves part of the objective towards x0-space error there. v and x0 targets are weighted uniformly.
    """
    a = schedule.alpha_bar
    if schedule.prediction_type == "epsilon":
        w = 1.0 + ((1.0 - a) / a).clamp(max=X0_WEIGHT_CAP)
    else:
        w = torch.ones_like(a)
    return (w / w.mean()).to(torch.float32)


def weighted_denoising_loss(net, x0, t, noise, labels, schedule: NoiseSchedule, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of `weights[t]` times the per-sample MSE between `net(x_t, t, labels)` and the target."""
    x_t = schedule.add_noise(x0, t, noise)
    target = schedule.denoising_target(x0, noise, t)
    per_sample = (net(x_t, t, labels) - target).pow(2).flatten(1).mean(1)
    return (per_sample * weights[t]).mean()


def train_teacher(recipe: Recipe, log: Callable[[str], None] | None = None) -> tuple[TinyUNet, dict[str, Any]]:
    """Train the built-in teacher on the CPU; deterministic given the recipe (seed included)."""
    cfg = recipe.teacher.builtin
    config = teacher_config(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(op_seed(recipe.seed, 0, SALT_TEACHER_INIT))
        net = build_network(config)
    data = GaussianMixture.from_config(recipe.data.gmm)
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    T = schedule.num_train_timesteps
    null = data.num_classes
    weights = loss_weights(schedule)
    g = torch.Generator().manual_seed(op_seed(recipe.seed, 0, SALT_TEACHER_DATA))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0, fused=True)
    net.train()
    start = time.perf_counter()
    ema = None
    for step in range(cfg.train_steps):
        x0, labels = data.sample(cfg.batch_size, g)
        drop = torch.rand(cfg.batch_size, generator=g) < cfg.label_dropout
        labels = torch.where(drop, torch.full_like(labels, null), labels)
        t = torch.randint(0, T, (cfg.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        loss = weighted_denoising_loss(net, x0, t, noise, labels, schedule, weights)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine_lr(cfg.lr, step, cfg.train_steps, WARMUP_STEPS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(net.parameters(), GRAD_CLIP)
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if log is not None and (step + 1) % 500 == 0:
            log(f"teacher step {step + 1}/{cfg.train_steps} loss {ema:.4f}")
    net.eval()
    info = {"seconds": time.perf_counter() - start, "final_loss_ema": ema, "steps": cfg.train_steps,
            "torch": torch.__version__, "format": TEACHER_FORMAT}
    return net, info


def write_teacher_dir(directory: Path, net: torch.nn.Module, config: dict[str, Any], info: dict[str, Any] | None = None) -> Path:
    """Write config.json + model.safetensors (+ train.json) into a temporary sibling folder, then rename it to
    `directory`. If another process got there first, keep theirs."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write_json(tmp / "config.json", config)
        save_module(tmp / "model.safetensors", net)
        if info is not None:
            write_json(tmp / "train.json", info)
        try:
            os.rename(tmp, directory)
        except OSError:
            if not is_teacher_dir(directory):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def is_teacher_dir(directory: Path) -> bool:
    return (Path(directory) / "config.json").is_file() and (Path(directory) / "model.safetensors").is_file()


def is_diffusers_teacher_dir(directory: Path) -> bool:
    """Whether `directory` is meant as a diffusers teacher folder (docs/pipeline.md §2): it has model_index.json or
    unet/, the CLI's rule too."""
    return (Path(directory) / "model_index.json").is_file() or (Path(directory) / "unet").is_dir()


def ensure_cached_teacher(recipe: Recipe, log: Callable[[str], None] | None = None) -> Path:
    """The cached teacher folder for this recipe, training it first on a miss."""
    if recipe.teacher.source != "builtin":
        raise ValueError(f"teacher.source {recipe.teacher.source!r} is not supported (only 'builtin')")
    directory = cache_root() / "teachers" / teacher_cache_key(recipe)
    if is_teacher_dir(directory):
        return directory
    net, info = train_teacher(recipe, log)
    return write_teacher_dir(directory, net, teacher_config(recipe), info)


def install_teacher(recipe: Recipe, run_dir: Path, log: Callable[[str], None] | None = None) -> Path:
    """`<run_dir>/teacher/`: kept if it is already there (a resumed run) and fits the recipe, else copied from the
    cache (trained on a miss)."""
    target = Path(run_dir) / "teacher"
    expected = teacher_config(recipe)
    if is_teacher_dir(target):
        found = read_json(target / "config.json")
        if found != json.loads(json.dumps(expected)):
            raise ValueError(f"{target} holds a teacher for another recipe; remove it or use another run_dir")
        return target
    source = ensure_cached_teacher(recipe, log)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".teacher.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(source, tmp)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_teacher_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if not is_teacher_dir(directory):
        raise ValueError(f"{directory} is not a teacher folder (a diffusers folder has model_index.json or unet/, "
                         f"a built-in one config.json and model.safetensors)")
    config = read_json(directory / "config.json")
    missing = CONFIG_KEYS - set(config)
    if missing:
        raise ValueError(f"{directory / 'config.json'}: missing keys {sorted(missing)}")
    return config


def load_network(directory: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The teacher network in `directory` (float32, on `device`) and its config dict, which has at least
    "diffusion" (dataclasses.asdict(DiffusionConfig) form), "num_classes" and "image_shape" [C, H, W].

    A diffusers teacher folder (model_index.json or unet/, docs/pipeline.md §2) gives a UNet2DNet; a built-in teacher
    folder (config.json + model.safetensors) gives a TinyUNet and its config.json."""
    directory = Path(directory)
    if is_diffusers_teacher_dir(directory):
        from .teacher_folder import load_teacher_folder  # imports diffusers (seconds): only for such a folder
        return load_teacher_folder(directory, device)
    config = load_teacher_config(directory)
    net = build_network(config)
    load_module(directory / "model.safetensors", net)
    return net.to(device=device, dtype=torch.float32), config
