"""`python -m dmd2_worker.evaluate <spec.json>` (docs/pipeline.md §4).

Writes JSON lines on stdout: `{"event": "progress", "message": ...}` while working, then one
`{"event": "result", ...}`; on failure `{"event": "error", "message": "<one line>", "key": <spec key or null>}`
and exit status 2 (bad input: the spec, the data, a model folder) or 1 (anything else, with the traceback on
stderr); the scaffold is job.py.
"""
from __future__ import annotations

import sys
from typing import Sequence

import torch

from ..job import emit, read_spec, run_job
from .run import evaluate
from .spec import parse_eval_spec

USAGE = "usage: python -m dmd2_worker.evaluate <spec.json>"


def run(path: str) -> None:
    spec = parse_eval_spec(read_spec(path, "the evaluation spec"))
    if spec.torch_threads is not None:
        torch.set_num_threads(spec.torch_threads)
    emit(evaluate(spec, lambda message: emit({"event": "progress", "message": message})))


def main(argv: Sequence[str] | None = None) -> int:
    return run_job(argv, USAGE, run)


if __name__ == "__main__":
    sys.exit(main())
