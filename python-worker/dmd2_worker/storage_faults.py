"""Storage faults named the same way from every layer that writes (issue 20).

A full disk reaches Python in several shapes: an OSError with `errno` 28 (open, write, PIL's save), safetensors'
`SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)`, and torch's writer
with no number at all (`RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534`).
`storage_faults_named(path)` wraps a write and turns each of them into one `OSError(errno, strerror, path)`, so
the worker's error reply reads `[Errno 28] No space left on device: '<path>'` and the coordinator
(src/errors.ts, storageFaultCode) names the fault and the intact last checkpoint.
"""
from __future__ import annotations

import errno as errno_codes
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# the faults of the storage itself: full, over quota, read-only, not allowed
STORAGE_ERRNOS = {errno_codes.ENOSPC, errno_codes.EDQUOT, errno_codes.EROFS, errno_codes.EACCES, errno_codes.EPERM}
_NUMBER = re.compile(r"\[Errno (\d+)\]|\(os error (\d+)\)")
_WORDS = {errno_codes.ENOSPC: "no space left on device", errno_codes.EDQUOT: "disk quota exceeded",
          errno_codes.EROFS: "read-only file system"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _disk_full(path: str | Path | None) -> bool:
    """Whether the file system holding `path` has no byte left for this user."""
    if path is None:
        return False
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return os.statvfs(p).f_bavail == 0
    except OSError:
        return False


def storage_errno(exc: BaseException, path: str | Path | None = None) -> int | None:
    """The errno of a storage fault carried by `exc` (or its causes), else None. With `path`, a write error
    without a number (torch's) counts as a full disk when the disk holding `path` has no space left."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e.errno
        text = str(e)
        m = _NUMBER.search(text)
        if m and int(m.group(1) or m.group(2)) in STORAGE_ERRNOS:
            return int(m.group(1) or m.group(2))
        for code, words in _WORDS.items():
            if words in text.lower():
                return code
    if not isinstance(exc, OSError) and _disk_full(path):
        return errno_codes.ENOSPC
    return None


@contextmanager
def storage_faults_named(path: str | Path) -> Iterator[None]:
    """Re-raises a storage fault of the write to `path`, from whichever layer, as OSError(errno, strerror, path)."""
    try:
        yield
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise
        code = storage_errno(e, path)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e
    except Exception as e:  # safetensors' SafetensorError, torch's RuntimeError
        code = storage_errno(e, path)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e
