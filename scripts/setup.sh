#!/usr/bin/env bash
# Set up esft in ./.venv: CPU PyTorch first where there is no CUDA (a plain `torch` requirement would pull a
# multi-GB CUDA build), then esft itself with its test extra. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q "${ESFT_TORCH_SPEC:-torch>=2.4}"
  else
    pip install -q "${ESFT_TORCH_SPEC:-torch==2.13.0}"   # the CPU build on this project's machines
  fi
fi
pip install -q -e ".[test]"
python -c "import esft, torch, transformers, hydra; print(f'esft ready: torch {torch.__version__}, transformers {transformers.__version__}')"
