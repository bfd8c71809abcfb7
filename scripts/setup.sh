#!/usr/bin/env bash
# One-step set-up on a fresh machine (Python 3.11 + this repo): creates .venv and installs skyloom
# with every extra the tests, the demo and the benchmarks use. Safe to re-run.
#
# torch: a torch already installed in .venv is kept (that is how GPU users bring a CUDA build:
#   python3.11 -m venv .venv && .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cu128
# then run this script). Otherwise `torch==2.13.0` is installed (a CPU wheel where the machine offers
# one); skyloom's own requirement is an open range that an installed torch satisfies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet "torch==${SKYLOOM_TORCH_VERSION:-2.13.0}"
fi
.venv/bin/python -m pip install --quiet -e ".[all,dev]"
echo "skyloom set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
