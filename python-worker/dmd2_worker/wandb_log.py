"""The W&B logger of a run (`logging.wandb` in the recipe; docs/recipe.md "W&B").

A small process of its own, started by the coordinator's TrainingWatch (src/run/wandb.ts) next to its TensorBoard
writer and fed the very same values over stdin, one JSON object a line:

    {"config": {...}}                                                     first: the resolved recipe
    {"step": 12, "time": 1.7e9, "scalars": {"loss/loss_dmd": 0.5, ...}}   the TensorBoard scalars of a step
    {"step": 50, "image": "samples/grid", "file": "/run/samples/step-00000050/grid.png"}

and ends the W&B run when stdin closes. The resolved recipe (what recipe.resolved.json holds) is the run's config. The W&B run
id is kept in <run_dir>/wandb/dmd2-run-id, so a resumed distill continues the same run; its files go to
<run_dir>/wandb/ (offline mode: <run_dir>/wandb/offline-run-*/, for `wandb sync`).

Why a separate process: the coordinator is TypeScript and the wandb SDK is Python; the training workers may be
replicated, on other hosts (join) or restarted, and must not slow down or fail because of logging. A failure here
(wandb not installed, a network error online) is reported in one line and ends only this process.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

EXIT_NO_WANDB = 3


def _new_run_id() -> str:
    """A W&B run id: 8 characters of [a-z0-9], as wandb makes them."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m dmd2_worker.wandb_log <run_dir>", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    first = sys.stdin.readline()
    if not first.strip():
        return 0  # the run ended before it began
    recipe = json.loads(first)["config"]
    cfg = recipe.get("logging", {}).get("wandb", {})
    try:
        import wandb
    except ImportError as e:
        print(f"logging.wandb: wandb is not installed in {sys.executable} ({e}): {sys.executable} -m pip install wandb, "
              f"or remove logging.wandb.project from the recipe", file=sys.stderr)
        return EXIT_NO_WANDB
    home = run_dir / "wandb"
    home.mkdir(exist_ok=True)
    id_file = home / "dmd2-run-id"
    run_id = id_file.read_text().strip() if id_file.is_file() else _new_run_id()
    id_file.write_text(run_id + "\n")
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=cfg.get("project"), entity=cfg.get("entity"), mode=cfg.get("mode", "online"),
                     dir=str(run_dir), id=run_id, resume="allow", name=recipe.get("name"), config=recipe)
    print(f"ready {run.dir}", flush=True)
    last = -1
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        step = int(msg["step"])
        if "scalars" in msg:
            values = {k: (float("nan") if v is None else v) for k, v in msg["scalars"].items()}
            # W&B steps only go up: a resumed run's repeated steps (already logged) are skipped
            if step > last:
                run.log(values, step=step)
                last = step
        elif "image" in msg and step >= last:
            run.log({msg["image"]: wandb.Image(msg["file"])}, step=step)
            last = step
    run.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
