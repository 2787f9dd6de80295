"""Fault injection for the tests (DMD2_FAULT): a role op that raises, exits or makes its loss NaN on cue."""
from __future__ import annotations

import os
import sys

FAULT_ENV = "DMD2_FAULT"
FAULT_ONCE_ENV = "DMD2_FAULT_ONCE"  # a file path: the fault fires only if it does not exist yet, and creates it


def check_fault(role: str, op: str, step: int | None) -> str | None:
    """Fault injection for tests: with `DMD2_FAULT="<role>.<op>:<step>"` (several separated by commas) running that
    op at that step raises RuntimeError("injected fault ..."); with a trailing `:exit` the process exits with
    status 3 at once instead (no reply, no clean-up); with `:nan` it returns "nan" and the op makes its loss NaN
    (for the train.on_nonfinite tests). Returns None when no fault applies."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    for item in spec.split(","):
        parts = [p.strip() for p in item.strip().split(":")]
        if len(parts) not in (2, 3) or "." not in parts[0] or not parts[1].isdigit() or parts[2:] not in ([], ["exit"], ["nan"]):
            raise ValueError(f"{FAULT_ENV}={spec!r}: expected '<role>.<op>:<step>' with an optional ':exit' or ':nan'")
        if parts[0] != f"{role}.{op}" or step is None or int(parts[1]) != step:
            continue
        marker = os.environ.get(FAULT_ONCE_ENV, "").strip()
        if marker:  # fire once across processes: a restarted worker finds the marker and runs normally
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
        if parts[2:] == ["exit"]:
            sys.stderr.write(f"injected fault {FAULT_ENV}={item.strip()!r}: {role}.{op} at step {step}, exiting with 3\n")
            sys.stderr.flush()
            os._exit(3)
        if parts[2:] == ["nan"]:
            return "nan"
        raise RuntimeError(f"injected fault {FAULT_ENV}={item.strip()!r}: {role}.{op} at step {step}")
    return None
