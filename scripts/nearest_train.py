"""How near each model's samples come to the training images: the digits benchmark's memorisation check.

    python scripts/nearest_train.py PATH [PATH ...] [--checkpoint step-00003000] [--n 5000] [--seed 0]
        [--teacher-steps 50]

A PATH is a teacher folder (sampled with DDIM at --teacher-steps) or a dmd2 distill run folder (its newest
checkpoint, or --checkpoint, at its generator.steps, with the averaged weights as dmd2 eval and dmd2 sample use).
The data is the one the first folder learnt (recipe.resolved.json, or a teacher's dmd2_teacher.json). For each
model: the mean pixel distance of its samples (saved as 8-bit images) to their nearest train image and to their
nearest held-out image, the share nearer to a train image than to any held-out one, and the share within
distance 1 of a train image (near-copies). The held-out images themselves come first (each against the other
held-out ones): the reference a model that makes new images of the data would match (dmd2_worker/evaluate/nearest.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python-worker"))
from dmd2_worker.config import DataConfig, _parse  # noqa: E402
from dmd2_worker.data import build_data_source  # noqa: E402
from dmd2_worker.evaluate.models import load_sampler  # noqa: E402
from dmd2_worker.evaluate.nearest import Nearest, nearest_distances  # noqa: E402
from dmd2_worker.evaluate.run import generate  # noqa: E402
from dmd2_worker.evaluate.spec import EvalInputError, StudentModel, TeacherModel  # noqa: E402
from dmd2_worker.images import as_saved  # noqa: E402
from dmd2_worker.teacher_folder import TEACHER_INFO  # noqa: E402


def data_of(path: Path) -> DataConfig:
    for name in ("recipe.resolved.json", TEACHER_INFO):
        if (path / name).is_file():
            problems: list[str] = []
            data = _parse(json.loads((path / name).read_text())["data"], DataConfig, "data", problems)
            if problems:
                raise SystemExit(f"error: {path / name}: {'; '.join(problems)}")
            if data.source == "prompts":
                raise SystemExit(f"error: {path / name}: data.source is prompts: a text-to-image run has no image "
                                 f"splits to compare with; this check is for pixel data (digits, gmm, an image folder)")
            return data
    raise SystemExit(f"error: {path}: neither a run folder (recipe.resolved.json) nor a dmd2 teacher folder "
                     f"(dmd2_teacher.json): pass one of those first")


def model_of(path: Path, checkpoint: str | None, teacher_steps: int) -> tuple[TeacherModel | StudentModel, int]:
    recipe = path / "recipe.resolved.json"
    if recipe.is_file():
        steps = int(json.loads(recipe.read_text())["generator"]["steps"])
        return StudentModel(path.name, "student", str(path), [steps], checkpoint=checkpoint and
                            f"checkpoints/{checkpoint}"), steps
    return TeacherModel(path.name, "teacher", str(path), [teacher_steps], 1.0), teacher_steps


def line(label: str, near: Nearest) -> str:
    return (f"{label:<28} to train {near.to_train:.3f}  to held-out {near.to_heldout:.3f}  "
            f"nearer a train image {100 * near.closer_to_train:5.1f}%  near-copies {100 * near.train_copies:4.1f}%")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--checkpoint", help="a run's checkpoint folder name, e.g. step-00003000")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-steps", type=int, default=50)
    args = parser.parse_args()
    data = data_of(args.paths[0])
    train = as_saved(build_data_source(data, "train").all()[0])
    heldout = as_saved(build_data_source(data, "heldout").all()[0])
    device = torch.device("cpu")
    models = []  # all loaded before anything is sampled: a bad path fails at once
    for i, path in enumerate(args.paths):
        model, steps = model_of(path, args.checkpoint, args.teacher_steps)
        try:
            models.append((path, load_sampler(model, i, device), steps))
        except EvalInputError as e:
            raise SystemExit(f"error: {path}: {e}") from None
    print(line("held-out images", nearest_distances(heldout, train, heldout, leave_one_out=True)))
    spec = argparse.Namespace(n=args.n, batch_size=500, seed=args.seed)  # what generate() reads of an EvalSpec
    for path, sampler, steps in models:
        samples = generate(sampler, steps, spec, device).images
        print(line(f"{path.name}, {steps} step{'s' if steps > 1 else ''}", nearest_distances(samples, train, heldout)),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
