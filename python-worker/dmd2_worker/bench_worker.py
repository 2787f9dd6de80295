"""`python -m dmd2_worker.bench_worker --name NAME --connect ENDPOINT --heartbeat ENDPOINT`: the real worker
server (server.py: sockets, framing, tensor store, tracked zero-copy replies, heartbeats) hosting a bench-only
`echo` role, for the transport benchmark of `npm run bench` (src/bench/transport.ts).

The echo role is not in the production role registry (roles/__init__.py); it exists only in this module and is
handed to the server through its `role_factory` hook. Whatever role name the coordinator asks for, it gets an
echo role: its one op, `echo`, does nothing, so the request's tensors (put into the store by the server) are
what the reply carries back when the request names them in `return`. The recipe in `hello` is taken as it is
(no recipe is needed to echo bytes).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .__main__ import main as worker_main


class EchoRole:
    """A role whose only op, `echo`, leaves the tensor store as the request filled it."""

    OPS = ("echo",)

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, body: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"params": 0}

    def run_op(self, op: str, args: dict[str, Any], store: Any, ctx: Any) -> dict[str, float]:
        if op not in self.OPS:
            raise ValueError(f"bench echo role {self.name!r} has no op {op!r} (its ops: {', '.join(self.OPS)})")
        return {}

    def save(self, directory: Path) -> list[Path]:
        return []

    def restore(self, directory: Path) -> None:
        return None


def make_echo_role(name: str) -> EchoRole:
    return EchoRole(name)


def _any_recipe(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


def main(argv: list[str] | None = None) -> int:
    return worker_main(argv, role_factory=make_echo_role, recipe_parser=_any_recipe)


if __name__ == "__main__":
    sys.exit(main())
