"""`dmd2 eval`'s worker side (docs/pipeline.md §4): the Fréchet distance, the feature classifier and its cache,
the noise floor, the spec, checkpoint discovery and `python -m dmd2_worker.evaluate` end to end."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from conftest import tiny_dict
from dmd2_worker.checkpoint import EMA_FILE, save_module, write_json
from dmd2_worker.config import DataConfig, FolderConfig, GmmConfig, PromptsConfig
from dmd2_worker.data import build_data_source
from dmd2_worker.evaluate.__main__ import USAGE
from dmd2_worker.evaluate.__main__ import main as evaluate_main
from dmd2_worker.evaluate.classifier import FEATURE_DIM, load_or_train_classifier, train_classifier
from dmd2_worker.evaluate.features import ClassifierExtractor
from dmd2_worker.evaluate.frechet import feature_distance, fit_gaussian, frechet_distance
from dmd2_worker.evaluate.models import load_sampler, load_student, newest_checkpoint
from dmd2_worker.evaluate.nearest import nearest_distances
from dmd2_worker.evaluate.run import evaluate, generate, noise_floor
from dmd2_worker.evaluate.spec import EvalInputError, StudentModel, parse_eval_spec
from dmd2_worker.images import as_saved
from dmd2_worker.models.tiny_unet import TinyUNet, default_arch_config
from dmd2_worker.teacher_training import write_teacher_dir

WORKER_ROOT = Path(__file__).resolve().parents[1]


def digits_config() -> DataConfig:
    return DataConfig(source="digits", gmm=GmmConfig(num_classes=4, image_size=8, std=0.1),
                      folder=FolderConfig(path=None, channels=1), prompts=PromptsConfig(file=None, images=None))


# --- Fréchet distance ------------------------------------------------------------------------------------------

def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_frechet_distance_of_hand_computed_gaussians():
    # 1-D: (0 - 3)^2 + 1 + 4 - 2 sqrt(1 * 4) = 10
    assert frechet_distance(t64([0.0]), t64([[1.0]]), t64([3.0]), t64([[4.0]])) == pytest.approx(10.0, abs=1e-12)
    # commuting 2-D: |(1, 2)|^2 + (1 + 4) + (9 + 16) - 2 (sqrt(9) + sqrt(64)) = 5 + 30 - 22 = 13
    d = frechet_distance(t64([0.0, 0.0]), torch.diag(t64([1.0, 4.0])), t64([1.0, 2.0]), torch.diag(t64([9.0, 16.0])))
    assert d == pytest.approx(13.0, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 6, generator=g, dtype=torch.float64)
    mixing = torch.randn(6, 6, generator=g, dtype=torch.float64)
    b = torch.randn(150, 6, generator=g, dtype=torch.float64) @ mixing + 0.5
    mu1, s1 = fit_gaussian(a)
    mu2, s2 = fit_gaussian(b)
    assert np.allclose(s1.numpy(), np.cov(a.numpy(), rowvar=False))
    cross = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = float(((mu1 - mu2) ** 2).sum()) + np.trace(s1.numpy() + s2.numpy() - 2 * cross)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert feature_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert feature_distance(a, torch.full_like(a, float("nan"))) is None


# --- the feature classifier ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_classifier(dmd2_cache: Path):
    """Trained once into the session's $DMD2_CACHE (cache_dir null)."""
    train = build_data_source(digits_config(), "train")
    return load_or_train_classifier(digits_config(), train, None, lambda message: None)


def test_classifier_is_cached_and_the_cache_gives_the_same_features(digits_classifier, dmd2_cache: Path):
    (folder,) = (dmd2_cache / "classifiers").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "train.json"]
    messages: list[str] = []
    train = build_data_source(digits_config(), "train")
    loaded = load_or_train_classifier(digits_config(), train, None, messages.append)
    assert messages == [f"feature classifier: loaded from {folder}"]
    images, _ = build_data_source(digits_config(), "heldout").all()
    with torch.no_grad():
        assert torch.equal(loaded.features(images), digits_classifier.features(images))
        assert loaded.features(images).shape == (len(images), FEATURE_DIM)


def test_classifier_training_is_deterministic(digits_classifier):
    again, _ = train_classifier(build_data_source(digits_config(), "train"))
    for (name, a), (_, b) in zip(digits_classifier.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_classifier_recognises_heldout_digits(digits_classifier):
    images, labels = build_data_source(digits_config(), "heldout").all()
    with torch.no_grad():
        accuracy = (digits_classifier(images).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.9


def test_noise_floor_is_far_below_the_distance_of_noise_images(digits_classifier):
    extract = ClassifierExtractor(digits_classifier, torch.device("cpu"), 500)
    heldout_images, _ = build_data_source(digits_config(), "heldout").all()
    heldout_features, _ = extract(heldout_images)
    train_features, _ = extract(build_data_source(digits_config(), "train").all()[0])
    floor = noise_floor(train_features, heldout_features, seed=0)
    noise = torch.rand(heldout_images.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert 0 < floor < feature_distance(extract(noise)[0], heldout_features) / 10


# --- the spec and the run folder -------------------------------------------------------------------------------

def spec_dict(models: list[dict], picture: dict | None = None, **overrides) -> dict:
    spec = {"data": dataclasses.asdict(digits_config()), "n": 40,
            "seed": 0, "repeats": 1, "batch_size": 16, "device": "cpu", "torch_threads": 1, "features": {"kind": "classifier"},
            "cache_dir": None, "models": models, "picture": picture}
    spec.update(overrides)
    return spec


def test_spec_problems_name_their_keys():
    teacher = {"label": "teacher", "kind": "teacher", "path": "/t", "steps": [1], "guidance_scale": 1.0}
    assert parse_eval_spec(spec_dict([teacher])).models[0].steps == [1]
    cases = [
        (spec_dict([teacher], extra=1), "extra"),
        (spec_dict([{**teacher, "kind": "oracle"}]), "models[0].kind"),
        (spec_dict([teacher], features={"kind": "torchscript"}), "features.path"),
        (spec_dict([teacher], n=1), "n"),
        (spec_dict([teacher], repeats=0), "repeats"),
        (spec_dict([teacher, teacher]), "models[1].label"),
        (spec_dict([teacher], picture={"path": "p.png", "rows": [["teacher", 2]], "classes": None}),
         "picture.rows[0]"),
    ]
    for spec, key in cases:
        with pytest.raises(EvalInputError) as info:
            parse_eval_spec(spec)
        assert info.value.key == key, str(info.value)


def test_newest_checkpoint_skips_incomplete_folders(tmp_path: Path):
    assert newest_checkpoint(tmp_path) is None
    for name, complete in [("step-00000100", True), ("step-00000200", True), ("step-00000300", False),
                           ("step-00000400.tmp", True)]:
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        if complete:
            (tmp_path / "checkpoints" / name / "manifest.json").write_text("{}")
    assert newest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-00000200"


# --- end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models_on_disk(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An (untrained) 10-class teacher for 8x8 digits and a run folder whose generator is a copy of it."""
    root = tmp_path_factory.mktemp("eval-models")
    recipe = copy.deepcopy(tiny_dict())
    recipe["data"]["source"] = "digits"
    recipe["run_dir"] = str(root / "run")
    arch = default_arch_config(channels=8, image_size=8, num_classes=10)
    config = {"arch": "tiny_unet", "arch_config": arch, "diffusion": recipe["diffusion"], "num_classes": 10,
              "image_shape": [1, 8, 8]}
    torch.manual_seed(0)
    net = TinyUNet(arch)
    teacher = write_teacher_dir(root / "teacher", net, config)
    run = root / "run"
    checkpoint = run / "checkpoints" / "step-00000010"
    checkpoint.mkdir(parents=True)
    shutil.copytree(teacher, run / "teacher")
    write_json(run / "recipe.resolved.json", recipe)
    save_module(checkpoint / "generator.safetensors", net)
    write_json(checkpoint / "manifest.json", {})
    return {"teacher": teacher, "run": run}


class _OverflowingSampler:
    """Samples far beyond [-1, 1]: 3 z."""
    num_classes = 10
    image_shape = (1, 8, 8)

    def sample(self, z: torch.Tensor, cond, steps: int, generator: torch.Generator) -> torch.Tensor:
        return 3 * z


def test_generated_samples_are_scored_as_the_pngs_a_user_gets():
    teacher = {"label": "t", "kind": "teacher", "path": "/unused", "steps": [1], "guidance_scale": 1.0}
    spec = parse_eval_spec(spec_dict([teacher]))
    generated = generate(_OverflowingSampler(), 1, spec, torch.device("cpu"))
    z = torch.randn((spec.n, 1, 8, 8), generator=torch.Generator().manual_seed(spec.seed))
    levels = (generated.images + 1) * 127.5
    assert generated.images.min() == -1 and generated.images.max() == 1  # clamped
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # 8 bits
    assert torch.allclose(generated.images, (3 * z).clamp(-1, 1), atol=1 / 255)
    assert generated.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_student_loads_the_newest_checkpoint_and_samples_at_its_timesteps(models_on_disk):
    model = StudentModel(label="s", kind="student", run_dir=str(models_on_disk["run"]), steps=[1, 2, 4])
    student = load_student(model, "models[0]", torch.device("cpu"))
    assert student.timesteps(2) == [999, 499]  # generator.timesteps of the recipe
    assert student.timesteps(4) == [999, 749, 499, 249]  # evenly spaced from the conditioning timestep
    assert (student.num_classes, student.image_shape) == (10, (1, 8, 8))
    with pytest.raises(EvalInputError) as info:
        load_student(dataclasses.replace(model, steps=[2000]), "models[0]", torch.device("cpu"))
    assert info.value.key == "models[0].steps"


def test_student_checkpoint_and_weights_choose_what_is_scored(models_on_disk, tmp_path: Path):
    """checkpoint: a folder of the run (relative to it) instead of the newest; weights: the EMA when the checkpoint
    has one ("ema", the default), else the raw weights; "raw": the raw weights."""
    run = tmp_path / "run"
    shutil.copytree(models_on_disk["run"], run)
    older, newer = run / "checkpoints" / "step-00000010", run / "checkpoints" / "step-00000020"
    nets = {}
    for name, folder, file in (("raw10", older, "generator.safetensors"), ("ema10", older, EMA_FILE),
                               ("raw20", newer, "generator.safetensors")):
        torch.manual_seed(len(nets) + 1)
        nets[name] = TinyUNet(default_arch_config(channels=8, image_size=8, num_classes=10))
        folder.mkdir(exist_ok=True)
        save_module(folder / file, nets[name])
    write_json(newer / "manifest.json", {})

    def loaded(**choice) -> tuple[str, Path, str]:
        model = StudentModel(label="s", kind="student", run_dir=str(run), steps=[1], **choice)
        student = load_student(model, "models[0]", torch.device("cpu"))
        first = next(student.net.parameters())
        [name] = [n for n, net in nets.items() if torch.equal(first, next(net.parameters()))]
        return name, student.checkpoint, student.weights

    assert loaded() == ("raw20", newer, "raw")  # the newest; it has no EMA file
    assert loaded(checkpoint="checkpoints/step-00000010") == ("ema10", older, "ema")
    assert loaded(checkpoint=str(older), weights="raw") == ("raw10", older, "raw")
    with pytest.raises(EvalInputError) as info:
        loaded(checkpoint="checkpoints/step-00000030")
    assert info.value.key == "models[0].checkpoint" and "step-00000030" in str(info.value)
    (older / "generator.safetensors").unlink()
    with pytest.raises(EvalInputError) as info:
        loaded(checkpoint=str(older), weights="raw")
    assert info.value.key == "models[0].weights" and "has no generator.safetensors" in str(info.value)
    (newer / "generator.safetensors").write_bytes(b"\x08")  # truncated: not a safetensors header
    with pytest.raises(EvalInputError) as info:
        loaded()
    assert info.value.key == "models[0].checkpoint" and "damaged checkpoint" in str(info.value)
    problems = spec_dict([{"label": "s", "kind": "student", "run_dir": str(run), "steps": [1], "checkpoint": None,
                           "weights": "best"}])
    with pytest.raises(EvalInputError, match="models\\[0\\].weights"):
        parse_eval_spec(problems)


def run_evaluate(spec: dict, tmp_path: Path) -> tuple[int, list[dict], str]:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "dmd2_worker.evaluate", str(path)], cwd=WORKER_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_evaluate_process_end_to_end(models_on_disk, digits_classifier, dmd2_cache: Path, tmp_path: Path):
    picture = tmp_path / "picture.png"
    spec = spec_dict(
        [{"label": "teacher", "kind": "teacher", "path": str(models_on_disk["teacher"]), "steps": [1, 2],
          "guidance_scale": 2.0},
         {"label": "student", "kind": "student", "run_dir": str(models_on_disk["run"]), "steps": [2]}],
        picture={"path": str(picture), "rows": [["real"], ["teacher", 2], ["student", 2]], "classes": [0, 1, 2]},
        cache_dir=str(dmd2_cache))  # the classifier the fixture trained
    status, events, stderr = run_evaluate(spec, tmp_path)
    assert status == 0, stderr
    assert {e["event"] for e in events[:-1]} == {"progress"}
    result = events[-1]
    assert result["event"] == "result" and result["features"] == "classifier" and result["n"] == 40
    assert result["heldout_accuracy"] > 0.9 and result["noise_floor"] > 0
    assert [(r["label"], r["kind"], r["steps"]) for r in result["rows"]] == [
        ("teacher", "teacher", 1), ("teacher", "teacher", 2), ("student", "student", 2)]
    scored = {"label", "kind", "steps", "fd", "fd_sd", "fd_draws", "fd_train", "accuracy", "images_per_s", "seconds"}
    for row in result["rows"]:
        assert set(row) == (scored if row["kind"] == "teacher" else scored | {"checkpoint", "weights"})
        assert row["fd_sd"] is None and row["fd_draws"] == [row["fd"]]
        assert row["fd"] > result["noise_floor"] and 0 <= row["accuracy"] <= 1 and row["images_per_s"] > 0
        assert row["fd_train"] > 0
    width, height = Image.open(picture).size
    assert width > 3 * 48 and height >= 3 * 48  # three rows of three upscaled 8x8 tiles and the labels


def run_main(spec: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[int, list[dict], str]:
    """`python -m dmd2_worker.evaluate` in this process (no interpreter start-up)."""
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    status = evaluate_main([str(path)])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_repeats_average_the_fd_of_draws_with_consecutive_seeds(models_on_disk, digits_classifier, dmd2_cache: Path):
    """repeats 3: three draws of n samples with seeds 5, 6, 7; the row's FD is their mean, fd_sd their sample
    standard deviation, each draw the FD a single evaluation with that seed gives."""
    teacher = {"label": "teacher", "kind": "teacher", "path": str(models_on_disk["teacher"]), "steps": [2],
               "guidance_scale": 1.0}
    spec = parse_eval_spec(spec_dict([teacher], seed=5, repeats=3, cache_dir=str(dmd2_cache)))
    row = evaluate(spec, lambda message: None)["rows"][0]
    singles = [evaluate(dataclasses.replace(spec, seed=s, repeats=1), lambda message: None)["rows"][0]["fd"]
               for s in (5, 6, 7)]
    assert row["fd_draws"] == pytest.approx(singles, rel=1e-9)
    assert len(set(singles)) == 3  # the draws differ
    assert row["fd"] == pytest.approx(float(np.mean(singles)), rel=1e-9)
    assert row["fd_sd"] == pytest.approx(float(np.std(singles, ddof=1)), rel=1e-9)


def test_bad_input_is_an_error_event_with_status_2(models_on_disk, tmp_path: Path, capsys: pytest.CaptureFixture):
    spec = spec_dict([{"label": "s", "kind": "student", "run_dir": str(models_on_disk["teacher"]), "steps": [1]}])
    status, events, stderr = run_main(spec, tmp_path, capsys)
    assert status == 2 and "Traceback" not in stderr
    assert events[-1]["event"] == "error" and events[-1]["key"] == "models[0].run_dir"
    assert "is not a dmd2 run folder" in events[-1]["message"]

    spec["data"]["source"] = "folder"
    spec["data"]["folder"]["path"] = str(tmp_path / "missing")
    status, events, _ = run_main(spec, tmp_path, capsys)
    assert (status, events[-1]["key"]) == (2, "data.folder.path")

    assert evaluate_main([]) == 2
    assert json.loads(capsys.readouterr().out) == {"event": "error", "key": None, "message": USAGE}


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_evaluate_with_torchscript_features(models_on_disk, tmp_path: Path):
    extractor = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)))
    torch.jit.save(extractor, str(tmp_path / "features.pt"))
    spec = parse_eval_spec(spec_dict(
        [{"label": "teacher", "kind": "teacher", "path": str(models_on_disk["teacher"]), "steps": [1],
          "guidance_scale": 1.0}],
        features={"kind": "torchscript", "path": str(tmp_path / "features.pt")}))
    result = evaluate(spec, lambda message: None)
    assert result["features"] == "torchscript" and result["heldout_accuracy"] is None
    assert result["rows"][0]["accuracy"] is None and result["rows"][0]["fd"] > 0

    # fd and fd_train by hand: the same samples' features against the held-out and against the whole train split
    def features_of(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return extractor(as_saved(images))
    train_images, _ = build_data_source(digits_config(), "train").all()
    heldout_images, _ = build_data_source(digits_config(), "heldout").all()
    samples = generate(load_sampler(spec.models[0], 0, torch.device("cpu")), 1, spec, torch.device("cpu")).images
    row = result["rows"][0]
    assert result["train_images"] == len(train_images)
    assert row["fd"] == pytest.approx(feature_distance(features_of(samples), features_of(heldout_images)), rel=1e-6)
    assert row["fd_train"] == pytest.approx(feature_distance(features_of(samples), features_of(train_images)),
                                            rel=1e-6)
    assert row["fd_train"] != pytest.approx(row["fd"], rel=1e-3)  # a different reference set, a different distance


class _StandInInceptionDetector(torch.nn.Module):
    """The calling convention of the Inception FID detector (inception-2015-12-05.pt): uint8 RGB in, resized inside,
    (N, 2048) features out with return_features=True. It refuses anything else, so the test checks what
    InceptionExtractor feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(3 * 12 * 12, 2048)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.shape[1] != 3:
            raise RuntimeError("expected uint8 RGB images")
        if not return_features:
            raise RuntimeError("this stand-in only returns features")
        y = torch.nn.functional.interpolate(x.to(torch.float32), size=(12, 12), mode="bilinear", align_corners=False)
        return self.proj((y / 127.5 - 1).flatten(1))


def test_inception_input_is_uint8_rgb_in_0_255():
    from dmd2_worker.evaluate.features import inception_input
    images = torch.tensor([-1.0, -0.5, 0.0, 1.0, 2.0]).view(1, 1, 1, 5)
    x = inception_input(images)
    assert x.dtype == torch.uint8 and tuple(x.shape) == (1, 3, 1, 5)
    assert x[0, :, 0].tolist() == [[0, 64, 128, 255, 255]] * 3  # (v + 1) * 127.5 rounded, clamped
    with pytest.raises(EvalInputError, match="features.kind: inception takes grey or RGB images"):
        inception_input(torch.zeros(1, 2, 4, 4))


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_evaluate_with_inception_features(models_on_disk, tmp_path: Path):
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_StandInInceptionDetector()), str(tmp_path / "inception.pt"))
    teacher = {"label": "teacher", "kind": "teacher", "path": str(models_on_disk["teacher"]), "steps": [1, 4],
               "guidance_scale": 1.0}
    spec = parse_eval_spec(spec_dict([teacher], features={"kind": "inception", "path": str(tmp_path / "inception.pt")}))
    result = evaluate(spec, lambda message: None)
    assert result["features"] == "inception" and result["heldout_accuracy"] is None
    assert all(row["fd"] > 0 and row["accuracy"] is None for row in result["rows"])
    # the noise floor is the distance in the detector's own feature space, computed here by hand
    detector = torch.jit.load(str(tmp_path / "inception.pt"))
    to_uint8_rgb = lambda x: ((x + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)
    train_images, _ = build_data_source(digits_config(), "train").all()
    heldout_images, _ = build_data_source(digits_config(), "heldout").all()
    count = min(len(train_images), len(heldout_images))
    subset = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(spec.seed))[:count]
    with torch.no_grad():
        by_hand = feature_distance(detector(to_uint8_rgb(train_images[subset]), return_features=True),
                                   detector(to_uint8_rgb(heldout_images), return_features=True))
    assert result["noise_floor"] == pytest.approx(by_hand, rel=1e-4)

    # a TorchScript module without the detector's calling convention: one line naming features.path
    torch.jit.save(torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))),
                   str(tmp_path / "plain.pt"))
    spec = parse_eval_spec(spec_dict([teacher], features={"kind": "inception", "path": str(tmp_path / "plain.pt")}))
    with pytest.raises(EvalInputError, match=r"features.path: .*plain.pt does not work as an Inception FID detector"):
        evaluate(spec, lambda message: None)


def test_nearest_distances_by_hand():
    """Distances over flattened pixels: samples (0,0) and (3,4) against train {(0,0), (6,8)} and held-out {(3,0)}."""
    train = torch.tensor([[0.0, 0.0], [6.0, 8.0]]).view(2, 1, 1, 2)
    heldout = torch.tensor([[3.0, 0.0]]).view(1, 1, 1, 2)
    samples = torch.tensor([[0.0, 0.0], [3.0, 4.0]]).view(2, 1, 1, 2)
    near = nearest_distances(samples, train, heldout, batch=1)
    # sample 0: train 0 (a copy), held-out 3; sample 1: train 5 (to either), held-out 4
    assert near.to_train == pytest.approx(2.5) and near.to_heldout == pytest.approx(3.5)
    assert near.closer_to_train == pytest.approx(0.5) and near.train_copies == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        nearest_distances(samples, train.view(2, 2, 1, 1), heldout)


def test_heldout_digits_are_new_images_and_train_digits_are_copies():
    """On the digits splits: train images are their own nearest train image (distance 0, all copies); held-out
    images are new ones (hardly any within the copy distance of a train image, on average ~2.2 away)."""
    train, _ = build_data_source(digits_config(), "train").all()
    heldout, _ = build_data_source(digits_config(), "heldout").all()
    own = nearest_distances(as_saved(train), as_saved(train), as_saved(heldout))
    assert own.to_train == pytest.approx(0.0, abs=1e-6) and own.train_copies == 1.0 and own.closer_to_train == 1.0
    new = nearest_distances(as_saved(heldout), as_saved(train), as_saved(heldout), batch=300, leave_one_out=True)
    assert 1.5 < new.to_train < 3.0 and new.train_copies < 0.01
    # each held-out image against the other held-out ones: about as near as to the (equally many) train images
    assert 0.8 < new.to_heldout / new.to_train < 1.25 and 0.35 < new.closer_to_train < 0.65
    itself = nearest_distances(as_saved(heldout), as_saved(train), as_saved(heldout))
    assert itself.to_heldout == pytest.approx(0.0, abs=1e-6) and itself.closer_to_train == 0.0


def test_nearest_train_script(models_on_disk, tmp_path: Path):
    """scripts/nearest_train.py on a run and a teacher: the held-out reference line, then one line per model; a
    folder that is neither kind fails in one line before anything is sampled."""
    script = WORKER_ROOT.parent / "scripts" / "nearest_train.py"
    run, teacher = models_on_disk["run"], models_on_disk["teacher"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    steps = json.loads((run / "recipe.resolved.json").read_text())["generator"]["steps"]
    proc = subprocess.run([sys.executable, str(script), str(run), str(teacher), "--n", "40", "--teacher-steps", "2"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split("  ")[0].strip() for line in lines] == [
        "held-out images", f"run, {steps} step{'s' if steps > 1 else ''}", "teacher, 2 steps"]
    # the reference: each held-out digit against the other held-out ones (as test_heldout_digits_are_new_images...)
    assert "nearer a train image  50.6%" in lines[0]
    for line in lines[1:]:
        share = float(line.split("nearer a train image")[1].split("%")[0])
        assert 0 <= share <= 100

    bad = subprocess.run([sys.executable, str(script), str(run), str(tmp_path / "missing")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().startswith(f"error: {tmp_path / 'missing'}: ") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
