"""Benchmark helpers for `npm run bench` (src/bench/). Not used by training or by the worker server.

    python -m dmd2_worker.bench local  --recipe RESOLVED.json --run-dir DIR --steps N --warmup W --threads T
    python -m dmd2_worker.bench sample --recipe RESOLVED.json --run-dir DIR [--generator-weights F]
                                       --n N --repeats R --threads T [--student-steps 1,2,4] [--teacher-steps 50]
    python -m dmd2_worker.bench bare-echo --connect ENDPOINT

`local` times the plain single-process loop (local_loop.train_step: the same role code, no coordinator, no
sockets) and prints one JSON object with the per-step times after warm-up. `sample` prints images per second
of the generator's few-step sampler and of the teacher's DDIM sampler. `bare-echo` is the floor for the
transport benchmark: a pyzmq DEALER that connects to ENDPOINT and sends every multipart message back as it
came (no header parsing, no copy) until it receives the single frame b"stop".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence


def _set_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch (OpenMP) loads: the caller sets it too
    import torch

    torch.set_num_threads(threads)


def _load_recipe(path: str, run_dir: str) -> Any:
    from .config import parse_recipe

    obj = json.loads(Path(path).read_text())
    obj["run_dir"] = str(Path(run_dir).resolve())
    return parse_recipe(obj)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------- local


def cmd_local(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    from .local_loop import build_roles, train_step

    recipe = _load_recipe(args.recipe, args.run_dir)
    Path(recipe.run_dir).mkdir(parents=True, exist_ok=True)
    ctx, _ = build_roles(recipe)
    times: list[float] = []
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        train_step(step, recipe, ctx)
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
    import torch

    _emit({"step_times_s": times, "first_step": args.warmup, "ttur_ratio": recipe.ttur.ratio,
           "torch_threads": torch.get_num_threads()})
    return 0


# ------------------------------------------------------------------------------------------------ sample


def cmd_sample(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    import torch

    from .checkpoint import load_module
    from .diffusion import NoiseSchedule, generator_timesteps
    from .roles.common import x0_function
    from .sampling import ddim_sample, sample_generator
    from .teacher_training import install_teacher, load_network

    recipe = _load_recipe(args.recipe, args.run_dir)
    teacher_dir = install_teacher(recipe, Path(recipe.run_dir))
    teacher, config = load_network(teacher_dir)
    teacher.eval().requires_grad_(False)
    student, _ = load_network(teacher_dir)
    if args.generator_weights:
        load_module(Path(args.generator_weights), student)
    student.eval().requires_grad_(False)
    schedule = NoiseSchedule.from_config(recipe.diffusion)
    G = x0_function(student, schedule)
    shape = tuple(config["image_shape"])
    K = teacher.num_classes
    n = args.n
    cond = (torch.arange(n) % K) if K is not None else None

    def time_it(fn: Any) -> dict[str, Any]:
        fn()  # warm-up (allocator, first-call overheads)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return {"n": n, "times_s": times, "images_per_s": [n / t for t in times]}

    rows: list[dict[str, Any]] = []
    c = recipe.generator.conditioning_timestep
    for steps in args.student_steps:
        ts = list(recipe.generator.timesteps) if steps == len(recipe.generator.timesteps) \
            else generator_timesteps(steps, c)

        def student_fn(ts: list[int] = ts) -> None:
            g = torch.Generator().manual_seed(0)
            z = torch.randn((n, *shape), generator=g)
            sample_generator(G, z, cond, ts, schedule, g)

        rows.append({"model": "student", "steps": steps, "timesteps": ts, **time_it(student_fn)})
    for steps in args.teacher_steps:
        def teacher_fn(steps: int = steps) -> None:
            g = torch.Generator().manual_seed(0)
            z = torch.randn((n, *shape), generator=g)
            ddim_sample(teacher, z, cond, schedule, steps, recipe.dmd.real_guidance_scale, teacher.null_class)

        rows.append({"model": "teacher", "steps": steps, "sampler": "ddim", **time_it(teacher_fn)})
    _emit({"rows": rows, "torch_threads": torch.get_num_threads(), "teacher_dir": str(teacher_dir),
           "generator_weights": args.generator_weights or None, "guidance_scale": recipe.dmd.real_guidance_scale})
    return 0


# --------------------------------------------------------------------------------------------- bare echo


def cmd_bare_echo(args: argparse.Namespace) -> int:
    import zmq

    zctx = zmq.Context()
    sock = zctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(args.connect)
    try:
        while True:
            frames = sock.recv_multipart(copy=False)
            if len(frames) == 1 and frames[0].bytes == b"stop":
                sock.send(b"stopped")
                return 0
            sock.send_multipart(frames, copy=False)
    finally:
        sock.close()
        zctx.term()


# -------------------------------------------------------------------------------------------------- main


def _int_list(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dmd2_worker.bench", description="dmd2 benchmark helpers")
    sub = p.add_subparsers(dest="cmd", required=True)

    local = sub.add_parser("local", help="time the plain single-process training loop")
    local.add_argument("--recipe", required=True, help="a resolved recipe (recipe.resolved.json)")
    local.add_argument("--run-dir", required=True, help="scratch run folder (the teacher is copied into it)")
    local.add_argument("--steps", type=int, required=True)
    local.add_argument("--warmup", type=int, default=5)
    local.add_argument("--threads", type=int, default=1)
    local.set_defaults(fn=cmd_local)

    sample = sub.add_parser("sample", help="images per second of the student and the teacher")
    sample.add_argument("--recipe", required=True)
    sample.add_argument("--run-dir", required=True)
    sample.add_argument("--generator-weights", default=None, help="generator.safetensors of a checkpoint")
    sample.add_argument("--n", type=int, default=256)
    sample.add_argument("--repeats", type=int, default=5)
    sample.add_argument("--threads", type=int, default=1)
    sample.add_argument("--student-steps", type=_int_list, default=[1, 2, 4])
    sample.add_argument("--teacher-steps", type=_int_list, default=[50])
    sample.set_defaults(fn=cmd_sample)

    echo = sub.add_parser("bare-echo", help="a bare pyzmq DEALER that echoes every message")
    echo.add_argument("--connect", required=True)
    echo.set_defaults(fn=cmd_bare_echo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
