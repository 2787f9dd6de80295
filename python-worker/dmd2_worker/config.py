"""Typed form of the *resolved* recipe (docs/recipe.md, "Resolved form") and its strict parser.

The CLI validates the YAML and fills in defaults; the worker receives the resolved object in `hello.recipe` and
parses it here, once, at the edge: unknown keys, missing keys and wrong JSON types are all errors, reported
together, each line starting with the key's path (`gan.generator_weight: expected number, got str`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, Union

# The seeds (docs/recipe.md, "Seeds") live with the schedule in step_plan.py.

SCHEMA_VERSION = 1


class RecipeError(ValueError):
    """The resolved recipe does not match the schema. `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class HeartbeatConfig:
    interval_s: float
    timeout_s: float


@dataclass
class GmmConfig:
    num_classes: int
    image_size: int
    std: float


@dataclass
class FolderConfig:
    path: str | None
    channels: int


@dataclass
class PromptsConfig:
    """`data.source: prompts` (text-to-image teachers, docs/adapters.md §6): the prompts file the generator draws
    from and the image folder of the GAN's real branch (absolute once resolved)."""
    file: str | None = None
    images: str | None = None


@dataclass
class DataConfig:
    source: Literal["gmm", "digits", "folder", "prompts"]
    gmm: GmmConfig
    folder: FolderConfig
    prompts: PromptsConfig = dataclasses.field(default_factory=PromptsConfig)  # absent in recipes from before it


@dataclass
class BuiltinTeacherConfig:
    channels: int
    train_steps: int
    batch_size: int
    lr: float
    label_dropout: float


@dataclass
class TeacherConfig:
    source: Literal["builtin", "diffusers"]
    builtin: BuiltinTeacherConfig
    path: str | None  # a diffusers teacher folder (docs/pipeline.md §2), absolute once resolved
    # derived by the CLI (src/recipe/conditioning.ts): builtin, unet2d or the text family (sd15, sdxl), and the
    # conditioning step tensors the step plan routes (step_plan.py); None in recipes resolved before them
    family: str | None = None
    conditioning: list[str] | None = None


@dataclass
class DiffusionConfig:
    num_train_timesteps: int
    beta_schedule: Literal["linear", "scaled_linear"]
    beta_start: float
    beta_end: float
    prediction_type: Literal["epsilon", "v_prediction", "sample"]


@dataclass
class LoraConfig:
    """generator.lora (docs/adapters.md §7): rank null = no LoRA, the whole network trains; alpha null = the rank;
    target_modules null = the teacher family's default (default_lora_targets below)."""
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None


@dataclass
class GeneratorConfig:
    steps: int
    conditioning_timestep: int
    timesteps: list[int]
    lr: float
    ema_decay: float  # > 0: keep an EMA of the weights, sample and evaluate with it (roles/generator.py)
    # train (DMD, GAN and the fake score) on the outputs of the last of the N steps only, the earlier ones run by
    # backward simulation without gradient; false: on the output of a step k drawn uniformly (DMD2's default)
    last_step_only: bool = False
    # back-propagate the generator's loss through the steps before k too (the backward simulation that made its
    # input), so that they learn what serves the trained output; false: DMD2's stop-gradient there
    backprop_through_chain: bool = False
    # clamp the generator's x0 output to [-1, 1], the range of pixel data (diffusers' clip_sample), in training
    # and sampling alike; false: unclamped (DMD2; what latent teachers need)
    clip_sample: bool = False
    # LoRA adapters on a frozen copy of the teacher instead of the whole network (lora.py)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)


@dataclass
class FakeScoreConfig:
    lr: float


@dataclass
class DmdConfig:
    weight: float
    real_guidance_scale: float
    min_t: float
    max_t: float


@dataclass
class TturConfig:
    ratio: int


@dataclass
class GanConfig:
    enabled: bool
    generator_weight: float
    discriminator_weight: float
    warmup_steps: int
    diffusion_gan: bool


@dataclass
class OptimConfig:
    betas: list[float]
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    # issue 23: "steps" (training steps, the authors' count) or "updates" (each optimizer's own); the schema's default
    warmup_unit: Literal["steps", "updates"] = "steps"


@dataclass
class TrainConfig:
    steps: int
    batch_size: int
    log_every: int
    checkpoint_every: int
    keep_last: int
    on_nonfinite: Literal["stop", "skip"]
    sample_every: int
    on_collapse: Literal["warn", "stop"] = "warn"  # issue 23: the coordinator's collapse alarms (src/run/alarms.ts)


@dataclass
class StageConfig:
    """A training stage (docs/recipe.md "Stages"): from step `from_step` on, the dotted keys of `set` take its values
    (only keys sent in the op arguments; the CLI checks which). step_plan.recipe_at applies them."""
    from_step: int
    set: dict[str, float | bool]


@dataclass
class SampleConfig:
    num: int
    seed: int


@dataclass
class WandbConfig:
    """logging.wandb: read by dmd2_worker.wandb_log only (the roles do not log)."""
    project: str | None = None
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] = "online"


@dataclass
class LoggingConfig:
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


@dataclass
class RestartConfig:
    max: int


@dataclass
class RolePlacement:
    """Where one role runs (docs/recipe.md "Placement"): one device per replica."""
    device: list[str]
    precision: Literal["fp32", "bf16"]
    gradient_checkpointing: bool
    replicas: int
    backend: Literal["gloo", "nccl"]
    strategy: Literal["replicate", "fsdp"]  # replicas: gradients all-reduced, or everything sharded (FSDP2)
    join: bool  # its workers are started on other hosts (`dmd2 worker --join`)


@dataclass
class JoinConfig:
    bind: str
    port: int
    timeout_s: float


@dataclass
class RolesConfig:
    teacher: RolePlacement
    generator: RolePlacement
    fake_score: RolePlacement  # the discriminator (a head on the fake score's network) follows it

    def of(self, role: str) -> RolePlacement:
        """The placement of `role` (the discriminator's is the fake score's)."""
        return getattr(self, "fake_score" if role == "discriminator" else role)


@dataclass
class Recipe:
    version: int
    name: str
    seed: int
    run_dir: str
    placement: Literal["per_role", "colocated"]
    python: str | None
    torch_threads: int
    transport: Literal["ipc", "tcp"]
    device: str
    precision: Literal["fp32", "bf16"]
    tf32: bool
    gradient_checkpointing: bool
    roles: RolesConfig
    heartbeat: HeartbeatConfig
    join: JoinConfig
    data: DataConfig
    teacher: TeacherConfig
    diffusion: DiffusionConfig
    generator: GeneratorConfig
    fake_score: FakeScoreConfig
    dmd: DmdConfig
    ttur: TturConfig
    gan: GanConfig
    optim: OptimConfig
    train: TrainConfig
    restart: RestartConfig
    sample: SampleConfig
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)  # absent from run folders older than it
    stages: list[StageConfig] = dataclasses.field(default_factory=list)  # issue 23; none in runs made before


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "boolean"
    if tp is int:
        return "integer"
    if tp is float:
        return "number"
    if tp is str:
        return "string"
    if dataclasses.is_dataclass(tp):
        return "object"
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}s"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return str(tp)


def _parse(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return the typed value (or None after recording a problem)."""
    got = "null" if value is None else type(value).__name__
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected object, got {got}")
            return None
        return _parse_dataclass(value, tp, path, problems)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            if value is None:
                problems.append(f"{path}: expected {_type_name(tp)}, got null")
                return None
            sub: list[str] = []
            parsed = _parse(value, inner[0], path, sub)
            if sub == [f"{path}: expected {_type_name(inner[0])}, got {got}"]:
                sub = [f"{path}: expected {_type_name(tp)}, got {got}"]  # name the whole union: "string or null"
            problems.extend(sub)
            return parsed
        raise TypeError(f"unsupported annotation {tp}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not isinstance(value, str) or value not in allowed:
            shown = repr(value) if isinstance(value, str) else got
            problems.append(f"{path}: expected one of {', '.join(map(repr, allowed))}, got {shown}")
            return None
        return value
    if origin is dict:  # a stage's `set`: dotted keys to JSON numbers or booleans (their ranges are the CLI's)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            problems.append(f"{path}: expected object, got {got}")
            return None
        bad = [k for k, v in value.items() if not isinstance(v, (bool, int, float))]
        for k in bad:
            problems.append(f"{path}.{k}: expected number or boolean, got {type(value[k]).__name__}")
        return None if bad else dict(value)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{path}: expected {_type_name(tp)}, got {got}")
            return None
        return [_parse(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected boolean, got {got}")
            return None
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected integer, got {got}")
            return None
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected number, got {got}")
            return None
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected string, got {got}")
            return None
        return value
    raise TypeError(f"unsupported annotation {tp}")


def _parse_dataclass(obj: dict, cls: type, path: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{path}." if path else ""
    for key in obj:
        if key not in hints:
            problems.append(f"{prefix}{key}: unknown key")
    values = {}
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    for name in names:
        if name not in obj and name in defaults:
            # a key added after this resolved recipe was written (an older run folder): what runs had before it
            values[name] = defaults[name]
            continue
        if name not in obj:
            problems.append(f"{prefix}{name}: missing key (expected {_type_name(hints[name])})")
            values[name] = None
            continue
        values[name] = _parse(obj[name], hints[name], f"{prefix}{name}", problems)
    return cls(**values)


def _check_data(data: DataConfig, problems: list[str]) -> None:
    """The data group's value rules, shared by both recipe kinds."""
    s = data.gmm.image_size
    if s < 4 or s % 4:
        problems.append(f"data.gmm.image_size: must be a multiple of 4 and >= 4, got {s}")
    if not 2 <= data.gmm.num_classes <= 10:  # the schema's range (src/recipe/schema.ts): a mixture has 2 or more
        problems.append(f"data.gmm.num_classes: must be in 2..10, got {data.gmm.num_classes}")
    if data.source == "folder" and not data.folder.path:
        problems.append("data.folder.path: required when data.source is 'folder'")
    if data.folder.channels not in (1, 3):
        problems.append(f"data.folder.channels: must be 1 or 3, got {data.folder.channels}")
    if data.source == "prompts" and not data.prompts.file:
        problems.append("data.prompts.file: required when data.source is 'prompts'")


def _check_values(r: Recipe, problems: list[str]) -> None:
    """The few value rules the worker's math relies on (the CLI checks all of them; this is a backstop)."""
    d = r.diffusion
    T = d.num_train_timesteps
    if T < 2:
        problems.append(f"diffusion.num_train_timesteps: must be >= 2, got {T}")
    if not (0 < d.beta_start < d.beta_end < 1):
        problems.append(f"diffusion.beta_start, beta_end: need 0 < beta_start < beta_end < 1, got {d.beta_start}, {d.beta_end}")
    g = r.generator
    if len(g.timesteps) != g.steps:
        problems.append(f"generator.timesteps: expected {g.steps} entries (generator.steps), got {len(g.timesteps)}")
    if any(not 0 <= t < T for t in g.timesteps):
        problems.append(f"generator.timesteps: every entry must be in [0, {T}), got {g.timesteps}")
    if any(a <= b for a, b in zip(g.timesteps, g.timesteps[1:])):
        problems.append(f"generator.timesteps: must be strictly decreasing, got {g.timesteps}")
    if g.timesteps and g.timesteps[0] != g.conditioning_timestep:
        problems.append(
            f"generator.timesteps: first entry {g.timesteps[0]} differs from generator.conditioning_timestep "
            f"{g.conditioning_timestep}"
        )
    if not (0 <= r.dmd.min_t < r.dmd.max_t <= 1):
        problems.append(f"dmd.min_t, dmd.max_t: need 0 <= min_t < max_t <= 1, got {r.dmd.min_t}, {r.dmd.max_t}")
    if len(r.optim.betas) != 2:
        problems.append(f"optim.betas: expected 2 numbers, got {len(r.optim.betas)}")
    _check_data(r.data, problems)
    if r.teacher.source == "diffusers" and not r.teacher.path:
        problems.append("teacher.path: required when teacher.source is 'diffusers'")
    if r.data.source == "prompts":
        if r.teacher.source != "diffusers":
            from .families import text_pipelines_phrase

            problems.append(f"data.source: prompts needs teacher.source 'diffusers' (a {text_pipelines_phrase()} folder)")
        if r.gan.enabled and not r.data.prompts.images:
            problems.append("data.prompts.images: required when gan.enabled is true (the GAN's real images), or set "
                            "gan.enabled: false")
    if r.ttur.ratio < 1:
        problems.append(f"ttur.ratio: must be >= 1, got {r.ttur.ratio}")
    if not 0 <= r.generator.ema_decay < 1:
        problems.append(f"generator.ema_decay: must be in [0, 1), got {r.generator.ema_decay}")
    problems += lora_problems(r.generator.lora, r.teacher.source, r.roles.generator.strategy)
    if r.generator.lora.rank is not None:
        try:
            lora_spec(r)  # the adapters' own checks (rank >= 1, alpha > 0, target names)
        except ValueError as e:
            problems.append(str(e))
    for name in ("teacher", "generator", "fake_score"):
        p = getattr(r.roles, name)
        if p.replicas < 1 or len(p.device) != p.replicas:
            problems.append(f"roles.{name}.device: expected one device per replica ({p.replicas}), got {p.device}")
        elif r.train.batch_size % p.replicas:
            problems.append(f"roles.{name}.replicas: {p.replicas} does not divide train.batch_size {r.train.batch_size}")


T = typing.TypeVar("T")


def _parse_strict(obj: Any, cls: type[T], check_values: Callable[[T, list[str]], None]) -> T:
    """Parse a resolved recipe of either kind: types first (all problems), then its schema version and value
    rules (all problems). Raises RecipeError listing every problem."""
    problems: list[str] = []
    if not isinstance(obj, dict):
        raise RecipeError([f"recipe: expected object, got {type(obj).__name__}"])
    r = _parse_dataclass(obj, cls, "", problems)
    if problems:
        raise RecipeError(problems)
    if r.version != SCHEMA_VERSION:
        problems.append(f"version: unsupported recipe schema version {r.version} (this worker reads {SCHEMA_VERSION})")
    check_values(r, problems)
    if problems:
        raise RecipeError(problems)
    return r


def parse_recipe(obj: Any) -> Recipe:
    """Parse the resolved recipe (a JSON object) strictly. Raises RecipeError listing every problem."""
    return _parse_strict(obj, Recipe, _check_values)


@dataclass
class TeacherModelConfig:
    block_out_channels: list[int]
    layers_per_block: int
    norm_num_groups: int


@dataclass
class TeacherTrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    ema_decay: float
    label_dropout: float
    log_every: int


@dataclass
class TeacherRecipe:
    """The resolved teacher-training recipe (docs/pipeline.md §3)."""
    version: int
    kind: Literal["teacher"]
    name: str
    seed: int
    out: str
    python: str | None
    torch_threads: int
    device: str
    data: DataConfig
    diffusion: DiffusionConfig
    model: TeacherModelConfig
    train: TeacherTrainConfig


def _check_teacher_values(r: TeacherRecipe, problems: list[str]) -> None:
    positive = {"model.layers_per_block": r.model.layers_per_block, "model.norm_num_groups": r.model.norm_num_groups,
                "train.steps": r.train.steps, "train.batch_size": r.train.batch_size,
                "train.log_every": r.train.log_every}
    problems += [f"{key}: must be >= 1, got {value}" for key, value in positive.items() if value < 1]
    if r.model.norm_num_groups >= 1 and (not r.model.block_out_channels or any(
            c < 1 or c % r.model.norm_num_groups for c in r.model.block_out_channels)):
        problems.append(f"model.block_out_channels: need at least one width, each a multiple of model.norm_num_groups "
                        f"({r.model.norm_num_groups}), got {r.model.block_out_channels}")
    if r.train.warmup_steps < 0:
        problems.append(f"train.warmup_steps: must be >= 0, got {r.train.warmup_steps}")
    if not 0 <= r.train.ema_decay < 1:
        problems.append(f"train.ema_decay: must be in [0, 1), got {r.train.ema_decay}")
    if not 0 <= r.train.label_dropout < 1:
        problems.append(f"train.label_dropout: must be in [0, 1), got {r.train.label_dropout}")
    if r.data.source == "prompts":
        problems.append("data.source: prompts has no images to train a teacher on (use gmm, digits or folder)")
    _check_data(r.data, problems)


def parse_teacher_recipe(obj: Any) -> TeacherRecipe:
    """Parse the resolved teacher recipe strictly. Raises RecipeError listing every problem."""
    return _parse_strict(obj, TeacherRecipe, _check_teacher_values)


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    """The JSON-able resolved form of `r` (parse_recipe(recipe_to_dict(r)) == r)."""
    return dataclasses.asdict(r)


def lora_problems(lora: LoraConfig, teacher_source: str, generator_strategy: str) -> list[str]:
    """The rules on generator.lora: the worker's backstop copy of src/recipe/resolve.ts loraProblems, the rule the
    CLI applies. test_recipe_schema.py keeps the two identical (the cases and messages come from the TypeScript
    side through tests/fixtures/recipe_schema.json)."""
    problems = []
    if lora.rank is None and (lora.alpha is not None or lora.target_modules is not None):
        problems.append("generator.lora.rank: required when generator.lora.alpha or target_modules is set (e.g. rank: 64)")
    if lora.rank is not None and teacher_source == "builtin":
        problems.append("generator.lora: LoRA adapts a diffusers UNet: set teacher.source: diffusers with a "
                        "UNet2DModel or Stable Diffusion folder, or drop generator.lora")
    if lora.rank is not None and generator_strategy == "fsdp":
        problems.append("generator.lora: LoRA students with roles.generator.strategy fsdp are not supported "
                        "yet; use strategy replicate (the adapters are small) or drop generator.lora")
    return problems


def lora_spec(recipe: Recipe):
    """The generator's LoraSpec (lora.py), or None when generator.lora.rank is null (the whole network trains)."""
    from .lora import LoraSpec  # imports torch only

    c = recipe.generator.lora
    if c.rank is None:
        if c.alpha is not None or c.target_modules is not None:
            raise ValueError(lora_problems(c, "diffusers", "replicate")[0])
        return None
    return LoraSpec(rank=c.rank, alpha=c.rank if c.alpha is None else c.alpha,
                    target_modules=default_lora_targets(recipe) if c.target_modules is None else c.target_modules)


def default_lora_targets(recipe: Recipe) -> list[str]:
    """What generator.lora.target_modules null adapts: the teacher family's lora_targets (families.json, by the
    resolved teacher.family), or the registry's default for a run resolved before that key (or the built-in)."""
    from .families import registry
    from .lora import DEFAULT_TARGET_MODULES

    fams = registry().families
    name = recipe.teacher.family
    return list(fams[name].lora_targets) if name in fams else list(DEFAULT_TARGET_MODULES)
