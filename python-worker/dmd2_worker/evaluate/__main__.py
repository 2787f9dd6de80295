"""`python -m dmd2_worker.evaluate <spec.json>` (docs/pipeline.md §4).

Writes JSON lines on stdout: `{"event": "progress", "message": ...}` while working, then one
`{"event": "result", ...}`; on failure `{"event": "error", "message": "<one line>", "key": <spec key or null>}`
and exit status 2 (bad input: the spec, the data, a model folder) or 1 (anything else, with the traceback on
stderr).
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data import DataSourceError
from .run import evaluate
from .spec import EvalInputError, parse_eval_spec

USAGE = "usage: python -m dmd2_worker.evaluate <spec.json>"


def emit(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


def one_line(text: str) -> str:
    return " ".join(text.split())


def load_spec(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EvalInputError(None, f"{path}: cannot read the evaluation spec: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if len(args) != 1:
            raise EvalInputError(None, USAGE)
        spec = parse_eval_spec(load_spec(args[0]))
        if spec.torch_threads is not None:
            torch.set_num_threads(spec.torch_threads)
        emit(evaluate(spec, lambda message: emit({"event": "progress", "message": message})))
        return 0
    except (EvalInputError, DataSourceError) as e:
        emit({"event": "error", "message": one_line(str(e)), "key": e.key})
        return 2
    except Exception as e:  # noqa: BLE001 - the caller gets one line, the traceback goes to stderr
        traceback.print_exc(file=sys.stderr)
        emit({"event": "error", "message": one_line(f"{type(e).__name__}: {e}"), "key": None})
        return 1


if __name__ == "__main__":
    sys.exit(main())
