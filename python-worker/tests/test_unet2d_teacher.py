"""models/unet2d.py and teacher_folder.py: the UNet2DModel adapter and the diffusers teacher folder
(docs/pipeline.md §2): shapes, null class, write/read round trip, DDPMPipeline compatibility, reading errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, UNet2DModel

from dmd2_worker.config import DiffusionConfig
from dmd2_worker.models.unet2d import UNet2DNet, teacher_unet_config
from dmd2_worker.teacher_folder import TeacherFolderError, load_teacher_folder, write_teacher_folder
from dmd2_worker.teacher_training import load_network

DIFFUSION = DiffusionConfig(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                            beta_end=0.012, prediction_type="epsilon")
K = 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_unet(num_classes: int | None = K, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(**teacher_unet_config(image_shape=(1, 8, 8), block_out_channels=[8, 16], layers_per_block=1,
                                             norm_num_groups=4, num_classes=num_classes))


def inputs(n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g), torch.arange(n) % K


def write(out: Path, unet: UNet2DModel, num_classes: int | None = K) -> Path:
    return write_teacher_folder(out, unet, DIFFUSION, num_classes, {"source": "gmm"}, {"steps": 0})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("teachers") / "t", tiny_unet())


@pytest.fixture
def copy_of(folder, tmp_path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "t"))


def test_adapter_shapes_null_class_and_features():
    unet = tiny_unet()
    net = UNet2DNet(unet, K, K)
    assert (net.num_classes, net.null_class, net.in_channels, net.image_size) == (K, K, 1, 8)
    assert (net.feature_channels, net.feature_size) == (16, 4)
    x, t, c = inputs()
    with torch.no_grad():
        out = net(x, t, c)
        assert out.shape == x.shape and out.dtype == torch.float32
        assert torch.equal(out, unet(x, t, c).sample)
        assert torch.equal(net(x, t, None), net(x, t, torch.full_like(c, K)))  # no labels: the null class
        assert not torch.allclose(net(x, t, (c + 1) % K), out)
        seen = []
        handle = unet.mid_block.register_forward_hook(lambda m, a, o: seen.append(o))
        unet(x, t, c)
        handle.remove()
    feats = net.features(x.requires_grad_(True), t, c)
    assert feats.shape == (5, net.feature_channels, net.feature_size, net.feature_size)
    assert torch.allclose(feats, seen[0])
    (grad,) = torch.autograd.grad(feats.sum(), x)  # the discriminator needs gradients through the features
    assert grad.abs().sum() > 0
    assert not unet.mid_block._forward_hooks  # the early-stop hook is removed again


def test_unconditional_adapter():
    unet = tiny_unet(num_classes=None)
    assert unet.config.num_class_embeds is None
    net = UNet2DNet(unet, None, None)
    x, t, _ = inputs()
    with torch.no_grad():
        assert net(x, t, None).shape == x.shape
    assert net.features(x, t).shape == (5, 16, 4, 4)


def test_adapter_rejects_what_does_not_fit():
    with pytest.raises(ValueError, match="num_class_embeds 4 does not fit num_classes 4 with null class 4"):
        UNet2DNet(tiny_unet(), 4, 4)
    with pytest.raises(ValueError, match="num_class_embeds None"):
        UNet2DNet(tiny_unet(num_classes=None), K, K)
    net = UNet2DNet(tiny_unet(), K + 1, None)  # a foreign UNet: K + 1 classes, no null class
    x, t, _ = inputs()
    with pytest.raises(ValueError, match="no null class"):
        net(x, t, None)


def test_folder_round_trip(folder, tmp_path):
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "dmd2_teacher.json", "model_index.json", "scheduler/scheduler_config.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors"]
    assert json.loads((folder / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DModel"]
    info = json.loads((folder / "dmd2_teacher.json").read_text())
    assert (info["format"], info["num_classes"], info["null_class"]) == (1, K, K)
    assert not [p for p in folder.parent.iterdir() if p.name != "t"]  # no temporaries left

    net, config = load_network(folder)
    assert isinstance(net, UNet2DNet)
    assert config == {"arch": "diffusers.UNet2DModel", "diffusion": {
        "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
        "prediction_type": "epsilon"}, "num_classes": K, "image_shape": [1, 8, 8]}
    x, t, c = inputs()
    with torch.no_grad():
        assert torch.equal(net(x, t, c), UNet2DNet(tiny_unet(), K, K)(x, t, c))


def test_ddpm_pipeline_loads_the_folder(folder):
    pipe = DDPMPipeline.from_pretrained(folder)
    assert pipe.unet.config.num_class_embeds == K + 1
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.prediction_type == "epsilon"
    reference = tiny_unet()
    for (name, a), b in zip(pipe.unet.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_ddpm_pipeline_samples_an_unconditional_folder(tmp_path):
    out = write(tmp_path / "u", tiny_unet(num_classes=None), num_classes=None)
    pipe = DDPMPipeline.from_pretrained(out)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 1)
    net, config = load_network(out)
    assert net.num_classes is None and config["num_classes"] is None


def test_writing_refuses_an_existing_folder_unless_replacing(folder, tmp_path):
    out = write(tmp_path / "w", tiny_unet())
    with pytest.raises(FileExistsError):
        write(out, tiny_unet(seed=1))
    write_teacher_folder(out, tiny_unet(seed=1), DIFFUSION, K, {}, {}, replace=True)
    net, _ = load_network(out)
    assert torch.equal(net.unet.conv_in.weight, tiny_unet(seed=1).conv_in.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_without_dmd2_teacher_json_every_class_embedding_is_a_class(copy_of):
    (copy_of / "dmd2_teacher.json").unlink()
    net, config = load_network(copy_of)
    assert config["num_classes"] == K + 1 and net.num_classes == K + 1 and net.null_class is None


def test_model_index_json_is_optional(copy_of):
    (copy_of / "model_index.json").unlink()
    _, config = load_network(copy_of)
    assert config["num_classes"] == K


def _edit_json(path: Path, **changes) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    path.write_text(json.dumps(obj))


def _drop_keys(path: Path, *keys: str) -> None:
    obj = json.loads(path.read_text())
    for key in keys:
        del obj[key]
    path.write_text(json.dumps(obj))


def _replace_weights(folder: Path) -> None:
    """Wider weights behind the folder's own config.json."""
    config = (folder / "unet" / "config.json").read_text()
    UNet2DModel(**teacher_unet_config(image_shape=(1, 8, 8), block_out_channels=[16, 32], layers_per_block=1,
                                      norm_num_groups=4, num_classes=K)).save_pretrained(folder / "unet")
    (folder / "unet" / "config.json").write_text(config)


BREAKAGES = {
    "no unet config": (lambda d: (d / "unet" / "config.json").unlink(), r"unet/config\.json: missing"),
    "no weights": (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").unlink(),
                   r"diffusion_pytorch_model\.safetensors: missing$"),
    "only .bin weights": (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").rename(
        d / "unet" / "diffusion_pytorch_model.bin"), "reads only safetensors"),
    "only fp16 variant weights": (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").rename(
        d / "unet" / "diffusion_pytorch_model.fp16.safetensors"),
        r"missing; only variant weights are there \(diffusion_pytorch_model\.fp16\.safetensors\): save the UNet again "
        r"without variant="),
    "corrupt weights": (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk"),
                        "cannot read safetensors"),
    "weights of another UNet": (_replace_weights, r"do not fit unet/config\.json: \d+ of another shape"),
    "no scheduler": (lambda d: shutil.rmtree(d / "scheduler"), r"scheduler_config\.json: missing"),
    "beta_schedule": (lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", beta_schedule="squaredcos_cap_v2"),
                      r"scheduler_config\.json: beta_schedule 'squaredcos_cap_v2' is not supported"),
    "prediction_type": (lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", prediction_type="flow"),
                        r"scheduler_config\.json: prediction_type 'flow' is not supported"),
    "num_train_timesteps": (lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", num_train_timesteps="1000"),
                            r"scheduler_config\.json: num_train_timesteps must be an integer"),
    "betas": (lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", beta_start=0.5, beta_end=0.1),
              r"scheduler_config\.json: beta_start, beta_end"),
    "trained_betas": (lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", trained_betas=[0.1, 0.2]),
                      r"scheduler_config\.json: trained_betas is not supported"),
    "zero snr": (lambda d: _edit_json(d / "scheduler" / "scheduler_config.json", rescale_betas_zero_snr=True),
                 r"scheduler_config\.json: rescale_betas_zero_snr"),
    "missing scheduler keys": (lambda d: _drop_keys(d / "scheduler" / "scheduler_config.json", "beta_end",
                                                    "prediction_type"),
                               r"scheduler_config\.json: missing beta_end, prediction_type$"),
    "bad json": (lambda d: (d / "scheduler" / "scheduler_config.json").write_text("{"),
                 r"scheduler_config\.json: not valid JSON"),
    "class count": (lambda d: _edit_json(d / "dmd2_teacher.json", num_classes=5, null_class=5),
                    r"unet/config\.json: num_class_embeds 4 does not fit num_classes 5"),
    "null class": (lambda d: _edit_json(d / "dmd2_teacher.json", null_class=0),
                   r"dmd2_teacher\.json: null_class must equal num_classes"),
    "info format": (lambda d: _edit_json(d / "dmd2_teacher.json", format=2), r"dmd2_teacher\.json: format 2"),
    "not a UNet2DModel": (lambda d: _edit_json(d / "model_index.json", unet=["diffusers", "UNet2DConditionModel"]),
                          r"model_index\.json: unet must be"),
    "class_embed_type": (lambda d: _edit_json(d / "unet" / "config.json", class_embed_type="timestep"),
                             r"unet/config\.json: class_embed_type 'timestep' is not supported"),
}


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_reading_errors_are_one_line_and_name_the_file(copy_of, name):
    breakage, pattern = BREAKAGES[name]
    breakage(copy_of)
    with pytest.raises(TeacherFolderError, match=pattern) as info:
        load_teacher_folder(copy_of)
    message = str(info.value)
    assert "\n" not in message and str(copy_of) in message


def test_a_folder_that_is_no_teacher(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        load_network(tmp_path)


def test_dmd2_eval_samples_the_teacher_with_its_schedulers_clip_sample(copy_of):
    """dmd2 eval's teacher rows use DDIM as diffusers would for this folder: x0 clamped to clip_sample_range at
    every step when the scheduler config says clip_sample (DDPMScheduler's default), unclamped when it says false
    (what write_teacher_folder writes); a bad range is a one-line error naming the file and the key."""
    from dmd2_worker.evaluate.models import load_teacher
    from dmd2_worker.evaluate.spec import EvalInputError, TeacherModel

    model = TeacherModel(label="t", kind="teacher", path=str(copy_of), steps=[2], guidance_scale=1.0)
    z = 3 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.arange(4) % K
    scheduler_config = copy_of / "scheduler" / "scheduler_config.json"
    assert json.loads(scheduler_config.read_text())["clip_sample"] is False
    plain = load_teacher(model, "models[0]", torch.device("cpu"))
    assert plain.clip_sample is None
    y = plain.sample(z, cond, 2, torch.Generator())
    _edit_json(scheduler_config, clip_sample=True)
    clipped = load_teacher(model, "models[0]", torch.device("cpu"))
    assert clipped.clip_sample == 1.0
    x = clipped.sample(z, cond, 2, torch.Generator())
    assert x.abs().max() <= 1 < y.abs().max()
    _edit_json(scheduler_config, clip_sample=True, clip_sample_range="one")
    with pytest.raises(EvalInputError, match=r"scheduler_config.json: clip_sample_range must be a positive number") as info:
        load_teacher(model, "models[0]", torch.device("cpu"))
    assert info.value.key == "models[0].path"
