"""The models `dmd2 eval` samples from (docs/pipeline.md §4, "Samples").

A teacher folder samples with DDIM (eta 0, trailing timesteps), classifier-free guidance and, for a diffusers
folder whose scheduler config says clip_sample, each step's x0 clamped to clip_sample_range. A student is a
distillation run folder: its generator's weights from the newest complete checkpoint
(`checkpoints/step-XXXXXXXX/` with a manifest.json) on a copy of the run's teacher network, sampled with the
few-step generator loop at the training timesteps (when `steps` equals `generator.steps`) or at evenly spaced ones
from the conditioning timestep, clamped as in training when the recipe has generator.clip_sample.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors import SafetensorError

from ..checkpoint import EMA_FILE, read_json
from ..config import GeneratorConfig, lora_spec, parse_recipe
from ..diffusion import NoiseSchedule, generator_timesteps
from ..roles.common import load_network_state, x0_function
from ..sampling import ddim_sample, sample_generator
from ..teacher_training import is_diffusers_teacher_dir, load_network
from .spec import EvalInputError, StudentModel, TeacherModel

CHECKPOINT_NAME = re.compile(r"step-\d{8}")


class TeacherSampler:
    def __init__(self, net: torch.nn.Module, schedule: NoiseSchedule, guidance_scale: float,
                 clip_sample: float | None = None) -> None:
        self.net = net
        self.schedule = schedule
        self.guidance_scale = guidance_scale
        self.clip_sample = clip_sample  # the teacher folder's scheduler clip_sample_range, when it clips
        self.num_classes: int | None = net.num_classes
        self.image_shape = (net.in_channels, net.image_size, net.image_size)

    def sample(self, z: torch.Tensor, cond: torch.Tensor | None, steps: int,
               generator: torch.Generator) -> torch.Tensor:
        """DDIM is deterministic given `z`: `generator` is not drawn from."""
        return ddim_sample(self.net, z, cond, self.schedule, steps, self.guidance_scale, self.net.null_class,
                           clip_sample=self.clip_sample)


class StudentSampler:
    def __init__(self, net: torch.nn.Module, schedule: NoiseSchedule, generator_config: GeneratorConfig,
                 checkpoint: Path | None = None, weights: str | None = None) -> None:
        self.net = net
        self.schedule = schedule
        self.generator_config = generator_config
        self.num_classes: int | None = net.num_classes
        self.image_shape = (net.in_channels, net.image_size, net.image_size)
        self.checkpoint = checkpoint  # the checkpoint folder the weights came from
        self.weights = weights  # "ema" or "raw": which of its weights

    def timesteps(self, steps: int) -> list[int]:
        cfg = self.generator_config
        if steps == cfg.steps:
            return list(cfg.timesteps)
        return generator_timesteps(steps, cfg.conditioning_timestep)

    def sample(self, z: torch.Tensor, cond: torch.Tensor | None, steps: int,
               generator: torch.Generator) -> torch.Tensor:
        """The generator loop; draws one re-noise tensor per step after the first from `generator`."""
        G = x0_function(self.net, self.schedule, self.generator_config.clip_sample)
        return sample_generator(G, z, cond, self.timesteps(steps), self.schedule, generator)


Sampler = TeacherSampler | StudentSampler


def _load_network(directory: Path, key: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    try:
        net, config = load_network(directory, device)
    except (ValueError, FileNotFoundError) as e:
        raise EvalInputError(key, f"{key}: {e}") from None
    net.requires_grad_(False)
    return net.eval(), config


def load_teacher(model: TeacherModel, key: str, device: torch.device) -> TeacherSampler:
    net, config = _load_network(Path(model.path), f"{key}.path", device)
    schedule = NoiseSchedule(**config["diffusion"])
    if model.guidance_scale != 1.0 and (net.num_classes is None or net.null_class is None):
        raise EvalInputError(f"{key}.guidance_scale", f"{key}.guidance_scale: the teacher {model.path} has no null "
                             f"class, so classifier-free guidance is impossible: use 1")
    too_many = [s for s in model.steps if s > schedule.num_train_timesteps]
    if too_many:
        raise EvalInputError(f"{key}.steps", f"{key}.steps: DDIM steps {too_many} exceed the teacher's "
                             f"{schedule.num_train_timesteps} training timesteps")
    clip = None
    if is_diffusers_teacher_dir(Path(model.path)):  # sampled as diffusers' DDIM would: clip_sample as configured
        from ..teacher_folder import TeacherFolderError, clip_sample_range

        try:
            clip = clip_sample_range(Path(model.path))
        except TeacherFolderError as e:
            raise EvalInputError(f"{key}.path", f"{key}.path: {e}") from None
    return TeacherSampler(net, schedule, model.guidance_scale, clip)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder: `step-XXXXXXXX` (no `.tmp` suffix) holding a manifest.json."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir()
                      if p.is_dir() and CHECKPOINT_NAME.fullmatch(p.name) and (p / "manifest.json").is_file())
    return complete[-1] if complete else None


def _student_checkpoint(model: StudentModel, run_dir: Path, key: str) -> Path:
    """The checkpoint folder `model.checkpoint` names (relative to the run folder, or absolute), else the newest."""
    if model.checkpoint is None:
        checkpoint = newest_checkpoint(run_dir)
        if checkpoint is None:
            raise EvalInputError(f"{key}.run_dir", f"{key}.run_dir: {run_dir} has no complete checkpoint "
                                 f"(checkpoints/step-XXXXXXXX/ with a manifest.json): run dmd2 distill until it saves one")
        return checkpoint
    checkpoint = run_dir / model.checkpoint  # an absolute checkpoint path stays as it is
    if not (checkpoint / "manifest.json").is_file():
        raise EvalInputError(f"{key}.checkpoint", f"{key}.checkpoint: {checkpoint} is not a complete checkpoint "
                             f"folder (no manifest.json): name one of {run_dir / 'checkpoints'}")
    return checkpoint


def student_weights_file(checkpoint: Path, weights: str, key: str) -> Path:
    """The generator weights to load from a checkpoint: "ema" takes the average of the weights when the run kept one
    (generator.ema_decay > 0; what dmd2 sample uses too), else the raw weights; "raw" takes the raw weights."""
    ema = checkpoint / EMA_FILE
    raw = checkpoint / "generator.safetensors"
    if weights == "ema" and ema.is_file():
        return ema
    if not raw.is_file():
        raise EvalInputError(key, f"{key}: {checkpoint} has no generator.safetensors (a damaged checkpoint: "
                             f"pick another)")
    return raw


def load_student(model: StudentModel, key: str, device: torch.device) -> StudentSampler:
    run_dir = Path(model.run_dir)
    run_key = f"{key}.run_dir"
    recipe_file = run_dir / "recipe.resolved.json"
    if not recipe_file.is_file():
        raise EvalInputError(run_key, f"{run_key}: {run_dir} is not a dmd2 run folder (no recipe.resolved.json)")
    try:
        recipe = parse_recipe(read_json(recipe_file))
    except ValueError as e:  # RecipeError, or not JSON
        raise EvalInputError(run_key, f"{run_key}: {recipe_file}: {e}") from None
    checkpoint = _student_checkpoint(model, run_dir, key)
    weights = student_weights_file(checkpoint, model.weights, f"{key}.weights")
    teacher_dir = run_dir / "teacher" if recipe.teacher.source == "builtin" else Path(str(recipe.teacher.path))
    net, _ = _load_network(teacher_dir, run_key, device)
    try:
        spec = lora_spec(recipe)
        if spec is not None:  # a LoRA student: its checkpoint holds the adapters on the teacher's weights
            from ..lora import apply_lora

            apply_lora(net, spec, seed=recipe.seed)
        load_network_state(weights, net)
    except SafetensorError as e:  # a truncated or overwritten file: the checkpoint is damaged, not the recipe
        raise EvalInputError(f"{key}.checkpoint", f"{key}.checkpoint: {weights} is not a readable safetensors "
                             f"file ({e}): a damaged checkpoint; name another with checkpoint") from None
    except (ValueError, FileNotFoundError) as e:
        raise EvalInputError(run_key, f"{run_key}: {e}") from None
    sampler = StudentSampler(net, NoiseSchedule.from_config(recipe.diffusion), recipe.generator, checkpoint,
                             "ema" if weights.name == EMA_FILE else "raw")
    for steps in model.steps:
        try:
            sampler.timesteps(steps)
        except ValueError as e:
            raise EvalInputError(f"{key}.steps", f"{key}.steps: {e}") from None
    return sampler


def load_sampler(model: TeacherModel | StudentModel, index: int, device: torch.device) -> Sampler:
    key = f"models[{index}]"
    if isinstance(model, TeacherModel):
        return load_teacher(model, key, device)
    return load_student(model, key, device)
