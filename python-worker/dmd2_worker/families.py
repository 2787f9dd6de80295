"""The teacher families, read from families.json (docs/adapters.md, "Adding a family"): the one table both languages
read (src/families.ts is the TypeScript reader of the same file). Each family says which pipeline folders it reads
(model_index.json's `_class_name`), its backbone, the conditioning step tensors and their shapes, its text encoders
and unconditional convention, its latent space, how it is exported, its default LoRA targets and what `dmd2 plan`
reads to size it.

    fam = family("<name>"); fam.step_tensor_names; fam.pipeline_classes
    family_for_pipeline("<model_index _class_name>")   # None when no family reads it

The file is checked when first read: a malformed registry is one FamilyRegistryError line naming the file and key.
This module imports no torch, so the recipe checks can use it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

REGISTRY_FILE = Path(__file__).with_name("families.json")
FORMAT = "dmd2-families"
VERSION = 1

CONDITIONING_KINDS = ("class_label", "text")
PARAMETRISATIONS = ("ddpm", "flow")  # ddpm: epsilon / v / sample from the scheduler config; flow: velocity
UNCOND_KINDS = ("null_class", "empty_prompt", "zeros", "none")  # none: no unconditional input (guidance embedded or none)
CARDS = ("backbone_loop", "pipeline_call")
DTYPES = ("float32", "int64")
LAYOUTS = ("unet", "transformer")  # how `dmd2 plan` reads the latent shape and features from the backbone config


class FamilyRegistryError(ValueError):
    """families.json is malformed: one line naming the file, the key and what is wrong."""


@dataclass(frozen=True)
class StepTensor:
    name: str                     # the step tensor (docs/protocol.md §4)
    dtype: str                    # "float32" | "int64"
    shape: tuple[int | str, ...]  # "B", a whole number, or a name of the family's dims
    field: str | None             # the adapters.Conditioning field it fills (None: class labels)


@dataclass(frozen=True)
class Dim:
    """A step-tensor size read from the folder: `config` a key of the backbone's config.json (`default` when it is
    absent, minus `minus_times` x the `minus_config` key when set), `key` of the JSON file `file` (plus `plus`), or a
    fixed `value` (what the adapter pads to)."""
    config: str | None = None
    default: int | None = None
    minus_config: str | None = None
    minus_times: int = 0
    file: str | None = None
    key: str | None = None
    plus: int = 0
    value: int | None = None

    def from_config(self, cfg: Mapping[str, Any]) -> int | None:
        """The size from the backbone's config (None when this dim lives in another file or a key is missing)."""
        if self.config is None:
            return None
        value = cfg.get(self.config)
        value = self.default if value is None else value
        if not isinstance(value, int):
            return None
        if self.minus_config is not None:
            sub = cfg.get(self.minus_config)
            if not isinstance(sub, int):
                return None
            value -= self.minus_times * sub
        return value


@dataclass(frozen=True)
class TextEncoder:
    subfolder: str
    class_name: str
    tokenizer: str
    hidden_state: str   # "last" (after the final layer norm) | "penultimate"
    pooled: bool        # its pooled, projected output is the family's pooled embedding


@dataclass(frozen=True)
class Latent:
    subfolder: str
    class_name: str
    channels_key: str
    scaling_key: str
    shift_key: str | None


@dataclass(frozen=True)
class Export:
    pipeline: str       # the pipeline class of the exported folder's model_index.json
    scheduler: str      # the scheduler class written into scheduler/
    card: str           # "backbone_loop": the card samples with the backbone and the scheduler; "pipeline_call"
    lora_file: bool     # diffusers loads a LoRA file into this pipeline (`dmd2 export --lora`)
    pipeline_tag: str   # the Hub's pipeline_tag in the export's model card
    hub_tags: tuple[str, ...]  # the family's own tags in the export's model card (beside dmd2, distillation, ...)


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    short_title: str
    pipeline_classes: tuple[str, ...]
    folder_without_model_index: bool   # a folder with only <backbone>/config.json of the backbone class is this family
    backbone_subfolder: str
    backbone_class: str
    backbone_config_match: Mapping[str, Any]  # config keys that tell this family's backbone from another family's
    backbone_layout: str      # "unet" | "transformer" (src/plan/textPipeline.ts reads its config by it)
    backbone_packing: int     # latent pixels per token side the adapter packs before the backbone (1: none)
    parametrisation: str
    conditioning: str
    step_tensors: tuple[StepTensor, ...]
    dims: Mapping[str, Dim]
    text_encoders: tuple[TextEncoder, ...]
    uncond: str
    uncond_model_index_key: str | None
    latent: Latent | None
    export: Export
    lora_targets: tuple[str, ...]   # generator.lora.target_modules null: the entry's lora_targets, else the
                                    # registry's default_lora_targets (config.lora_spec looks it up by teacher.family)
    plan_frozen: tuple[tuple[str, str], ...]   # (subfolder, weight file stem) the generator's worker holds frozen
    plan_buffers: tuple[str, ...]              # backbone weight-file tensors that are buffers, not parameters
    adapter_module: str
    adapter_files: tuple[str, ...]
    tiny_builder: str

    @property
    def is_text(self) -> bool:
        return self.conditioning == "text"

    @property
    def step_tensor_names(self) -> list[str]:
        return [t.name for t in self.step_tensors]

    def matches_backbone(self, class_name: str, cfg: Mapping[str, Any]) -> bool:
        """Whether a backbone of class `class_name` with config `cfg` is this family's."""
        return class_name == self.backbone_class and all(cfg.get(k) == v for k, v in self.backbone_config_match.items())


@dataclass(frozen=True)
class Registry:
    families: Mapping[str, Family]
    default_lora_targets: tuple[str, ...]

    def family(self, name: str) -> Family:
        if name not in self.families:
            raise KeyError(f"no teacher family {name!r} (registered: {', '.join(self.families)})")
        return self.families[name]

    def for_pipeline(self, class_name: Any) -> Family | None:
        for fam in self.families.values():
            if class_name in fam.pipeline_classes:
                return fam
        return None

    def text_families(self) -> list[Family]:
        return [f for f in self.families.values() if f.is_text]

    def without_model_index(self) -> list[Family]:
        return [f for f in self.families.values() if f.folder_without_model_index]

    def for_backbone(self, class_name: str, cfg: Mapping[str, Any], text: bool | None = None) -> Family | None:
        """The family whose backbone this is (`text`: only text / only non-text families)."""
        for fam in self.families.values():
            if (text is None or fam.is_text == text) and fam.matches_backbone(class_name, cfg):
                return fam
        return None

    def pipeline_list(self, families: list[Family], sep: str = " or ") -> str:
        """"A or B": the pipeline classes of `families`, for messages."""
        return sep.join(p for f in families for p in f.pipeline_classes)


# --- reading and checking ----------------------------------------------------------------------------------------

class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> FamilyRegistryError:
        return FamilyRegistryError(f"{self.path}: {where}: {problem}")

    def get(self, obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...],
            optional: bool = False) -> Any:
        if key not in obj:
            if optional:
                return None
            raise self.fail(f"{where}.{key}", "missing")
        value = obj[key]
        if value is None and optional:
            return None
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise self.fail(f"{where}.{key}", f"expected {_kind_name(kind)}, got {json.dumps(value)}")
        return value

    def choice(self, obj: Mapping[str, Any], key: str, where: str, choices: tuple[str, ...]) -> str:
        value = self.get(obj, key, where, str)
        if value not in choices:
            raise self.fail(f"{where}.{key}", f"{value!r} is not one of {', '.join(choices)}")
        return value

    def strings(self, obj: Mapping[str, Any], key: str, where: str, allow_empty: bool = True) -> tuple[str, ...]:
        value = self.get(obj, key, where, list)
        if not all(isinstance(v, str) and v for v in value) or (not allow_empty and not value):
            raise self.fail(f"{where}.{key}", f"expected a {'non-empty ' if not allow_empty else ''}list of names, "
                                              f"got {json.dumps(value)}")
        return tuple(value)


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", int: "a whole number", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kind))


def _dim(r: _Reader, obj: Any, where: str) -> Dim:
    if not isinstance(obj, dict):
        raise r.fail(where, f"expected an object, got {json.dumps(obj)}")
    if "config" in obj:
        minus = r.get(obj, "minus", where, dict, optional=True)
        return Dim(config=r.get(obj, "config", where, str), default=r.get(obj, "default", where, int, optional=True),
                   minus_config=None if minus is None else r.get(minus, "config", f"{where}.minus", str),
                   minus_times=0 if minus is None else r.get(minus, "times", f"{where}.minus", int))
    if "file" in obj:
        return Dim(file=r.get(obj, "file", where, str), key=r.get(obj, "key", where, str),
                   plus=r.get(obj, "plus", where, int, optional=True) or 0)
    if "value" in obj:
        value = r.get(obj, "value", where, int)
        if value <= 0:
            raise r.fail(f"{where}.value", f"expected a positive whole number, got {value}")
        return Dim(value=value)
    raise r.fail(where, "needs config (a key of the backbone's config.json), file and key, or value")


def _family(r: _Reader, name: str, obj: Any, default_lora: tuple[str, ...]) -> Family:
    where = f"families.{name}"
    if not isinstance(obj, dict):
        raise r.fail(where, "expected an object")
    backbone = r.get(obj, "backbone", where, dict)
    dims = {k: _dim(r, v, f"{where}.dims.{k}") for k, v in r.get(obj, "dims", where, dict).items()}
    tensors = []
    for i, t in enumerate(r.get(obj, "step_tensors", where, list)):
        at = f"{where}.step_tensors[{i}]"
        if not isinstance(t, dict):
            raise r.fail(at, "expected an object")
        shape = r.get(t, "shape", at, list)
        for s in shape:
            if not (s == "B" or (isinstance(s, int) and not isinstance(s, bool) and s > 0) or s in dims):
                raise r.fail(f"{at}.shape", f"{json.dumps(s)} is neither B, a positive whole number nor one of "
                                            f"{where}.dims ({', '.join(dims) or 'none'})")
        if not shape or shape[0] != "B":
            raise r.fail(f"{at}.shape", "must start with B (step tensors are batch-major)")
        tensors.append(StepTensor(r.get(t, "name", at, str), r.choice(t, "dtype", at, DTYPES), tuple(shape),
                                  r.get(t, "field", at, str, optional=True)))
    encoders = []
    for i, e in enumerate(r.get(obj, "text_encoders", where, list)):
        at = f"{where}.text_encoders[{i}]"
        if not isinstance(e, dict):
            raise r.fail(at, "expected an object")
        encoders.append(TextEncoder(r.get(e, "subfolder", at, str), r.get(e, "class", at, str),
                                    r.get(e, "tokenizer", at, str), r.choice(e, "hidden_state", at, ("last", "penultimate")),
                                    bool(r.get(e, "pooled", at, bool, optional=True))))
    latent_obj = r.get(obj, "latent", where, dict, optional=True)
    latent = None
    if latent_obj is not None:
        at = f"{where}.latent"
        latent = Latent(r.get(latent_obj, "subfolder", at, str), r.get(latent_obj, "class", at, str),
                        r.get(latent_obj, "channels_key", at, str), r.get(latent_obj, "scaling_key", at, str),
                        r.get(latent_obj, "shift_key", at, str, optional=True))
    exp = r.get(obj, "export", where, dict)
    export = Export(r.get(exp, "pipeline", f"{where}.export", str), r.get(exp, "scheduler", f"{where}.export", str),
                    r.choice(exp, "card", f"{where}.export", CARDS), r.get(exp, "lora_file", f"{where}.export", bool),
                    r.get(exp, "pipeline_tag", f"{where}.export", str), r.strings(exp, "hub_tags", f"{where}.export"))
    plan = r.get(obj, "plan", where, dict)
    frozen = r.get(plan, "frozen", f"{where}.plan", list)
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in frozen):
        raise r.fail(f"{where}.plan.frozen", "expected a list of [subfolder, weight file stem] pairs")
    adapter = r.get(obj, "adapter", where, dict)
    conditioning = r.choice(obj, "conditioning", where, CONDITIONING_KINDS)
    fam = Family(
        name=name, title=r.get(obj, "title", where, str), short_title=r.get(obj, "short_title", where, str),
        pipeline_classes=r.strings(obj, "pipeline_classes", where, allow_empty=False),
        folder_without_model_index=r.get(obj, "folder_without_model_index", where, bool),
        backbone_subfolder=r.get(backbone, "subfolder", f"{where}.backbone", str),
        backbone_class=r.get(backbone, "class", f"{where}.backbone", str),
        backbone_config_match=dict(r.get(backbone, "config_match", f"{where}.backbone", dict)),
        backbone_layout="unet" if "layout" not in backbone else r.choice(backbone, "layout", f"{where}.backbone", LAYOUTS),
        backbone_packing=1 if "packing" not in backbone else r.get(backbone, "packing", f"{where}.backbone", int),
        parametrisation=r.choice(obj, "parametrisation", where, PARAMETRISATIONS),
        conditioning=conditioning, step_tensors=tuple(tensors), dims=dims, text_encoders=tuple(encoders),
        uncond=r.choice(obj, "uncond", where, UNCOND_KINDS),
        uncond_model_index_key=r.get(obj, "uncond_model_index_key", where, str, optional=True),
        latent=latent, export=export,
        lora_targets=(r.strings(obj, "lora_targets", where, allow_empty=False) if "lora_targets" in obj
                      else default_lora),
        plan_frozen=tuple((a, b) for a, b in frozen),
        plan_buffers=r.strings(plan, "buffers", f"{where}.plan") if "buffers" in plan else (),
        adapter_module=r.get(adapter, "python", f"{where}.adapter", str),
        adapter_files=r.strings(adapter, "files", f"{where}.adapter", allow_empty=False),
        tiny_builder=r.get(obj, "tiny_builder", where, str),
    )
    if fam.backbone_packing < 1:
        raise r.fail(f"{where}.backbone.packing", f"expected a positive whole number, got {fam.backbone_packing}")
    if fam.is_text and (not fam.text_encoders or fam.latent is None):
        raise r.fail(where, "a text family needs text_encoders and latent")
    if fam.is_text and not any(t.field == "encoder_hidden_states" for t in fam.step_tensors):
        raise r.fail(f"{where}.step_tensors", "a text family needs a tensor whose field is encoder_hidden_states")
    return fam


def load_registry(path: str | Path = REGISTRY_FILE) -> Registry:
    """Read and check a registry file (every problem is one FamilyRegistryError line naming the file and key)."""
    path = Path(path)
    r = _Reader(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FamilyRegistryError(f"{path}: cannot read the teacher family registry: {' '.join(str(e).split())}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise r.fail("format", f"expected format {FORMAT!r} version {VERSION}")
    default_lora = r.strings(raw, "default_lora_targets", "(top level)", allow_empty=False)
    fams = r.get(raw, "families", "(top level)", dict)
    if not fams:
        raise r.fail("families", "no family registered")
    families = {name: _family(r, name, obj, default_lora) for name, obj in fams.items()}
    seen: dict[str, str] = {}
    for fam in families.values():
        for p in fam.pipeline_classes:
            if p in seen:
                raise r.fail(f"families.{fam.name}.pipeline_classes", f"{p} is already read by {seen[p]}")
            seen[p] = fam.name
    return Registry(families, default_lora)


@lru_cache(maxsize=1)
def registry() -> Registry:
    """The package's registry (families.json beside this module), read and checked once."""
    return load_registry(REGISTRY_FILE)


def family(name: str) -> Family:
    return registry().family(name)


def family_for_pipeline(class_name: Any) -> Family | None:
    return registry().for_pipeline(class_name)


def text_families() -> list[Family]:
    return registry().text_families()


def text_pipelines_phrase() -> str:
    """"X or Y": the pipeline classes of the text-to-image families, for messages."""
    return registry().pipeline_list(text_families())
