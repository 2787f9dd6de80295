"""The teacher family registry's Python reader (families.py; docs/adapters.md "Adding a family"): the shipped file
loads, a malformed one is one FamilyRegistryError line naming the file and the key, every text family's adapter
module registers its adapter, and the registry's accessors pick families by pipeline class and by backbone."""
from __future__ import annotations

import copy
import json

import pytest

from dmd2_worker.families import REGISTRY_FILE, FamilyRegistryError, load_registry, registry

ORIGINAL = json.loads(REGISTRY_FILE.read_text(encoding="utf-8"))
FIRST = next(iter(ORIGINAL["families"]))


def problem_of(tmp_path, edit) -> str:
    raw = copy.deepcopy(ORIGINAL)
    edit(raw)
    f = tmp_path / "families.json"
    f.write_text(json.dumps(raw))
    with pytest.raises(FamilyRegistryError) as e:
        load_registry(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: ") and "\n" not in msg
    return msg[len(str(f)) + 2:]


def test_the_shipped_registry_loads():
    reg = registry()
    assert reg.families and all(t.shape[0] == "B" for f in reg.families.values() for t in f.step_tensors)
    for fam in reg.families.values():
        for p in fam.pipeline_classes:
            assert reg.for_pipeline(p) is fam
    assert reg.for_pipeline("NoSuchPipeline") is None


def test_a_malformed_registry_is_one_line_naming_the_key(tmp_path):
    fam = lambda r: r["families"][FIRST]  # noqa: E731
    assert problem_of(tmp_path, lambda r: r.update(version=9)) == "format: expected format 'dmd2-families' version 1"
    assert problem_of(tmp_path, lambda r: fam(r).pop("pipeline_classes")) == f"families.{FIRST}.pipeline_classes: missing"
    assert problem_of(tmp_path, lambda r: fam(r).update(conditioning="audio")) == (
        f"families.{FIRST}.conditioning: 'audio' is not one of class_label, text")
    assert problem_of(tmp_path, lambda r: fam(r)["step_tensors"][0].update(shape=[3])) == (
        f"families.{FIRST}.step_tensors[0].shape: must start with B (step tensors are batch-major)")
    assert problem_of(tmp_path, lambda r: fam(r).update(folder_without_model_index="yes")).startswith(
        f"families.{FIRST}.folder_without_model_index: expected true or false")
    other = list(ORIGINAL["families"])[1]
    assert "is already read by" in problem_of(
        tmp_path, lambda r: r["families"][other].update(pipeline_classes=fam(r)["pipeline_classes"]))
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(FamilyRegistryError, match="cannot read the teacher family registry"):
        load_registry(bad)


def test_the_transformer_fields_are_checked(tmp_path):
    """backbone.layout / packing, plan.buffers and the dims' plus / value (the flow-matching families use them)."""
    fam = lambda r: r["families"][FIRST]  # noqa: E731
    dims = lambda r: next(f for f in r["families"].values() if f["dims"])["dims"]  # noqa: E731
    with_dims = next(n for n, f in ORIGINAL["families"].items() if f["dims"])
    assert problem_of(tmp_path, lambda r: fam(r)["backbone"].update(layout="conv")) == (
        f"families.{FIRST}.backbone.layout: 'conv' is not one of unet, transformer")
    assert problem_of(tmp_path, lambda r: fam(r)["backbone"].update(packing=0)) == (
        f"families.{FIRST}.backbone.packing: expected a positive whole number, got 0")
    assert problem_of(tmp_path, lambda r: fam(r)["plan"].update(buffers=[3])).startswith(
        f"families.{FIRST}.plan.buffers: expected a list of names")
    assert problem_of(tmp_path, lambda r: dims(r).update(seq_len={"value": 0})) == (
        f"families.{with_dims}.dims.seq_len.value: expected a positive whole number, got 0")
    assert problem_of(tmp_path, lambda r: dims(r).update(seq_len={"file": "a.json", "key": "n", "plus": "x"})) == (
        f'families.{with_dims}.dims.seq_len.plus: expected a whole number, got "x"')
    reg = registry()
    flow = [f for f in reg.families.values() if f.parametrisation == "flow"]
    assert flow and all(f.backbone_layout == "transformer" for f in flow)
    assert all(f.backbone_layout == "unet" and f.backbone_packing == 1 for f in reg.families.values()
               if f.parametrisation == "ddpm")


def test_every_text_family_has_its_adapter():
    from dmd2_worker.adapters.registry import families

    adapters = families()
    for fam in registry().text_families():
        assert adapters[fam.name].pipeline_classes == fam.pipeline_classes
        assert adapters[fam.name].__module__ == fam.adapter_module


def test_backbone_dims_come_from_the_config():
    for fam in registry().text_families():
        for name, dim in fam.dims.items():
            if dim.config is not None:
                cfg = {dim.config: 100, **({dim.minus_config: 5} if dim.minus_config else {})}
                assert dim.from_config(cfg) == 100 - dim.minus_times * 5, name
                assert dim.from_config({}) == dim.default if dim.minus_config is None else dim.from_config({}) is None


def test_each_adapter_loads_the_components_its_entry_names():
    import importlib

    for fam in registry().text_families():
        module = importlib.import_module(fam.adapter_module)
        subs = {sub for sub, _, _ in module.COMPONENTS}
        named = {fam.backbone_subfolder, fam.latent.subfolder, "scheduler",
                 *(e.subfolder for e in fam.text_encoders), *(e.tokenizer for e in fam.text_encoders)}
        assert subs == named, (fam.name, subs ^ named)
        assert {sub for sub, _ in fam.plan_frozen} == {fam.latent.subfolder, *(e.subfolder for e in fam.text_encoders)}
