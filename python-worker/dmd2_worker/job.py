"""The scaffold of a job the CLI runs as `python -m dmd2_worker.<job> <spec.json>` (train_teacher, evaluate,
export; src/run/pythonJob.ts is the other side): JSON-line events on stdout, one error event and the exit status.

Exit status: 0 done; 2 bad input (a JobInputError or a DataSourceError: one line naming the key to fix); 1
anything else (the traceback on stderr, one line in the event); 130 when SIGTERM (what the CLI sends on Ctrl-C)
stopped it: SIGTERM raises KeyboardInterrupt, so the job's `finally` and `except BaseException` blocks clean up.
"""
from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from .data import DataSourceError

INTERRUPTED = 130
ERROR_MESSAGE_CHARS = 500


class JobInputError(ValueError):
    """Bad input (exit status 2): `key` is the recipe or spec key to fix, or None."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key


def emit(event: dict[str, Any]) -> None:
    """One event line on stdout."""
    print(json.dumps(event), flush=True)


def one_line(text: str) -> str:
    return " ".join(text.split())


def read_spec(path: str, what: str) -> Any:
    """The JSON file the CLI wrote; `what` names it in the error ("the evaluation spec")."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise JobInputError(None, f"{path}: cannot read {what}: {e}") from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> Any:
    """SIGTERM (what the CLI sends on Ctrl-C) raises KeyboardInterrupt from now on, so that a job cleans up (e.g.
    export removes its temporary folder instead of ending with it half-written beside `out`). Returns the handler
    it replaced."""
    return signal.signal(signal.SIGTERM, _interrupt)


def run_job(argv: Sequence[str] | None, usage: str, body: Callable[[str], None]) -> int:
    """Run `body(spec_path)`, which emits the job's events (its final one too), and map how it ends to the exit
    status and the error event."""
    args = list(sys.argv[1:] if argv is None else argv)
    previous = stop_on_sigterm()
    try:
        if len(args) != 1:
            raise JobInputError(None, usage)
        body(args[0])
        return 0
    except (JobInputError, DataSourceError) as e:
        emit({"event": "error", "message": one_line(str(e)), "key": e.key})
        return 2
    except Exception as e:  # noqa: BLE001 - a bug or the machine: one line for the caller, the traceback on stderr
        traceback.print_exc(file=sys.stderr)
        emit({"event": "error", "message": one_line(f"{type(e).__name__}: {e}")[:ERROR_MESSAGE_CHARS], "key": None})
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
