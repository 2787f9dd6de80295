"""dmd2_worker/lora.py: LoRA students on tiny diffusers UNets built from configs (a UNet2DConditionModel as in the
SD-1.5-like test pipeline, and a UNet2DModel with attention), and the export into stock diffusers pipelines.

Memory (printed by test_only_lora_parameters_train): at rank 4 on the tiny SD UNet's attention projections and
ResNet conv1, the LoRA parameters are a few percent of the UNet's, and AdamW keeps its two moments for those only;
test_default_spec_on_the_sd15_architecture does the same count on SD 1.5's real UNet shape (meta tensors).
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel, UNet2DModel
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from torch import nn

from dmd2_worker.checkpoint import load_tensors, save_tensors
from dmd2_worker.lora import (DEFAULT_TARGET_MODULES, LORA_WEIGHT_NAME, LoraSpec, apply_lora, expected_lora_parameters,
                              export_lora, has_lora, load_lora_state, lora_state, merge_lora, trainable_parameters)
from dmd2_worker.models.unet2d import UNet2DNet
from pipelines import build_sd15, build_sdxl, tiny_unet

COND_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1"]
PLAIN_TARGETS = ["to_q", "to_v", "conv2", "time_emb_proj"]


class CondNet(nn.Module):
    """The least a text-to-image network needs for lora.py: the diffusers UNet as `.unet`."""

    def __init__(self, unet: nn.Module, extra: dict | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.extra = extra or {}

    def forward(self, x, t, ehs):
        return self.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=self.extra or None, return_dict=False)[0]


def plain_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def cond_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return tiny_unet(32)


def make(kind: str):
    """(net, inputs, targets): a fresh tiny network of `kind` and a fixed batch for it."""
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([10, 500])
    if kind == "cond":
        inputs = (torch.randn(2, 4, 8, 8, generator=g), t, torch.randn(2, 5, 32, generator=g))
        return CondNet(cond_unet()), inputs, COND_TARGETS
    inputs = (torch.randn(2, 1, 8, 8, generator=g), t)
    return UNet2DNet(plain_unet(), None, None), inputs, PLAIN_TARGETS


def train_step(net: nn.Module, inputs: tuple, lr: float = 1e-2) -> torch.optim.AdamW:
    """One AdamW step on the trainable parameters towards a fixed random target."""
    opt = torch.optim.AdamW(trainable_parameters(net), lr=lr, weight_decay=0.01)
    out = net(*inputs)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    torch.nn.functional.mse_loss(out, target).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def base_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every non-LoRA tensor of `net`, under the plain UNet's keys."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in net.state_dict().items()
            if ".lora_A." not in k and ".lora_B." not in k}


def matching(unet: nn.Module, targets: list[str]) -> dict[str, nn.Module]:
    return {n: m for n, m in unet.named_modules()
            if n and any(n == s or n.endswith("." + s) for s in targets)}


@pytest.mark.parametrize("kind", ["cond", "plain"])
def test_only_lora_parameters_train_and_their_count_is_rank_times_in_plus_out(kind):
    net, _, targets = make(kind)
    full = sum(p.numel() for p in net.parameters())
    targeted = matching(net.unet, targets)
    spec = LoraSpec(rank=4, alpha=8, target_modules=targets)
    expected = expected_lora_parameters(net.unet, spec)
    net.register_parameter("outside_the_unet", nn.Parameter(torch.ones(3)))  # frozen too
    apply_lora(net, spec)
    assert has_lora(net)
    assert not net.outside_the_unet.requires_grad
    full += 3
    trainable = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    # every targeted Linear / Conv2d got an adapter, nothing else did
    layers = {n: m for n, m in net.unet.named_modules() if isinstance(m, LoraLayer)}
    assert set(layers) == set(targeted)
    for name, layer in layers.items():
        base = targeted[name]
        if isinstance(base, nn.Linear):
            want = 4 * (base.in_features + base.out_features)
        else:
            kh, kw = base.kernel_size
            want = 4 * (base.in_channels * kh * kw + base.out_channels)
        got = layer.lora_A["default"].weight.numel() + layer.lora_B["default"].weight.numel()
        assert got == want, name
        assert layer.scaling["default"] == 2.0
    count = sum(p.numel() for p in trainable.values())
    assert count == expected == sum(
        4 * ((m.in_features + m.out_features) if isinstance(m, nn.Linear)
             else m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels) for m in targeted.values())
    assert sum(p.numel() for p in net.parameters()) == full + count
    assert count < full / 10
    print(f"\n[lora memory] tiny {type(net.unet).__name__}: {full:,} UNet parameters, {count:,} LoRA parameters "
          f"(rank 4 on {targets}) = {100 * count / full:.2f}%; AdamW moments {2 * count:,} floats instead of "
          f"{2 * full:,}")


@pytest.mark.parametrize("kind", ["cond", "plain"])
def test_output_at_init_equals_the_base_models(kind):
    net, inputs, targets = make(kind)
    with torch.no_grad():
        before = net(*inputs)
        apply_lora(net, LoraSpec(rank=4, alpha=8, target_modules=targets))
        after = net(*inputs)
    assert torch.equal(before, after)
    # the adapters are really in the forward pass: a random nonzero B moves the output (a constant one need not:
    # on time_emb_proj it shifts every channel alike, which the next GroupNorm removes)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for layer in (m for m in net.unet.modules() if isinstance(m, LoraLayer)):
            w = layer.lora_B["default"].weight
            w.copy_(0.1 * torch.randn(w.shape, generator=g))
        assert not torch.allclose(net(*inputs), before, atol=1e-4)


@pytest.mark.parametrize("kind", ["cond", "plain"])
def test_one_adamw_step_changes_the_output_and_leaves_the_base_weights_bit_identical(kind):
    net, inputs, targets = make(kind)
    apply_lora(net, LoraSpec(rank=4, alpha=8, target_modules=targets))
    base = base_state(net)
    with torch.no_grad():
        before = net(*inputs)
    opt = train_step(net, inputs)
    with torch.no_grad():
        after = net(*inputs)
    assert (after - before).abs().max() > 1e-3
    now = base_state(net)
    assert set(now) == set(base)
    assert all(torch.equal(now[k], base[k]) for k in base)
    assert all(p.grad is None for p in net.parameters())
    # the optimizer holds moments for the adapters only
    lora_params = {id(p) for n, p in net.named_parameters() if ".lora_" in n}
    assert set(map(id, opt.state)) == lora_params
    assert all(p.requires_grad == (id(p) in lora_params) for p in net.parameters())


@pytest.mark.parametrize("kind", ["cond", "plain"])
def test_gradient_checkpointing_still_trains_the_adapters(kind):
    """The UNet's input (noise) does not require grad and the base weights are frozen: a checkpointing scheme that
    needs a grad-requiring input would leave the adapters inside checkpointed blocks without gradients."""
    net, inputs, targets = make(kind)
    ref, _, _ = make(kind)
    spec = LoraSpec(rank=4, alpha=8, target_modules=targets)
    apply_lora(net, spec)
    apply_lora(ref, spec)
    net.unet.enable_gradient_checkpointing()
    net.train(), ref.train()
    for n in (net, ref):
        n(*inputs).square().mean().backward()
    grads = {k: p.grad for k, p in net.named_parameters() if p.requires_grad}
    want = {k: p.grad for k, p in ref.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert all(torch.count_nonzero(g) > 0 for k, g in grads.items() if ".lora_B." in k)
    for k in want:
        torch.testing.assert_close(grads[k], want[k], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["cond", "plain"])
def test_lora_state_round_trips_into_a_fresh_net(kind, tmp_path):
    net, inputs, targets = make(kind)
    spec = LoraSpec(rank=4, alpha=8, target_modules=targets)
    apply_lora(net, spec)
    train_step(net, inputs)
    state = lora_state(net)
    assert all(".lora_A.default." in k or ".lora_B.default." in k for k in state)
    assert all(k.startswith("unet.") for k in state)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in trainable_parameters(net))
    path = save_tensors(tmp_path / "generator.safetensors", state)

    fresh, _, _ = make(kind)
    apply_lora(fresh, spec, seed=5)  # other A: loading must overwrite it
    with torch.no_grad():
        assert not torch.allclose(fresh(*inputs), net(*inputs), atol=1e-4)
    assert sorted(lora_state(fresh)) == sorted(state)  # the same keys in another network instance
    load_lora_state(fresh, load_tensors(path), where=str(path))
    with torch.no_grad():
        assert torch.equal(fresh(*inputs), net(*inputs))
    # the trained net's parameters keep their identity (an optimizer over them stays valid)
    params = trainable_parameters(fresh)
    load_lora_state(fresh, state)
    assert all(a is b for a, b in zip(params, trainable_parameters(fresh)))


def test_apply_lora_is_deterministic_and_leaves_the_global_random_state_alone():
    a, _, targets = make("cond")
    b, _, _ = make("cond")
    c, _, _ = make("cond")
    rng = torch.get_rng_state()
    spec = LoraSpec(rank=4, alpha=4, target_modules=targets)
    apply_lora(a, spec)
    assert torch.equal(torch.get_rng_state(), rng)
    apply_lora(b, spec)
    apply_lora(c, spec, seed=1)
    sa, sb, sc = lora_state(a), lora_state(b), lora_state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    a_keys = [k for k in sa if ".lora_A." in k]
    assert all(not torch.equal(sa[k], sc[k]) for k in a_keys)
    assert all(torch.count_nonzero(sa[k]) == 0 for k in sa if ".lora_B." in k)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-pipelines")
    return {"sd15": build_sd15(root / "sd15", root / "work15"), "sdxl": build_sdxl(root / "sdxl", root / "workxl")}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_export_loads_into_the_stock_pipeline_and_gives_the_trained_output(family, folders, tmp_path):
    folder = folders[family]
    g = torch.Generator().manual_seed(3)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    extra = None
    width = unet.config.cross_attention_dim
    if family == "sdxl":
        extra = {"text_embeds": torch.randn(2, 24, generator=g), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]] * 2)}
    inputs = (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([999, 250]), torch.randn(2, 7, width, generator=g))
    net = CondNet(unet, extra)
    # alpha != rank (scale 2), linear and conv targets, proj_in before to_q in the key order
    spec = LoraSpec(rank=4, alpha=8, target_modules=["proj_in", "to_q", "to_k", "to_v", "to_out.0", "conv1"])
    apply_lora(net, spec)
    train_step(net, inputs)
    with torch.no_grad():
        trained = net(*inputs)

    path = export_lora(net, tmp_path / "lora" / LORA_WEIGHT_NAME, spec)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert '"rank": 4' in f.metadata()["dmd2.lora"]
    layers = [n for n, m in net.unet.named_modules() if isinstance(m, LoraLayer)]
    assert sorted(keys) == sorted(f"unet.{n}.lora_{ab}.weight" for n in layers for ab in "AB")

    pipeline_class = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    pipe = pipeline_class.from_pretrained(folder)
    stock = CondNet(pipe.unet, extra)
    with torch.no_grad():
        base = stock(*inputs)
    assert (trained - base).abs().max() > 1e-3  # the export has something to show
    pipe.load_lora_weights(path.parent, weight_name=path.name)
    loaded = {n for n, m in pipe.unet.named_modules() if isinstance(m, LoraLayer)}
    assert loaded == set(layers)
    with torch.no_grad():
        got = stock(*inputs)
    torch.testing.assert_close(got, trained, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["cond", "plain"])
def test_merge_lora_returns_a_plain_unet_with_the_lora_models_output(kind, tmp_path):
    net, inputs, targets = make(kind)
    stock_keys = set(type(net.unet).from_config(net.unet.config).state_dict())
    apply_lora(net, LoraSpec(rank=4, alpha=8, target_modules=targets))
    train_step(net, inputs)
    with torch.no_grad():
        want = net(*inputs)
    merged = merge_lora(net)
    assert type(merged) is type(net.unet) and not merged.training
    assert not any(isinstance(m, LoraLayer) for m in merged.modules())
    assert set(merged.state_dict()) == stock_keys
    plain = CondNet(merged) if kind == "cond" else UNet2DNet(merged, None, None)
    with torch.no_grad():
        got = plain(*inputs)
        assert torch.equal(net(*inputs), want)  # net itself is unchanged
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert has_lora(net) and not has_lora(plain)
    # a full-UNet export: save_pretrained / from_pretrained as for any diffusers UNet
    merged.save_pretrained(tmp_path / "unet")
    reloaded = type(merged).from_pretrained(tmp_path / "unet")
    again = CondNet(reloaded) if kind == "cond" else UNet2DNet(reloaded, None, None)
    with torch.no_grad():
        assert torch.equal(again(*inputs), got)


def test_export_of_a_unet2dmodel_points_at_merge_lora(tmp_path):
    net, _, targets = make("plain")
    apply_lora(net, LoraSpec(rank=2, alpha=2, target_modules=targets))
    with pytest.raises(ValueError, match="merge_lora"):
        export_lora(net, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "generator.lora.rank: must be an integer >= 1, got 0"),
    (dict(rank=1.5), "generator.lora.rank: must be an integer >= 1, got 1.5"),
    (dict(rank=True), "generator.lora.rank: must be an integer >= 1, got True"),
    (dict(alpha=0), "generator.lora.alpha: must be a number > 0, got 0"),
    (dict(alpha=-2.0), "generator.lora.alpha: must be a number > 0, got -2.0"),
    (dict(alpha=math.nan), "generator.lora.alpha: must be a number > 0, got nan"),
    (dict(alpha="8"), "generator.lora.alpha: must be a number > 0, got '8'"),
    (dict(target_modules=[]), "generator.lora.target_modules: must be a non-empty list"),
    (dict(target_modules="to_q"), "generator.lora.target_modules: must be a non-empty list"),
    (dict(target_modules=["to_q", 3]), "generator.lora.target_modules: each entry must be a module-name suffix"),
    (dict(target_modules=[".to_q"]), "generator.lora.target_modules: each entry must be a module-name suffix"),
    (dict(target_modules=["to_q", "to_q"]), r"generator.lora.target_modules: \['to_q'\] listed more than once"),
])
def test_bad_specs_raise_one_line_errors(kwargs, message):
    args = {**dict(rank=4, alpha=4, target_modules=["to_q"]), **kwargs}
    with pytest.raises(ValueError, match=f"^{message}") as e:
        LoraSpec(**args)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind, targets, message", [
    ("cond", ["to_q", "to_qq"], r"generator.lora.target_modules: 'to_qq' matches no module of the "
                                r"UNet2DConditionModel \(targets are module-name suffixes; this one has e.g. to_q, "
                                r"to_k, to_v, to_out.0, proj_in, proj_out, ff.net.0.proj, ff.net.2, conv1, conv2, "),
    ("plain", ["proj_in"], r"'proj_in' matches no module of the UNet2DModel .*e.g. to_q, to_k, to_v, to_out.0, conv1"),
    ("cond", ["norm1"], r"generator.lora.target_modules: 'norm1' matches GroupNorm/LayerNorm modules .*Linear and "
                        r"Conv2d modules only"),
    ("cond", ["to_out"], r"'to_out' matches ModuleList modules"),
])
def test_targets_that_match_nothing_adaptable_are_refused_before_anything_changes(kind, targets, message):
    net, inputs, _ = make(kind)
    with pytest.raises(ValueError, match=message) as e:
        apply_lora(net, LoraSpec(rank=2, alpha=2, target_modules=targets))
    assert "\n" not in str(e.value)
    assert not has_lora(net) and all(p.requires_grad for p in net.parameters())


def test_load_lora_state_refuses_another_spec():
    net, _, targets = make("cond")
    apply_lora(net, LoraSpec(rank=4, alpha=4, target_modules=targets))
    other, _, _ = make("cond")
    apply_lora(other, LoraSpec(rank=2, alpha=4, target_modules=targets))
    with pytest.raises(ValueError, match=r"^ckpt: unet\..*lora_A\.default\.weight has shape \[4, .*another lora rank"):
        load_lora_state(other, lora_state(net), where="ckpt")
    fewer, _, _ = make("cond")
    apply_lora(fewer, LoraSpec(rank=4, alpha=4, target_modules=["to_q"]))
    with pytest.raises(ValueError, match=r"^ckpt: LoRA keys do not fit the network: \d+ unexpected"):
        load_lora_state(fewer, lora_state(net), where="ckpt")
    plain, _, _ = make("cond")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        load_lora_state(plain, lora_state(net), where="ckpt")
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(net, LoraSpec(rank=4, alpha=4, target_modules=targets))


def test_parse_fills_the_defaults_and_names_the_key():
    assert LoraSpec.parse(None) is None
    spec = LoraSpec.parse({})
    assert (spec.rank, spec.alpha, spec.target_modules) == (64, 64.0, DEFAULT_TARGET_MODULES)
    spec = LoraSpec.parse({"rank": 8, "target_modules": ["to_q"]}, where="fake_score.lora")
    assert (spec.rank, spec.alpha, spec.scale) == (8, 8.0, 1.0)
    with pytest.raises(ValueError, match=r"^fake_score.lora.rank: must be an integer >= 1, got -1$"):
        LoraSpec.parse({"rank": -1}, where="fake_score.lora")
    with pytest.raises(ValueError, match=r"^generator.lora.ranks: unknown key \(expected rank, alpha, target_modules\)$"):
        LoraSpec.parse({"ranks": 8})
    with pytest.raises(ValueError, match=r"^generator.lora: must be null or an object"):
        LoraSpec.parse(8)
    # the default targets all exist in an SD-like UNet
    net, inputs, _ = make("cond")
    apply_lora(net, LoraSpec.parse({"rank": 2}))
    adapted = {n.rsplit(".", 1)[-1] for n, m in net.unet.named_modules() if isinstance(m, LoraLayer)}
    assert {"to_q", "to_k", "to_v", "0", "proj_in", "proj_out", "proj", "2", "conv1", "conv2"} == adapted


def test_default_spec_on_the_sd15_architecture():
    """The default spec on SD 1.5's UNet shape (diffusers' UNet2DConditionModel defaults with cross_attention_dim
    768 are SD 1.5's; meta tensors, so nothing is allocated): the count apply_lora makes trainable is the formula's,
    and a small part of the UNet."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    full = sum(p.numel() for p in unet.parameters())
    spec = LoraSpec.parse({})
    expected = expected_lora_parameters(unet, spec)
    net = apply_lora(CondNet(unet), spec)
    count = sum(p.numel() for p in trainable_parameters(net))
    assert count == expected
    assert 0.01 < count / full < 0.1
    print(f"\n[lora memory] SD 1.5 UNet: {full / 1e6:.1f}M parameters; default LoRA (rank 64, {len(spec.target_modules)} "
          f"target suffixes): {count / 1e6:.1f}M = {100 * count / full:.1f}%; fp32 AdamW moments "
          f"{8 * count / 2**30:.2f} GiB instead of {8 * full / 2**30:.2f} GiB")
