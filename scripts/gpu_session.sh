#!/usr/bin/env bash
# The GPU checks of issues 6 and 7 in one call, for a session that is lent a GPU machine (no network there).
# From the repo root on that machine:  bash scripts/gpu_session.sh   (results under $OUT, else ./gpu_out)
#  1. nvidia-smi, torch and transformers versions;
#  2. scripts/bench_es.py --workload gpu05b --json: reference vs inplace vs lowrank vs pure inference on a
#     random-init Qwen2-0.5B-shaped model, 30 members x 64 prompts x 128 tokens (target: lowrank >= 5x inplace);
#  3. scripts/gpu_check_vllm.py (HF vs vLLM backend, steps/s) when vllm is importable there.
# bench_es needs only torch, transformers, tokenizers, numpy and pyyaml, which the device image has; wheels
# carried in .whl/ (e.g. a newer transformers) are installed first. Budget: about 8 minutes.
set -uo pipefail
out="${OUT:-gpu_out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$out/gpu.txt"

timeout 420 python3 scripts/bench_es.py --workload gpu05b --json > "$out/bench_gpu05b.json" 2> "$out/bench_gpu05b.log"
echo "bench_es gpu05b: exit $?"
tail -n 15 "$out/bench_gpu05b.log"

if python3 -c "import vllm" 2> /dev/null; then
    timeout 240 python3 scripts/gpu_check_vllm.py --steps 3 > "$out/vllm_check.log" 2>&1
    echo "gpu_check_vllm: exit $?"
    tail -n 15 "$out/vllm_check.log"
else
    echo "gpu_check_vllm: skipped, vllm is not installed on this machine" | tee "$out/vllm_check.log"
fi
