"""The frozen teacher: `teacher.predict_x0` gives x0_real for the DMD gradient (docs/protocol.md §4)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import TensorStore, WorkerContext
from .common import Args, RoleBase, check_teacher_fits, cond_input, image_input, index_input, log, param_count
from .text import check_family_fits, check_text_teacher, conditioning_input, is_text_recipe
from ..diffusion import NoiseSchedule
from ..placement import apply_precision
from ..guidance import guided
from ..sampling import guided_output
from ..teacher_training import install_teacher, load_network


class TeacherRole(RoleBase):
    name = "teacher"
    OP_ARGS = {"predict_x0": {"guidance_scale"}}

    def setup(self, body: dict[str, Any], ctx: WorkerContext) -> dict[str, Any]:
        """Load the teacher frozen: `teacher.source: diffusers` from `teacher.path` itself (docs/pipeline.md §2);
        the built-in one trained (or taken from the cache) and copied to <run_dir>/teacher/ first."""
        recipe = ctx.recipe
        if is_text_recipe(recipe):
            return self._setup_text(ctx)
        check_family_fits(recipe)
        if recipe.teacher.source == "diffusers":
            teacher_dir = Path(recipe.teacher.path)
        else:
            teacher_dir = install_teacher(recipe, Path(ctx.run_dir), log=log)
        net, config = load_network(teacher_dir, ctx.device)
        check_teacher_fits(config, recipe, teacher_dir)
        if net.num_classes is not None and net.null_class is None and recipe.dmd.real_guidance_scale != 1:
            raise ValueError(f"{teacher_dir}: the teacher has no null class (no dmd2_teacher.json), so "
                             f"dmd.real_guidance_scale must be 1, got {recipe.dmd.real_guidance_scale}")
        net.requires_grad_(False)
        net.eval()
        apply_precision(net, ctx.device, ctx.precision)
        self.net = net
        self.config = config
        self.schedule = NoiseSchedule.from_config(recipe.diffusion)
        self.image_shape = tuple(config["image_shape"])
        self.uncond = None
        self.text = False
        self.ready = True
        return {"teacher_dir": str(teacher_dir), "params": param_count(net)}

    def _setup_text(self, ctx: WorkerContext) -> dict[str, Any]:
        """A text-to-image pipeline folder: its denoiser (UNet, or a flow family's transformer) frozen behind the
        family's network and schedule, and the family's unconditional input for guidance (`adapter.uncond(1)`,
        encoded once here and kept); the text encoders and the VAE are dropped after."""
        from ..adapters.registry import load_adapter

        recipe = ctx.recipe
        folder = Path(recipe.teacher.path)
        check_text_teacher(folder, recipe)
        adapter = load_adapter(folder, ctx.device)
        self.guidance_kind = getattr(adapter, "guidance_kind", "cfg")  # Flux: "embedded" (dev) or "none" (schnell)
        self.uncond = adapter.uncond(1).to(ctx.device, torch.float32) if self.guidance_kind == "cfg" else None
        net = type(adapter).network(adapter.unet, adapter.schedule, folder=folder)
        self.schedule = adapter.schedule  # the folder's (for SD 1.5 / SDXL the same as recipe.diffusion's)
        del adapter  # the text encoders and the VAE go with it
        net.requires_grad_(False)
        net.eval()
        apply_precision(net, ctx.device, ctx.precision)
        self.net = net
        self.text = True
        self.image_shape = (net.in_channels, net.image_size, net.image_size)
        self.ready = True
        return {"teacher_dir": str(folder), "params": param_count(net)}

    @torch.no_grad()
    def op_predict_x0(self, args: Args, store: TensorStore, ctx: WorkerContext, step: int | None) -> dict[str, float]:
        """x0_real = teacher output with CFG `uncond + s (cond - uncond)` (when conditional and s != 1), as x0; `uncond`
        is the null class, or for text the family's unconditional input; a guidance-distilled teacher (Flux.1-dev)
        embeds s instead, one that takes none (Flux.1-schnell) needs s = 1."""
        scale = args.number("guidance_scale")
        where = args.where
        x_t = image_input(store, "x_t_dmd", where, self.image_shape, ctx.device)
        B = x_t.shape[0]
        t = index_input(store, "t_dmd", where, B, 0, self.schedule.num_train_timesteps, ctx.device)
        if self.text:
            cond = conditioning_input(store, where, B, self.net, ctx.device)
            if self.guidance_kind == "cfg":  # guidance with the family's unconditional input
                out = guided(self.net, x_t, t, cond, self.uncond.expand(B), scale)
            elif self.guidance_kind == "embedded":  # guidance-distilled (Flux.1-dev): the scale is embedded, no CFG
                out = self.net(x_t, t, cond, guidance=scale)
            elif scale != 1.0:
                raise ValueError(f"{where}: this teacher takes no guidance (Flux.1-schnell): guidance_scale must be 1 "
                                 f"(set dmd.real_guidance_scale: 1), got {scale}")
            else:
                out = self.net(x_t, t, cond)
            store["x0_real"] = self.schedule.to_x0(out, x_t, t)
            return {}
        cond = cond_input(store, where, B, self.net.num_classes, ctx.device)
        out = guided_output(self.net, x_t, t, cond, scale, self.net.null_class)
        store["x0_real"] = self.schedule.to_x0(out, x_t, t)
        return {}

    def save(self, directory: Path) -> list[Path]:
        """The teacher is frozen; its weights are in its folder (teacher_dir). Nothing to write."""
        return []

    def restore(self, directory: Path) -> None:
        return None
