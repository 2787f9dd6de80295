#!/usr/bin/env bash
# Creates the project's Python environment in .venv (once) and installs the worker package into it.
# torch==2.13.0 (CPU) is installed only when no suitable torch (>=2.4) is already importable:
#  - DMD2_PYTHON set: that interpreter is used as is; we only check it and install nothing into it.
#  - otherwise .venv is made from python3; if python3 already has torch>=2.4 the venv sees it
#    (--system-site-packages) and no torch is installed.
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

if [ -n "${DMD2_PYTHON:-}" ]; then
  if ! torch_ok "$DMD2_PYTHON"; then
    echo "dmd2 setup: DMD2_PYTHON=$DMD2_PYTHON has no torch>=2.4; install one there or unset DMD2_PYTHON" >&2; exit 2
  fi
  "$DMD2_PYTHON" -m pip install -q -e "python-worker[test]"
  echo "dmd2 setup: using DMD2_PYTHON=$DMD2_PYTHON"; exit 0
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
echo "dmd2 setup: installing the worker package (python-worker) into .venv"
"$VPY" -m pip install -q -e "python-worker[test]"
"$VPY" -c "import torch, zmq, safetensors, numpy; print('dmd2 setup: python ok, torch', torch.__version__, 'pyzmq', zmq.__version__)"
