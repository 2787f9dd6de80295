"""`python -m dmd2_worker --name NAME --connect ENDPOINT --heartbeat ENDPOINT [--heartbeat-interval S]`

Exits 0 after a `shutdown` request; 1 when the parent process (the coordinator) went away without one; 2 on
bad arguments; 130 on SIGINT; with a traceback and status 1 when it cannot run at all (e.g. an endpoint cannot
be connected). SIGTERM keeps its default action (the process ends at once).
"""
from __future__ import annotations

import os

# The parent's pid, read before the slow imports (torch) so that a parent that dies meanwhile is noticed.
_START_PPID = os.getppid()

import argparse  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from typing import Any, Sequence  # noqa: E402

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def _worker_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a worker name (letters, digits, '_', '.', '-')")
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not (seconds > 0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dmd2_worker",
        description="A dmd2 worker process: hosts DMD2 roles and answers the coordinator's requests "
                    "(docs/protocol.md). Started by the dmd2 CLI, not by hand.")
    parser.add_argument("--name", required=True, type=_worker_name, help="this worker's name, e.g. teacher or all")
    parser.add_argument("--connect", required=True, metavar="ENDPOINT",
                        help="the coordinator's request endpoint (ipc://... or tcp://127.0.0.1:PORT)")
    parser.add_argument("--heartbeat", required=True, metavar="ENDPOINT", help="the coordinator's heartbeat endpoint")
    parser.add_argument("--heartbeat-interval", type=_seconds, default=0.5, metavar="S",
                        help="seconds between heartbeats (default 0.5)")
    return parser


def main(argv: Sequence[str] | None = None, **server_options: Any) -> int:
    """Run a worker until `shutdown`; returns the exit status. `server_options` go to WorkerServer (tests)."""
    args = build_parser().parse_args(argv)
    from .server import WorkerServer  # after parsing, so --help and argument errors do not wait for torch

    options: dict[str, Any] = {"parent_pid": _START_PPID if _START_PPID > 1 else None}
    options.update(server_options)
    server = WorkerServer(args.name, args.connect, args.heartbeat, args.heartbeat_interval, **options)
    try:
        reason = server.serve()
    except KeyboardInterrupt:  # Ctrl-C in the coordinator's terminal reaches its workers too: no traceback
        print(f"dmd2-worker[{args.name}]: interrupted", file=sys.stderr)
        return 130
    return 0 if reason == "shutdown" else 1


if __name__ == "__main__":
    sys.exit(main())
