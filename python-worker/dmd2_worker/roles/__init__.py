"""The roles a worker can host, by name (docs/protocol.md §1), and the fault-injection hook the tests use.

`check_fault` is defined before the role modules are imported because they import it from here.
"""
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


from .base import Role  # noqa: E402
from .fake_score import DiscriminatorRole, FakeScoreRole  # noqa: E402
from .generator import GeneratorRole  # noqa: E402
from .teacher import TeacherRole  # noqa: E402

ROLE_CLASSES: dict[str, type] = {
    "teacher": TeacherRole,
    "generator": GeneratorRole,
    "fake_score": FakeScoreRole,
    "discriminator": DiscriminatorRole,
}


def make_role(name: str) -> Role:
    """A new, not yet set up role object for `name`."""
    cls = ROLE_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown role {name!r} (known roles: {', '.join(ROLE_CLASSES)})")
    return cls()


__all__ = ["ROLE_CLASSES", "make_role", "check_fault", "FAULT_ENV"]
