#!/usr/bin/env bash
# Sets up the Python side. Two cases, and they differ on purpose:
#  - DMD2_PYTHON set (the user's own environment, e.g. their CUDA one): only the worker package is installed into
#    it (pip --no-deps), then its dependency RANGES (python-worker/pyproject.toml) are checked against what is
#    there. Anything already inside its range is left exactly as it is; only a missing or out-of-range package is
#    installed, with pip's only-if-needed strategy and no pins. No test extras, no constraints file.
#  - otherwise the project's own .venv is made from python3 (once) and gets the worker package with its test
#    extras, at the exact versions of python-worker/constraints.txt (pip -c), as CI does. torch==2.13.0 (CPU) is
#    installed only when no torch>=2.4 is importable; if python3 already has one the venv sees it
#    (--system-site-packages).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${DMD2_SKIP_PYTHON_SETUP:-}" = "1" ]; then echo "dmd2 setup: DMD2_SKIP_PYTHON_SETUP=1, skipping Python set-up"; exit 0; fi

torch_ok() { "$1" - <<'PY' 2>/dev/null
import sys
try:
    import torch
except Exception:
    sys.exit(1)
major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 4) else 1)
PY
}

# the flags for an editable install of python-worker into interpreter $1: without build isolation (no download of
# a build backend) when it can already build one itself (setuptools>=70.1, or an older one >=64 with wheel), with
# it otherwise
build_flags() { "$1" - <<'PY' 2>/dev/null && echo "--no-build-isolation" || true
import sys, importlib.util
import setuptools
v = tuple(int(p) for p in setuptools.__version__.split(".")[:2])
sys.exit(0 if v >= (70, 1) or (v >= (64, 0) and importlib.util.find_spec("wheel")) else 1)
PY
}

# prints, one a line, each requirement of the installed dmd2-worker that interpreter $1 does not satisfy
unmet_requirements() { "$1" - <<'PY'
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:  # pip always brings its own copy
    from pip._vendor.packaging.requirements import Requirement
for text in md.requires("dmd2-worker") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an extra (test) or another platform's requirement
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        print(str(req)); continue
    if not req.specifier.contains(have, prereleases=True):
        print(str(req))
PY
}

if [ -n "${DMD2_PYTHON:-}" ]; then
  if ! torch_ok "$DMD2_PYTHON"; then
    echo "dmd2 setup: DMD2_PYTHON=$DMD2_PYTHON has no torch>=2.4; install one there or unset DMD2_PYTHON" >&2; exit 2
  fi
  # shellcheck disable=SC2046
  "$DMD2_PYTHON" -m pip install -q --no-deps $(build_flags "$DMD2_PYTHON") -e python-worker
  mapfile -t unmet < <(unmet_requirements "$DMD2_PYTHON")
  if [ "${#unmet[@]}" -gt 0 ]; then
    echo "dmd2 setup: DMD2_PYTHON lacks (or has outside the worker's range): ${unmet[*]}; installing just these"
    "$DMD2_PYTHON" -m pip install -q --upgrade-strategy only-if-needed "${unmet[@]}"
  else
    echo "dmd2 setup: DMD2_PYTHON already satisfies every range of the worker package; nothing else installed"
  fi
  echo "dmd2 setup: using DMD2_PYTHON=$DMD2_PYTHON (test extras go into the project's .venv only)"; exit 0
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if torch_ok "$PY"; then
    echo "dmd2 setup: $PY already has torch>=2.4; creating .venv with --system-site-packages"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! torch_ok "$VPY"; then
  echo "dmd2 setup: installing torch==2.13.0 (CPU) into .venv"
  "$VPY" -m pip install -q "torch==2.13.0"
fi
echo "dmd2 setup: installing the worker package (python-worker) with its test extras into .venv, versions from python-worker/constraints.txt"
"$VPY" -m pip install -q -c python-worker/constraints.txt -e "python-worker[test]"
"$VPY" -c "import torch, zmq, safetensors, numpy; print('dmd2 setup: python ok, torch', torch.__version__, 'pyzmq', zmq.__version__)"
