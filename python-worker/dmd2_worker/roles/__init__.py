"""The roles a worker can host, by name (docs/protocol.md §1), and the fault-injection hook the tests use
(faults.py)."""
from __future__ import annotations

from .base import Role
from .fake_score import DiscriminatorRole, FakeScoreRole
from .faults import FAULT_ENV, FAULT_ONCE_ENV, check_fault
from .generator import GeneratorRole
from .teacher import TeacherRole

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


__all__ = ["ROLE_CLASSES", "make_role", "check_fault", "FAULT_ENV", "FAULT_ONCE_ENV"]
