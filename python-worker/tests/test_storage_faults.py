"""Storage faults from every layer that writes are one OSError with its errno (issue 20).

The real faults come from a small tmpfs mounted in a private mount namespace (`unshare -rm`, as root or with user
namespaces); where that is not possible those tests are skipped, and the text-only tests still run.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dmd2_worker.storage_faults import storage_errno, storage_faults_named

WORKER_ROOT = Path(__file__).resolve().parents[1]

# Run inside the namespace: fills a 256 KiB tmpfs through each writer and reports what each raised.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    from pathlib import Path
    from dmd2_worker.checkpoint import save_tensors, write_json, load_tensors
    from dmd2_worker.images import save_images
    from dmd2_worker.storage_faults import storage_faults_named
    d = Path(sys.argv[1])
    out = {}
    def attempt(name, fn):
        try:
            fn()
            out[name] = None
        except BaseException as e:
            out[name] = {"type": type(e).__name__, "errno": getattr(e, "errno", None), "text": str(e)}
    save_tensors(d / "old.safetensors", {"w": torch.ones(1000)})          # 4 kB: fits
    attempt("safetensors", lambda: save_tensors(d / "old.safetensors", {"w": torch.zeros(1_000_000)}))
    out["old_intact"] = bool((load_tensors(d / "old.safetensors")["w"] == 1).all())
    out["old_size"] = load_tensors(d / "old.safetensors")["w"].numel()
    (d / "filler").write_bytes(b"")
    try:
        with open(d / "filler", "wb") as f:
            while True:
                f.write(b"x" * 4096)
                f.flush()
    except OSError:
        pass
    attempt("json", lambda: write_json(d / "state.json", {"x": list(range(100_000))}))
    attempt("png", lambda: save_images(torch.rand(4, 3, 64, 64) * 2 - 1, d / "samples"))
    def torch_save():
        with storage_faults_named(d / "t.pt"):
            torch.save({"a": torch.rand(100_000)}, d / "t.pt")
    attempt("torch", torch_save)
    out["left"] = sorted(p.name for p in d.rglob("*") if ".tmp-" in p.name)
    print(json.dumps(out))
    """
)


def _run_on_full_tmpfs(tmp_path: Path) -> dict:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(SCRIPT)
    shell = f'mount -t tmpfs -o size=256k tmpfs "{mnt}" || exit 77; exec "{sys.executable}" "{script}" "{mnt}"'
    env = {**os.environ, "PYTHONPATH": str(WORKER_ROOT)}
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=env, timeout=120)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if r.returncode == 77 or "unshare failed" in r.stderr or "Operation not permitted" in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_full_disk_is_one_oserror_from_each_writer(tmp_path: Path) -> None:
    out = _run_on_full_tmpfs(tmp_path)
    for writer in ("safetensors", "json", "png", "torch"):
        got = out[writer]
        assert got is not None, f"{writer}: the write into a full disk did not fail"
        assert got["type"] == "OSError" and got["errno"] == errno.ENOSPC, f"{writer}: {got}"
        assert "[Errno 28] No space left on device" in got["text"], got["text"]
    # the file the failed write would have replaced is the old one, whole; no temporary file is left
    assert out["old_intact"] and out["old_size"] == 1000
    assert out["left"] == []


def test_storage_errno_reads_every_layers_words() -> None:
    # the words each layer writes, as seen on a full tmpfs (safetensors 0.4, CPython, an errno-less writer)
    assert storage_errno(Exception("Error while serializing: I/O error: No space left on device (os error 28)")) == errno.ENOSPC
    assert storage_errno(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    assert storage_errno(RuntimeError("write failed: Disk quota exceeded")) == errno.EDQUOT
    assert storage_errno(Exception("I/O error: Read-only file system (os error 30)")) == errno.EROFS
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert storage_errno(wrapped) == errno.ENOSPC
    # not storage faults
    assert storage_errno(ValueError("expected 3 channels")) is None
    assert storage_errno(OSError(errno.ENOENT, "No such file or directory")) is None
    assert storage_errno(RuntimeError("unexpected pos 576 vs 534"), path="/") is None  # / is not full here


def test_storage_faults_named_keeps_other_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a storage fault"):
        with storage_faults_named(tmp_path / "x"):
            raise ValueError("not a storage fault")
    with pytest.raises(OSError) as info:
        with storage_faults_named(tmp_path / "x"):
            raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x")
