"""The few-step generator G (docs/protocol.md §4, docs/method.md "Generator").

`generator.generate` keeps the autograd graph of `x_gen` (when `grad`) until `generator.update` of the same step
back-propagates the DMD loss (and the discriminator's `gan_grad`) through it; with generator.backprop_through_chain
the graph reaches back through the k steps of backward simulation that made G's input.

Text-to-image teachers (`data.source: prompts`, docs/adapters.md §6): this role's worker holds the tokenizer(s)
and text encoder(s) (and the VAE, for `sample`): `generate` draws the batch's prompts from `data.prompts.file` and
writes their encodings as the step tensors `cond_hidden` (and for SDXL `cond_pooled`, `cond_time_ids`) instead of
`cond`; `x_gen`, `x_t_dmd` are latents; `sample` encodes its prompts and VAE-decodes the latents to pixels.

Random draws, in order:
- generate: cond (uniform classes; only when conditional) or, for text, the prompts (indices uniform over the
  prompts file), k (uniform in [0, N); then N - 1 with generator.last_step_only), z, one re-noise noise per step
  before k, then if `dmd`: t_dmd, noise.
- sample: z, then one re-noise noise per step after the first.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from .base import TensorStore, WorkerContext
from .common import (Args, RoleBase, TrainedNetworkState, image_input, load_network_state, load_student_network,
                     network_state, param_count, randint, randn, seeded_generator, x0_function)
from ..config import lora_spec
from .text import is_text_recipe, store_conditioning
from ..checkpoint import EMA_FILE, save_tensors
from ..diffusion import dmd_timestep_range, generator_timesteps
from ..images import save_grid, save_images
from ..losses import dmd_gradient, dmd_loss
from ..placement import all_reduce_gradients, all_reduce_sum
from ..optim import build_adamw, clip_grad_norm, guarded_step, optimizer_params
from ..sampling import backward_simulation, sample_generator


class GeneratorRole(TrainedNetworkState, RoleBase):
    name = "generator"
    OP_ARGS = {
        "generate": {"seed", "batch_size", "grad", "dmd", "output_std"},
        "update": {"lr", "dmd_weight"},
        "sample": {"seed", "n", "steps", "classes", "out_dir", "prompts"},
    }
    ENCODE_BATCH = 64  # prompts per text-encoder call in sample

    def setup(self, body: dict[str, Any], ctx: WorkerContext) -> dict[str, Any]:
        self.adapter = None  # text-to-image: the teacher folder's adapter (tokenizers, text encoders, VAE)
        self._prompts: list[str] | None = None  # data.prompts.file, read at first use
        unet = None
        if is_text_recipe(ctx.recipe):
            from ..adapters.registry import load_adapter

            teacher_dir = body.get("teacher_dir")
            if not isinstance(teacher_dir, str) or not teacher_dir:
                raise ValueError("generator.setup: setup needs 'teacher_dir' (the folder the teacher's setup replied with)")
            from .text import check_text_teacher

            check_text_teacher(teacher_dir, ctx.recipe)
            self.adapter = load_adapter(teacher_dir, ctx.device)
            unet = self.adapter.unet  # trained here as the generator (the adapter never calls it)
        self.lora = lora_spec(ctx.recipe)  # None: the whole network trains
        net, schedule = load_student_network(body.get("teacher_dir"), ctx, "generator.setup", unet=unet, lora=self.lora)
        self.net = net
        self.schedule = schedule
        self.G = x0_function(net, schedule, ctx.recipe.generator.clip_sample)
        self.recipe = ctx.recipe
        self.timesteps = list(ctx.recipe.generator.timesteps)
        self.image_shape = (net.in_channels, net.image_size, net.image_size)
        self.optimizer = build_adamw(self.trained(), ctx.recipe.generator.lr, ctx.recipe.optim)
        self.graph: tuple[torch.Tensor, int | None] | None = None  # (x_gen with grad, its step)
        self.updates = 0
        self.writes_files = ctx.writes_files
        # an exponential moving average of the weights (generator.ema_decay > 0): what sample uses and saves as
        # generator.ema.safetensors; the raw weights go on training (with LoRA: of the adapters)
        decay = ctx.recipe.generator.ema_decay
        self.ema_decay = decay
        self.ema = [p.detach().clone() for p in self.trained()] if decay > 0 else None
        self.ready = True
        reply = {"params": param_count(net)}
        if self.lora is not None:
            reply["trained_params"] = sum(p.numel() for p in self.trained())
        return reply

    def trained(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer and the EMA see: all of the network's, or its LoRA adapters'."""
        return [p for p in self.net.parameters() if p.requires_grad]

    # --- ops -------------------------------------------------------------------------------------------------

    def op_generate(self, args: Args, store: TensorStore, ctx: WorkerContext, step: int | None) -> dict[str, float]:
        seed = args.int("seed", 0)
        B = args.int("batch_size", 1)
        grad = args.bool("grad")
        dmd = args.bool("dmd")
        self.graph = None
        g = seeded_generator(seed)
        dev = ctx.device
        shard = ctx.shard  # a replicated generator: this rank's rows of a batch of B drawn whole
        if shard is not None:
            B = shard.local_batch(B, args.where)
        K = self.net.num_classes
        if self.adapter is not None:  # text: the whole batch's prompt draw, this rank's rows, encoded once
            prompts = self.training_prompts()
            index = randint(0, len(prompts), B, g, dev, shard)
            cond = self.encode([prompts[i] for i in index.tolist()])
        else:
            cond = randint(0, K, B, g, dev, shard) if K is not None else None
        N = len(self.timesteps)
        k = int(torch.randint(0, N, (1,), generator=g))  # drawn either way: the later draws stay the same
        if self.recipe.generator.last_step_only:
            k = N - 1
        z = randn((B, *self.image_shape), g, dev, shard)
        through_chain = grad and self.recipe.generator.backprop_through_chain
        x = backward_simulation(self.G, z, cond, self.timesteps, k, self.schedule, g,
                                noise_fn=lambda like: randn(tuple(like.shape), g, like.device, shard), grad=through_chain)
        t_k = torch.full((B,), self.timesteps[k], dtype=torch.long, device=dev)
        with torch.set_grad_enabled(grad):
            x_gen = self.G(x, t_k, cond)
        if grad:
            self.graph = (x_gen, step)
        if self.adapter is not None:
            store_conditioning(store, cond)
        elif cond is not None:
            store["cond"] = cond
        store["x_gen"] = x_gen.detach()
        if dmd:
            T = self.schedule.num_train_timesteps
            lo, hi = dmd_timestep_range(self.recipe.dmd.min_t, self.recipe.dmd.max_t, T)
            t_dmd = randint(lo, hi + 1, B, g, dev, shard)
            noise = randn((B, *self.image_shape), g, dev, shard)
            store["t_dmd"] = t_dmd
            store["x_t_dmd"] = self.schedule.add_noise(x_gen.detach(), t_dmd, noise)
        metrics = {"gen_k": float(k)}
        if args.optional("output_std") is True and x_gen.shape[0] > 1:
            # x_gen's spread across the batch, averaged over its values (the coordinator's collapse alarm)
            metrics["x_gen_std"] = float(x_gen.detach().float().std(dim=0).mean())
        return metrics

    def op_update(self, args: Args, store: TensorStore, ctx: WorkerContext, step: int | None) -> dict[str, float]:
        """DMD gradient and loss from x0_real / x0_fake; one autograd.backward of dmd_weight * loss_dmd and, when the
        store has it, gan_grad on x_gen; global clipping; AdamW step at `lr`.

        Metrics: loss_dmd (unweighted), dmd_grad_norm (L2 norm of the whole DMD gradient tensor), gen_grad_norm
        (global norm of G's parameter gradients before clipping)."""
        lr = args.number("lr", 0.0)
        dmd_weight = args.number("dmd_weight", 0.0)
        where = args.where
        if self.graph is None:
            raise ValueError(f"{where}: no generator graph to back-propagate through: run generator.generate with "
                             f"grad=true earlier in the same step")
        x_gen, graph_step = self.graph
        if step is not None and graph_step is not None and graph_step != step:
            raise ValueError(f"{where}: the kept generator graph is from step {graph_step}, this is step {step}")
        B = x_gen.shape[0]
        x0_real = image_input(store, "x0_real", where, self.image_shape, ctx.device, B)
        x0_fake = image_input(store, "x0_fake", where, self.image_shape, ctx.device, B)
        gan_grad = image_input(store, "gan_grad", where, self.image_shape, ctx.device, B) if "gan_grad" in store else None
        if gan_grad is not None and ctx.shard is not None:
            # gan_grad rows are gradients of the whole batch's mean loss; the all-reduce below averages over ranks
            gan_grad = gan_grad * ctx.shard.world

        grad = dmd_gradient(x_gen, x0_real, x0_fake)
        loss_dmd = dmd_loss(x_gen, grad)
        if self.inject_nan:
            loss_dmd = loss_dmd * float("nan")
        self.optimizer.zero_grad(set_to_none=True)
        outputs = [dmd_weight * loss_dmd]
        grads = [torch.ones_like(loss_dmd)]
        if gan_grad is not None:
            outputs.append(x_gen)
            grads.append(gan_grad)
        torch.autograd.backward(outputs, grads)
        self.graph = None
        params = optimizer_params(self.optimizer)
        all_reduce_gradients(params, ctx.shard)
        gen_grad_norm = clip_grad_norm(params, self.recipe.optim.grad_clip)
        dmd_grad_norm = float(all_reduce_sum(grad.detach().pow(2).sum(), ctx.shard).sqrt())
        metrics = {"loss_dmd": float(loss_dmd.detach()), "dmd_grad_norm": dmd_grad_norm, "gen_grad_norm": gen_grad_norm}
        metrics["skipped_nonfinite"] = guarded_step(self.optimizer, lr, metrics, self.recipe.train.on_nonfinite, where, step)
        if self.ema is not None and not metrics["skipped_nonfinite"]:
            with torch.no_grad():
                for e, p in zip(self.ema, self.trained()):
                    e.lerp_(p.detach(), 1.0 - self.ema_decay)
        self.updates += 1
        return metrics

    @torch.no_grad()
    def op_sample(self, args: Args, store: TensorStore, ctx: WorkerContext, step: int | None) -> dict[str, float]:
        """`n` samples in `steps` steps. Class labels: `classes` cycled (default: i mod K). Text: `prompts` (an
        optional arg; default the prompts file's) cycled, `labels` their indices; latents are VAE-decoded to pixels
        and `out_dir/prompts.txt` lists each image's prompt."""
        seed = args.int("seed", 0)
        n = args.int("n", 1)
        steps = args.int("steps", 1)
        classes = args.int_list_or_none("classes")
        out_dir = Path(args.str("out_dir"))
        where = args.where
        prompts = self._sample_prompts(args.optional("prompts"), where)
        K = self.net.num_classes
        if prompts is not None:
            if classes is not None:
                raise ValueError(f"{where}: this generator is conditioned on text: give 'prompts', not 'classes'")
            labels = torch.arange(n, dtype=torch.long) % len(prompts)
        elif K is None:
            labels = torch.full((n,), -1, dtype=torch.long)
        elif classes is None:
            labels = torch.arange(n, dtype=torch.long) % K
        else:
            if not classes:
                raise ValueError(f"{where}: arg 'classes' must not be empty")
            bad = [c for c in classes if not 0 <= c < K]
            if bad:
                raise ValueError(f"{where}: classes {bad} outside [0, {K})")
            labels = torch.tensor([classes[i % len(classes)] for i in range(n)], dtype=torch.long)
        if steps == len(self.timesteps):
            ts = self.timesteps
        else:
            ts = generator_timesteps(steps, self.recipe.generator.conditioning_timestep)
        g = seeded_generator(seed)
        dev = ctx.device
        z = randn((n, *self.image_shape), g, dev)
        if prompts is not None:
            texts = [prompts[i] for i in labels.tolist()]
            cond = self.encode(texts)
        else:
            cond = labels.to(dev) if K is not None else None
        with self.ema_weights():
            samples = sample_generator(self.G, z, cond, ts, self.schedule, g).float()
        latents = None
        if self.adapter is not None:
            latents = samples
            samples = torch.cat([self.adapter.vae_decode(latents[i:i + 8]) for i in range(0, n, 8)]).clamp(-1, 1)
        store["samples"] = samples
        store["labels"] = labels.to(dev)
        if not ctx.writes_files:  # a sharded generator's other ranks only took part in the forward passes
            return {}
        out_dir.mkdir(parents=True, exist_ok=True)
        save_images(samples, out_dir / "images")
        save_grid(samples, out_dir / "grid.png")
        tensors = {"samples": samples, "labels": labels}
        if latents is not None:
            tensors["latents"] = latents
            (out_dir / "prompts.txt").write_text("".join(f"{t}\n" for t in texts), encoding="utf-8")
        save_tensors(out_dir / "samples.safetensors", tensors)
        return {}

    # --- text --------------------------------------------------------------------------------------------------

    def training_prompts(self) -> list[str]:
        """data.prompts.file's prompts (prompts.py), read once."""
        if self._prompts is None:
            from ..prompts import read_prompts_file

            self._prompts = read_prompts_file(self.recipe.data.prompts.file)
        return self._prompts

    def _sample_prompts(self, value: Any, where: str) -> list[str] | None:
        """The prompts `sample` uses: None for a class-label generator (where `prompts` must be null or absent)."""
        if self.adapter is None:
            if value is not None:
                raise ValueError(f"{where}: this generator is not conditioned on text (its data is "
                                 f"{self.recipe.data.source}): give 'classes', not 'prompts'")
            return None
        if value is None:
            return self.training_prompts()
        if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
            raise ValueError(f"{where}: arg 'prompts' must be a non-empty list of strings or null, got {value!r}")
        return value

    def encode(self, prompts: list[str]) -> Any:
        """The prompts' Conditioning (float32, on the role's device), ENCODE_BATCH at a time."""
        from ..adapters.base import Conditioning

        parts = [self.adapter.encode_prompts(prompts[i:i + self.ENCODE_BATCH])
                 for i in range(0, len(prompts), self.ENCODE_BATCH)]
        return Conditioning.cat(parts).to(self.adapter.device, torch.float32)

    # --- state -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def ema_weights(self):
        """The network with the EMA weights in place (when kept), the raw ones back afterwards."""
        if self.ema is None:
            yield
            return
        self._reshard()
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.trained()]
            for p, e in zip(self.trained(), self.ema):
                p.copy_(e)
        try:
            yield
        finally:
            self._reshard()
            with torch.no_grad():
                for p, r in zip(self.trained(), raw):
                    p.copy_(r)

    def _reshard(self) -> None:
        """A sharded (FSDP) network keeps its root's parameters gathered after a forward pass without backward:
        shard them again so that its parameters are the sharded ones the EMA mirrors."""
        reshard = getattr(self.net, "reshard", None)
        if callable(reshard):
            reshard()

    def save(self, directory: Path) -> list[Path]:
        files = super().save(directory)  # generator.safetensors (raw weights) and the optimizer
        if self.ema is None:
            return files
        with self.ema_weights():
            # copies: the state dict's tensors are the parameters themselves, which get the raw weights back
            ema = {k: v.detach().clone() for k, v in network_state(self.net).items()}  # a collective when sharded
        if not self.writes_files:
            return files
        return [*files, save_tensors(Path(directory) / EMA_FILE, ema)]

    def restore(self, directory: Path) -> None:
        super().restore(directory)
        self.graph = None
        if self.ema is not None:
            path = Path(directory) / EMA_FILE
            if path.is_file():
                with self.ema_weights():
                    load_network_state(path, self.net)
                    self.ema = [p.detach().clone() for p in self.trained()]
            else:  # a checkpoint from a run without EMA: start the average at the weights
                self.ema = [p.detach().clone() for p in self.trained()]
