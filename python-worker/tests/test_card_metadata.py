"""The Hub metadata of an export's model card (card_metadata.py): huggingface_hub's own ModelCard parser reads the
front matter `dmd2 export` writes: base_model from a teacher in the Hugging Face cache (or its model_index.json's
`_name_or_path`), the teacher card's license, library_name diffusers, the pipeline tag and the dmd2 tags; the card's
text (the sampling instructions) follows it unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from dmd2_worker.card_metadata import card_metadata, front_matter, teacher_hub_id
from dmd2_worker.teacher_training import load_network
from export_runs import perturb
from test_export_card import export_run, unet_teacher

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_an_exported_card_parses_with_the_hub_metadata(tmp_path):
    # a teacher where a Hub download puts it: <cache>/models--org--name/snapshots/<commit>/
    snapshots = tmp_path / "hub" / "models--some-org--tiny-ddpm" / "snapshots"
    snapshots.mkdir(parents=True)
    teacher = unet_teacher(snapshots, "0123abcd", None)
    (teacher / "README.md").write_text("---\nlicense: mit\ntags:\n- ddpm\n---\n# tiny DDPM\n")
    student, _ = load_network(teacher)
    perturb(student, 0.03, seed=2)
    out, card_text = export_run(tmp_path, "hub", student, teacher__source="diffusers", teacher__path=str(teacher),
                                generator__steps=2, generator__timesteps=[999, 499], generator__conditioning_timestep=999)
    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "some-org/tiny-ddpm"
    assert data["library_name"] == "diffusers"
    assert data["license"] == "mit"
    assert data["pipeline_tag"] == "unconditional-image-generation"
    assert data["tags"] == ["dmd2", "distillation", "2-step"]
    # the existing instructions follow the front matter
    assert card.text.startswith("# ") and "scheduler.set_timesteps(timesteps=[999, 499])" in card.text
    assert card_text.startswith("---\n")


def test_metadata_without_a_hub_id_or_license_and_for_lora(tmp_path):
    local = tmp_path / "my-teacher"
    local.mkdir()
    assert teacher_hub_id(local) is None
    meta = card_metadata("sdxl", 4, True, local, local / "README.md")
    assert "base_model" not in meta and "license" not in meta
    parsed = ModelCard(front_matter(meta) + "# x\n").data.to_dict()
    assert parsed == {"library_name": "diffusers", "pipeline_tag": "text-to-image",
                      "tags": ["dmd2", "distillation", "4-step", "stable-diffusion-xl", "lora"]}
    # a pipeline saved from the Hub says where it came from in model_index.json
    (local / "model_index.json").write_text(json.dumps({"_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0"}))
    (local / "README.md").write_text("---\nlicense: other\nlicense_name: openrail++\nlicense_link: LICENSE.md\n---\n")
    meta = card_metadata("sdxl", 4, True, local, local / "README.md")
    parsed = ModelCard(front_matter(meta) + "# x\n").data.to_dict()
    assert parsed["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert parsed["base_model_relation"] == "adapter"
    assert (parsed["license"], parsed["license_name"], parsed["license_link"]) == ("other", "openrail++", "LICENSE.md")
