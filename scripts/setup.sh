#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.11 + this repo): creates .venv and installs skyloom
# with every extra the tests, the demo and the benchmarks use. Safe to re-run.
#
# Reproducible by default: every dependency is installed at the exact version listed in constraints.txt
# (the versions the test suite passed with). `SKYLOOM_UNPINNED=1 ./scripts/setup.sh` installs the open
# ranges of pyproject.toml instead (the newest releases), e.g. to refresh constraints.txt (see its header).
#
# torch: a torch already installed in .venv is kept (that is how GPU users bring a CUDA build:
#   python3.11 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128
# then run this script). Otherwise `torch==2.13.0` is installed (a CPU wheel where the machine offers
# one); skyloom's own requirement is an open range that an installed torch satisfies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
PINS="--constraint=constraints.txt"
if [ "${SKYLOOM_UNPINNED:-0}" = "1" ]; then
  PINS=""
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet $PINS "torch==${SKYLOOM_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet $PINS -e ".[all,dev]"
echo "skyloom set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)');" \
  "$([ -n "$PINS" ] && echo "pinned: constraints.txt" || echo "unpinned: SKYLOOM_UNPINNED=1"))"
