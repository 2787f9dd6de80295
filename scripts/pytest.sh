#!/usr/bin/env bash
# Runs the Python worker's tests with the project's interpreter. pytest's exit 5 ("no tests collected") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${DMD2_PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
"$PY" -m pytest -q python-worker/tests "$@"
rc=$?
if [ $rc -eq 5 ]; then echo "pytest collected no tests: treating as failure" >&2; exit 1; fi
exit $rc
