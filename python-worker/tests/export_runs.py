"""What the export tests share: a stand-in for training and a run folder holding a generator checkpoint, the files
`dmd2 export` reads (recipe.resolved.json, checkpoints/step-N/generator[.ema].safetensors, manifest.json)."""
from __future__ import annotations

from pathlib import Path

import torch

from dmd2_worker.checkpoint import save_tensors, write_json
from dmd2_worker.config import recipe_to_dict
from dmd2_worker.roles.common import network_state


def perturb(net: torch.nn.Module, scale: float, seed: int, only: str = "") -> None:
    """Every weight whose name contains `only` moved by `scale` * standard normal noise (seeded): a stand-in for
    training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if only in name:
                p.add_(scale * torch.randn(p.shape, generator=g))


def write_run(recipe, net: torch.nn.Module, step: int = 2, ema: bool = False) -> tuple[Path, Path]:
    """`recipe.run_dir` with `net` as the generator of checkpoint `step`: (run folder, checkpoint folder). With `ema`
    the weights go to generator.ema.safetensors and generator.safetensors gets different ones (export must take the
    EMA)."""
    run = Path(recipe.run_dir)
    checkpoint = run / "checkpoints" / f"step-{step:08d}"
    checkpoint.mkdir(parents=True)
    write_json(run / "recipe.resolved.json", recipe_to_dict(recipe))
    state = network_state(net)
    save_tensors(checkpoint / ("generator.ema.safetensors" if ema else "generator.safetensors"), state)
    if ema:
        save_tensors(checkpoint / "generator.safetensors", {k: v + 1 for k, v in state.items()})
    write_json(checkpoint / "manifest.json", {})
    return run, checkpoint
