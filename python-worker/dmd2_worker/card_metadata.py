"""The Hugging Face Hub metadata of an export's model card: the YAML front matter of README.md that the Hub reads
(https://huggingface.co/docs/hub/model-cards#model-card-metadata), written with huggingface_hub's own ModelCardData
so that the Hub's parser reads back what was meant.

- `base_model`: the teacher's Hub id when it is known: a teacher loaded from the Hugging Face cache
  (`.../models--org--name/snapshots/<commit>`), else the `_name_or_path` of its model_index.json when that is an
  `org/name` id; otherwise left out (a local folder has no Hub id to name).
- `license` (with `license_name` / `license_link` for `other`): from the teacher's own card (its README.md), whose
  license applies to the student too; left out when that card does not say.
- `library_name: diffusers`, `pipeline_tag` from the family, tags `dmd2`, `distillation`, `<n>-step` (and `lora`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .families import registry

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)/snapshots/[^/]+/?$")


def teacher_hub_id(teacher_dir: Path) -> str | None:
    """The teacher's Hub id, when its folder says it (see the module docstring), else None."""
    m = _CACHE_SNAPSHOT.search(Path(teacher_dir).as_posix())
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    try:
        name = json.loads((Path(teacher_dir) / "model_index.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and _HUB_ID.match(name) and not Path(name).exists() else None


def teacher_card_license(teacher_readme: Path) -> dict[str, str]:
    """`license` (and `license_name`, `license_link`) of the teacher's card front matter; {} when it says none."""
    if not teacher_readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(teacher_readme).data.to_dict()
    except Exception:  # a card without (valid) front matter says nothing about its license
        return {}
    return {k: str(data[k]) for k in ("license", "license_name", "license_link") if data.get(k)}


def card_metadata(family: str, steps: int, lora: bool, teacher_dir: Path, teacher_readme: Path | None) -> dict[str, Any]:
    """The front matter's fields, in the order written."""
    meta: dict[str, Any] = {}
    base = teacher_hub_id(teacher_dir)
    if base is not None:
        meta["base_model"] = base
        meta["base_model_relation"] = "adapter" if lora else "finetune"
    meta["library_name"] = "diffusers"
    meta["pipeline_tag"] = registry().family(family).export.pipeline_tag  # the family registry (families.json)
    if teacher_readme is not None:
        meta.update(teacher_card_license(teacher_readme))
    meta["tags"] = ["dmd2", "distillation", f"{steps}-step", *registry().family(family).export.hub_tags, *(["lora"] if lora else [])]
    return meta


def front_matter(meta: dict[str, Any]) -> str:
    """`---\\n<yaml>\\n---\\n`, the YAML written by huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    return f"---\n{ModelCardData(**meta).to_yaml()}\n---\n"
