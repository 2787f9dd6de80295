"""`python -m dmd2_worker.export <spec.json>` (docs/cli.md `dmd2 export`): a run's distilled generator as a folder
a stock diffusers pipeline loads.

Spec: {"run_dir": str, "checkpoint": str (a checkpoint folder), "out": str, "lora": bool}.

- Full export: a copy of the teacher's folder (files hard-linked where the file system allows, else copied) with the
  student's UNet in `unet/` (the EMA weights when the run kept them; a LoRA student's adapters merged in) and an
  `LCMScheduler` in `scheduler/` (model_index.json updated). LCMScheduler samples the way the generator does: predict
  x0, re-noise it to the next timestep with fresh noise drawn from the pipeline's generator; its boundary scalings
  c_skip = 0.25 / ((t * s)^2 + 0.25) and c_out are made exact to float precision by `timestep_scaling` s = 1e4 (the
  default 10 leaves c_skip = 1.1e-7 at t = 149 and 2.5e-3 at t = 1; with 1e4, under 1e-8 for every t >= 1). Given
  the student's timesteps (`pipe(..., timesteps=[...])`), the same seed and prompt, the stock pipeline reproduces
  `dmd2 sample`; `original_inference_steps` = T makes `num_inference_steps=N` give the timesteps T-1 - i T/N.
- `lora`: only `pytorch_lora_weights.safetensors` for `pipeline.load_lora_weights` on the teacher's pipeline
  (lora.export_lora), for a LoRA student of a Stable Diffusion teacher.

Both write `dmd2_student.json` (timesteps, source run and checkpoint) and a README.md model card, into a temporary
folder beside `out` that is renamed to `out` at the end, so a failure leaves no half-written export.

JSON lines on stdout: {"event": "progress", "message"} then {"event": "done", "out", "timesteps", "files"}; on
failure {"event": "error", "message", "key"} and exit status 2 (bad input) or 1; 130 after SIGTERM (the CLI's Ctrl-C),
the temporary folder removed.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .card_metadata import card_metadata, front_matter
from .checkpoint import EMA_FILE
from .config import Recipe, lora_spec, parse_recipe
from .job import JobInputError, emit, read_spec, run_job, stop_on_sigterm  # noqa: F401 - stop_on_sigterm: the tests
from .families import registry

USAGE = "usage: python -m dmd2_worker.export <spec.json>"
STUDENT_FILE = "dmd2_student.json"
TEACHER_README = "TEACHER_README.md"
TIMESTEP_SCALING = 10000.0


# Bad input (exit status 2): the jobs' input error (job.py), one line naming the run folder, checkpoint or option
ExportError = JobInputError  # the name the tests and callers know


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def student_network(recipe: Recipe, teacher_dir: Path, checkpoint: Path) -> tuple[torch.nn.Module, str, bool]:
    """The generator of `checkpoint` rebuilt on the teacher's UNet: (network with `.unet`, family, EMA used)."""
    from .adapters.registry import family_of
    from .roles.common import load_network_state

    family = family_of(teacher_dir)
    fam = registry().family(family)
    if fam.parametrisation == "flow":  # flow-matching families: their export needs a flow-matching scheduler
        raise ExportError(None, f"{teacher_dir}: dmd2 export does not write {family} pipelines yet (their student needs "
                                f"a flow-matching scheduler export); look at the run's images with dmd2 sample <run> --prompt")
    if not fam.is_text:
        from .teacher_training import load_network

        net, _ = load_network(teacher_dir)
    else:
        from .models.unet2d_condition import UNet2DConditionNet
        from .roles.text import load_text_unet

        net = UNet2DConditionNet(load_text_unet(teacher_dir, torch.device("cpu")))
    spec = lora_spec(recipe)
    if spec is not None:
        from .lora import apply_lora

        apply_lora(net, spec, seed=recipe.seed)
    ema = checkpoint / EMA_FILE
    weights = ema if ema.is_file() else checkpoint / "generator.safetensors"
    if not weights.is_file():
        raise JobInputError("checkpoint", f"{checkpoint}: no generator.safetensors (an incomplete checkpoint?)")
    load_network_state(weights, net)
    return net.eval(), family, ema.is_file()


def lcm_scheduler_config(teacher_dir: Path, clip_sample: bool = False) -> dict[str, Any]:
    """The teacher's noise schedule as an LCMScheduler config (the student samples on the teacher's schedule);
    `clip_sample` (generator.clip_sample): each step's x0 clamped to [-1, 1], as in training."""
    from diffusers import LCMScheduler

    from .adapters.base import read_scheduler_config

    cfg = read_scheduler_config(teacher_dir)
    keep = {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
                                "trained_betas") if k in cfg}
    # original_inference_steps = T: LCM's "original schedule" is then every timestep 0..T-1, so custom timesteps are
    # taken without its "not on the original training/distillation timestep schedule" warning, and
    # set_timesteps(num_inference_steps=N) gives T-1 - i*T/N ([999, 749, 499, 249] for N = 4 of 1000; [999] for 1)
    scheduler = LCMScheduler(**keep, clip_sample=clip_sample, clip_sample_range=1.0, set_alpha_to_one=False, thresholding=False,
                             timestep_scaling=TIMESTEP_SCALING,
                             original_inference_steps=int(cfg.get("num_train_timesteps", 1000)),
                             # unused by LCMScheduler; 1 spares the SD pipelines' "outdated config" FutureWarning
                             steps_offset=1)
    return dict(scheduler.config)


def default_timesteps(steps: int, num_train_timesteps: int) -> list[int]:
    """What the exported LCMScheduler's `set_timesteps(num_inference_steps=steps)` gives (original_inference_steps = T):
    T-1 - floor(i T / N), e.g. [999, 749, 499, 249] for 4 of 1000."""
    T = num_train_timesteps
    return [T - 1 - (i * T) // steps for i in range(steps)]


def model_card(recipe: Recipe, family: str, timesteps: list[int], run_dir: Path, checkpoint: Path, ema: bool,
               lora: bool, num_classes: int | None = None, teacher_readme: bool = False) -> str:
    """README.md of the export. Its Python block runs as it stands once `<this folder>` is replaced by the export's
    path (tests/test_export_card.py runs it)."""
    ts = ", ".join(map(str, timesteps))
    n = len(timesteps)
    T = recipe.diffusion.num_train_timesteps
    by_steps = timesteps == default_timesteps(n, T)
    fam = registry().family(family)
    kind = fam.title
    lines = [f"# {recipe.name}: a {n}-step student distilled with dmd2 (DMD2)", "",
             f"- teacher: `{recipe.teacher.path}` ({kind})",
             f"- run: `{run_dir}`, checkpoint `{checkpoint.name}`{' (EMA weights)' if ema else ''}",
             f"- sampling: {n} step(s) at timesteps [{ts}], no classifier-free guidance (it is distilled in: "
             f"real_guidance_scale {recipe.dmd.real_guidance_scale})"]
    if teacher_readme:
        lines += [f"- the teacher's own model card, whose license and terms apply to this student too: "
                  f"[{TEACHER_README}]({TEACHER_README})"]
    lines += [""]
    if lora:
        lines += ["This folder holds LoRA adapters for the teacher's pipeline. Sample with:", "", "```python",
                  "import torch", "from diffusers import DiffusionPipeline, LCMScheduler",
                  f"pipe = DiffusionPipeline.from_pretrained(\"{recipe.teacher.path}\")",
                  "pipe.load_lora_weights(\"<this folder>\", weight_name=\"pytorch_lora_weights.safetensors\")",
                  "pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, "
                  f"timestep_scaling={TIMESTEP_SCALING:g},",
                  f"                                           original_inference_steps={T})",
                  f"image = pipe(\"a photo of a cat\", timesteps=[{ts}], guidance_scale=1.0,",
                  "             generator=torch.Generator().manual_seed(0)).images[0]", "```", ""]
    elif fam.export.card == "backbone_loop":
        backbone = fam.backbone_class
        labels = ", class_labels=labels" if num_classes else ""
        lines += ["A diffusers folder: `unet/` is the student, `scheduler/` an LCMScheduler that samples as it was "
                  "trained (x0 prediction, re-noised with fresh noise from the same generator). Sample 16 images "
                  "with:", "", "```python",
                  "import torch", f"from diffusers import {fam.export.scheduler}, {backbone}",
                  f"unet = {backbone}.from_pretrained(\"<this folder>\", subfolder=\"{fam.backbone_subfolder}\")",
                  f"scheduler = {fam.export.scheduler}.from_pretrained(\"<this folder>\", subfolder=\"scheduler\")",
                  f"scheduler.set_timesteps(timesteps=[{ts}])",
                  "g = torch.Generator().manual_seed(0)",
                  "size = unet.config.sample_size",
                  "x = torch.randn(16, unet.config.in_channels, size, size, generator=g)"]
        if num_classes:
            lines += [f"labels = torch.arange(16) % {num_classes}  # the class of each image, 0..{num_classes - 1}"]
        lines += ["with torch.no_grad():",
                  "    for t in scheduler.timesteps:",
                  f"        out = unet(x, t{labels}).sample",
                  "        x = scheduler.step(out, t, x, generator=g).prev_sample",
                  "images = (x.clamp(-1, 1) + 1) / 2  # (16, C, H, W) in [0, 1]", "```", "",
                  "With the same seed this gives the images `dmd2 sample --num 16 --seed 0` gives."]
        if not num_classes and by_steps:
            lines += [f"The stock pipeline does the same: `{fam.export.pipeline}.from_pretrained(\"<this folder>\")(batch_size=16, "
                      f"num_inference_steps={n}, generator=torch.Generator().manual_seed(0))`."]
        elif num_classes:
            lines += ["(No stock diffusers pipeline takes class labels, hence the loop.)"]
    else:
        call = f"num_inference_steps={n}" if by_steps else f"timesteps=[{ts}]"
        lines += ["A diffusers pipeline folder with the student as its UNet and an LCMScheduler that samples as it "
                  "was trained. Sample with:", "", "```python", "import torch",
                  "from diffusers import DiffusionPipeline", "pipe = DiffusionPipeline.from_pretrained(\"<this folder>\")",
                  f"image = pipe(\"a photo of a cat\", {call}, guidance_scale=1.0,",
                  "             generator=torch.Generator().manual_seed(0)).images[0]", "```", "",
                  "With the same seed and prompt this gives the images `dmd2 sample` gives"
                  + (f" (`timesteps=[{ts}]` does the same)." if by_steps else ".")]
    return "\n".join(lines) + "\n"


def export(spec: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    run_dir, checkpoint, out = Path(spec["run_dir"]), Path(spec["checkpoint"]), Path(spec["out"])
    want_lora = bool(spec.get("lora", False))
    recipe = parse_recipe(json.loads((run_dir / "recipe.resolved.json").read_text(encoding="utf-8")))
    if recipe.teacher.source != "diffusers" or not recipe.teacher.path:
        raise JobInputError("run_dir", f"{run_dir}: its teacher is the built-in network, not a diffusers model; export "
                            f"needs a run whose teacher.source is diffusers (a UNet2DModel or Stable Diffusion folder)")
    teacher_dir = Path(recipe.teacher.path)
    if not teacher_dir.is_dir():
        raise JobInputError("teacher.path", f"the run's teacher folder {teacher_dir} does not exist (teacher.path "
                            f"of {run_dir / 'recipe.resolved.json'}; put the teacher back there)")
    spec_lora = lora_spec(recipe)
    if want_lora and spec_lora is None:
        raise JobInputError("lora", f"--lora: {run_dir} trained the whole network (generator.lora.rank is null); "
                            f"drop --lora for a full export")
    log(f"loading the generator of {checkpoint.name} on the teacher {teacher_dir}")
    net, family, ema = student_network(recipe, teacher_dir, checkpoint)
    fam = registry().family(family)
    if want_lora and not fam.export.lora_file:
        raise JobInputError("lora", f"--lora: diffusers has no LoRA loader for {fam.backbone_class} pipelines; drop "
                            f"--lora for a full export (the adapters merged into the UNet)")
    timesteps = [int(t) for t in recipe.generator.timesteps]

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if want_lora:
            from .lora import LORA_WEIGHT_NAME, export_lora

            tmp.mkdir(parents=True)
            export_lora(net, tmp / LORA_WEIGHT_NAME, spec_lora)
        else:
            log(f"copying {teacher_dir} (hard links where possible)")
            replaced = {"unet", "scheduler", STUDENT_FILE, "README.md", TEACHER_README}  # at the top level only
            shutil.copytree(teacher_dir, tmp, copy_function=_link_or_copy,
                            ignore=lambda d, names: [n for n in names if n in replaced and Path(d) == teacher_dir])
            if (teacher_dir / "README.md").is_file():  # the teacher's model card: its license goes with the student
                _link_or_copy(str(teacher_dir / "README.md"), str(tmp / TEACHER_README))
            unet = net.unet
            if spec_lora is not None:
                from .lora import merge_lora

                unet = merge_lora(net)
            log("writing the student's UNet")
            unet.save_pretrained(tmp / "unet")
            scheduler_cfg = lcm_scheduler_config(teacher_dir, recipe.generator.clip_sample)
            (tmp / "scheduler").mkdir()
            (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_cfg, indent=2) + "\n")
            index = tmp / "model_index.json"
            if index.is_file():
                model_index = json.loads(index.read_text(encoding="utf-8"))
                model_index["scheduler"] = ["diffusers", fam.export.scheduler]
                index.unlink()  # may be a hard link to the teacher's file: never write through it
                index.write_text(json.dumps(model_index, indent=2) + "\n")
        student = {"format": "dmd2-student", "version": 1, "timesteps": timesteps, "steps": len(timesteps),
                   "run_dir": str(run_dir), "checkpoint": checkpoint.name, "ema": ema, "lora": want_lora,
                   "teacher": str(teacher_dir), "family": family}
        (tmp / STUDENT_FILE).write_text(json.dumps(student, indent=2) + "\n")
        # Hub metadata first (card_metadata.py), then the card's text
        meta = card_metadata(family, len(timesteps), want_lora, teacher_dir, teacher_dir / "README.md")
        (tmp / "README.md").write_text(front_matter(meta) + model_card(recipe, family, timesteps, run_dir, checkpoint,
                                                                       ema, want_lora, getattr(net, "num_classes", None),
                                                                       (tmp / TEACHER_README).is_file()))
        if out.exists():
            shutil.rmtree(out)  # the CLI only gets here with --force (or an empty folder)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {"out": str(out), "timesteps": timesteps, "files": files, "family": family, "ema": ema}


def run(path: str) -> None:
    result = export(read_spec(path, "the export spec"), lambda m: emit({"event": "progress", "message": m}))
    emit({"event": "done", **result})


def main(argv: Sequence[str] | None = None) -> int:
    return run_job(argv, USAGE, run)


if __name__ == "__main__":
    sys.exit(main())
