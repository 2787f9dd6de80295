"""The fake score network and the discriminator head on its bottleneck (docs/protocol.md §4, docs/method.md).

The two roles share one backbone and one AdamW optimizer: `discriminator.setup` adds the head's parameters to
the fake score's optimizer as a second param group, and `fake_score.update` takes one step over both.

Random draws, in order:
- fake_score.update: t (uniform in [0, T)), noise; then if gan_weight > 0: the real batch
  (`DataSource.sample(B, g)` on the data's train split, docs/pipeline.md §1: gmm draws labels then noise, digits
  and folder draw indices), and with `gan.diffusion_gan` D's t and noise for the fake batch, then for the real
  batch.
- discriminator.generator_gan_grad: with `gan.diffusion_gan`: t (uniform in [0, T)), noise.

Text-to-image teachers (`data.source: prompts`): conditioning comes from the step tensors `cond_hidden` (SDXL:
also `cond_pooled`, `cond_time_ids`); the real batch is drawn from the latent cache (latent_cache.py, indices
uniform over its images, with their captions' encodings), which set-up makes or reuses when the GAN is on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import TensorStore, WorkerContext
from .common import (Args, RoleBase, TrainedNetworkState, image_input, index_input, load_student_network, log,
                     net_cond_input, param_count, randint, randn, seeded_generator)
from .text import check_text_teacher, is_text_recipe, load_text_unet
from ..checkpoint import load_module, module_state, save_tensors
from ..step_plan import SALT_HEAD_INIT, op_seed
from ..data import build_data_source
from ..losses import fake_score_denoising_loss, gan_discriminator_loss, gan_generator_loss
from ..models.discriminator_head import DiscriminatorHead
from ..placement import all_reduce_gradients, apply_fsdp
from ..optim import build_adamw, clip_grad_norm, guarded_step, optimizer_params


class FakeScoreRole(TrainedNetworkState, RoleBase):
    name = "fake_score"
    OP_ARGS = {"predict_x0": set(), "update": {"seed", "lr", "gan_weight"}}

    def setup(self, body: dict[str, Any], ctx: WorkerContext) -> dict[str, Any]:
        unet = None
        self.latents = None  # text: the latent cache of the GAN's real images
        if is_text_recipe(ctx.recipe):
            unet, self.latents = self._text_setup(body.get("teacher_dir"), ctx)
        net, schedule = load_student_network(body.get("teacher_dir"), ctx, "fake_score.setup", unet=unet)
        self.net = net
        self.schedule = schedule
        self.recipe = ctx.recipe
        self.image_shape = (net.in_channels, net.image_size, net.image_size)
        self.data = None if is_text_recipe(ctx.recipe) else build_data_source(ctx.recipe.data, "train")
        self.optimizer = build_adamw(net.parameters(), ctx.recipe.fake_score.lr, ctx.recipe.optim)
        self.updates = 0
        self.writes_files = ctx.writes_files
        self.ready = True
        return {"params": param_count(net)}

    def _text_setup(self, teacher_dir: Any, ctx: WorkerContext) -> tuple[torch.nn.Module, Any]:
        """The folder's UNet and, with the GAN on, the latent cache (made now unless the run's is up to date: the
        VAE and text encoders are loaded for that only, around this UNet, and dropped after)."""
        if not isinstance(teacher_dir, str) or not teacher_dir:
            raise ValueError("fake_score.setup: setup needs 'teacher_dir' (the folder the teacher's setup replied with)")
        recipe = ctx.recipe
        check_text_teacher(teacher_dir, recipe)
        unet = load_text_unet(teacher_dir, ctx.device)
        images = recipe.data.prompts.images
        if not recipe.gan.enabled or not images:
            return unet, None
        from ..adapters.base import read_json_object
        from ..adapters.registry import load_adapter
        from ..latent_cache import latent_cache

        size = getattr(unet.config, "sample_size", None)
        vae_config = read_json_object(Path(teacher_dir) / "vae" / "config.json")
        if size is None:  # a transformer without a sample size (Flux): the pipeline's default, the VAE's sample_size
            image_size = int(vae_config["sample_size"])
        else:
            size = size[0] if isinstance(size, (list, tuple)) else size
            blocks = vae_config.get("block_out_channels") or vae_config.get("encoder_block_out_channels", [0])  # DC-AE: encoder_
            image_size = int(size) * 2 ** (len(blocks) - 1)
        cache = latent_cache(Path(ctx.run_dir), Path(images), Path(teacher_dir), image_size,
                             lambda: load_adapter(teacher_dir, ctx.device, unet=unet), log, writer=ctx.writes_files)
        return unet, cache

    @torch.no_grad()
    def op_predict_x0(self, args: Args, store: TensorStore, ctx: WorkerContext, step: int | None) -> dict[str, float]:
        """x0_fake: the fake score's output (no guidance) converted to x0."""
        where = args.where
        x_t = image_input(store, "x_t_dmd", where, self.image_shape, ctx.device)
        B = x_t.shape[0]
        t = index_input(store, "t_dmd", where, B, 0, self.schedule.num_train_timesteps, ctx.device)
        cond = net_cond_input(store, where, B, self.net, ctx.device)
        store["x0_fake"] = self.schedule.to_x0(self.net(x_t, t, cond), x_t, t)
        return {}

    def op_update(self, args: Args, store: TensorStore, ctx: WorkerContext, step: int | None) -> dict[str, float]:
        """Denoising loss on detached x_gen (+ gan_weight * D loss), one AdamW step over fake score + head.

        Metrics: loss_fake, loss_gan_d (unweighted L_D), d_real and d_fake (mean logits); the last three are 0.0
        when gan_weight is 0."""
        seed = args.int("seed", 0)
        lr = args.number("lr", 0.0)
        gan_weight = args.number("gan_weight", 0.0)
        where = args.where
        x = image_input(store, "x_gen", where, self.image_shape, ctx.device).detach()
        B = x.shape[0]
        cond = net_cond_input(store, where, B, self.net, ctx.device)
        disc = None
        if gan_weight > 0:
            disc = ctx.roles.get("discriminator")
            if disc is None or not getattr(disc, "ready", False):
                raise ValueError(f"{where}: gan_weight is {gan_weight} but no discriminator is set up in this worker")

        g = seeded_generator(seed)
        dev = ctx.device
        shard = ctx.shard  # replicated: draws are the whole batch's, this rank keeps its rows (placement.py)
        t = randint(0, self.schedule.num_train_timesteps, B, g, dev, shard)
        noise = randn(tuple(x.shape), g, dev, shard)
        loss_fake = fake_score_denoising_loss(self.net, x, t, noise, cond, self.schedule)
        total = loss_fake
        metrics = {"loss_fake": float(loss_fake.detach()), "loss_gan_d": 0.0, "d_real": 0.0, "d_fake": 0.0}
        if disc is not None:
            if self.latents is not None:  # text: cached latents and their captions' encodings
                x_real, cond_real = self.latents.sample(B * (shard.world if shard else 1), g)
                if shard is not None:
                    x_real, cond_real = x_real[shard.rows(B)], cond_real.rows(shard.rows(B))
                x_real, cond_real = x_real.to(dev), cond_real.to(dev)
            elif self.data is None:
                raise ValueError(f"{where}: gan_weight is {gan_weight} but there are no real images (set "
                                 f"data.prompts.images)")
            else:
                x_real, labels_real = self.data.sample(B * (shard.world if shard else 1), g)
                if shard is not None:
                    x_real = x_real[shard.rows(B)]
                    labels_real = None if labels_real is None else labels_real[shard.rows(B)]
                x_real = x_real.to(dev)
                cond_real = None if labels_real is None else labels_real.to(dev)  # None: unconditional data
            logits_fake = disc.logits(x, cond, g, dev, shard)
            logits_real = disc.logits(x_real, cond_real, g, dev, shard)
            loss_d = gan_discriminator_loss(logits_real, logits_fake)
            total = total + gan_weight * loss_d
            metrics.update(loss_gan_d=float(loss_d.detach()), d_real=float(logits_real.detach().mean()),
                           d_fake=float(logits_fake.detach().mean()))
        if self.inject_nan:
            total = total * float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        all_reduce_gradients(optimizer_params(self.optimizer), shard)
        grad_norm = clip_grad_norm(optimizer_params(self.optimizer), self.recipe.optim.grad_clip)
        metrics["skipped_nonfinite_fake"] = guarded_step(
            self.optimizer, lr, {"loss_fake_total": float(total.detach()), "fake_grad_norm": grad_norm},
            self.recipe.train.on_nonfinite, where, step)
        self.updates += 1
        return metrics

    # save/restore (TrainedNetworkState): fake_score.safetensors (backbone) and the shared optimizer (backbone +
    # head param groups); restore needs the discriminator (if any) set up already, since that state covers its head.


class DiscriminatorRole(RoleBase):
    name = "discriminator"
    OP_ARGS = {"generator_gan_grad": {"seed", "weight"}}

    def setup(self, body: dict[str, Any], ctx: WorkerContext) -> dict[str, Any]:
        """Build the head on the fake score backbone of this process; its parameters join the fake score's optimizer."""
        if self.ready:
            raise ValueError("discriminator.setup: already set up (its head is in the fake score's optimizer)")
        fake = ctx.roles.get("fake_score")
        if fake is None or not getattr(fake, "ready", False):
            raise ValueError("discriminator.setup: needs the fake_score role set up first in the same worker")
        self.fake = fake
        self.recipe = ctx.recipe
        net = fake.net
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(op_seed(ctx.recipe.seed, 0, SALT_HEAD_INIT))
            head = DiscriminatorHead(net.feature_channels, net.feature_size)
        self.head = head.to(device=ctx.device, dtype=torch.float32)
        if ctx.fsdp:
            apply_fsdp(self.head)  # the shared optimizer must not mix sharded and plain parameters
        self.writes_files = ctx.writes_files
        fake.optimizer.add_param_group({"params": list(self.head.parameters()), "lr": ctx.recipe.fake_score.lr})
        self.ready = True
        return {"params": param_count(self.head)}

    def logits(self, x: torch.Tensor, cond: Any, g: torch.Generator, device: torch.device,
               shard: Any = None) -> torch.Tensor:
        """D(x) = head(fake_score.features(x_t', t', c)); with diffusion_gan t' ~ U[0, T) and x_t' the noised x
        (draws t', then noise), else t' = 0 and x_t' = x."""
        B = x.shape[0]
        schedule = self.fake.schedule
        if self.recipe.gan.diffusion_gan:
            t = randint(0, schedule.num_train_timesteps, B, g, device, shard)
            x = schedule.add_noise(x, t, randn(tuple(x.shape), g, device, shard))
        else:
            t = torch.zeros(B, dtype=torch.long, device=device)
        return self.head(self.fake.net.features(x, t, cond))

    def op_generator_gan_grad(self, args: Args, store: TensorStore, ctx: WorkerContext, step: int | None) -> dict[str, float]:
        """gan_grad = d(weight * mean softplus(-D(x_gen))) / d x_gen, by torch.autograd.grad w.r.t. the input only:
        no parameter gradient is accumulated. Metrics: loss_gan_g (unweighted L_G), d_fake_g (mean logit)."""
        seed = args.int("seed", 0)
        weight = args.number("weight", 0.0)
        where = args.where
        x_gen = image_input(store, "x_gen", where, self.fake.image_shape, ctx.device)
        B = x_gen.shape[0]
        cond = net_cond_input(store, where, B, self.fake.net, ctx.device)
        g = seeded_generator(seed)
        x = x_gen.detach().clone().requires_grad_(True)
        logits = self.logits(x, cond, g, ctx.device, ctx.shard)
        loss_g = gan_generator_loss(logits)
        (gan_grad,) = torch.autograd.grad(weight * loss_g, [x])
        if ctx.shard is not None:
            gan_grad = gan_grad / ctx.shard.world  # this rank's mean -> the whole batch's mean (placement.py)
        store["gan_grad"] = gan_grad.detach()
        return {"loss_gan_g": float(loss_g.detach()), "d_fake_g": float(logits.detach().mean())}

    def save(self, directory: Path) -> list[Path]:
        """discriminator.safetensors (the head only; its optimizer state is in the fake score's files)."""
        self.require_ready("save")
        weights = module_state(self.head)  # a collective when sharded: every rank gathers
        if not self.writes_files:
            return []
        return [save_tensors(Path(directory) / "discriminator.safetensors", weights)]

    def restore(self, directory: Path) -> None:
        self.require_ready("restore")
        load_module(Path(directory) / "discriminator.safetensors", self.head)

