#!/usr/bin/env bash
# The GPU checks of issue 15 (portable philox noise) in one call, for a session lent a GPU machine (no network).
# From the repo root on that machine:  bash scripts/gpu_session.sh   (results under $OUT, else ./gpu_out)
#  1. nvidia-smi, torch and transformers versions;
#  2. scripts/bench_noise.py --philox --compile --device cuda: generator throughput on the GPU (eager and
#     compiled) against torch.randn, and one full philox draw of the Qwen2-0.5B shapes;
#  3. scripts/gpu_check_philox.py: CPU and GPU draw identical bits (4M numbers, eager and compiled), and a
#     3-step ES run (bf16, es.noise=auto -> philox on the GPU) replays bit for bit on the GPU (and on the CPU);
#  4. scripts/bench_es.py --workload gpu05b: the 0.5B workload with the defaults a user gets (es.noise=auto,
#     es.cache_noise=auto), inplace with host iid noise vs device philox noise.
# Budget: at most 8 minutes in all (each step has its own timeout). bench_es needs only torch, transformers,
# tokenizers, numpy and pyyaml, which the device image has; wheels carried in .whl/ are installed first.
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

timeout 90 python3 scripts/bench_noise.py --philox --compile --device cuda --repeats 5 --json \
    > "$out/bench_noise_gpu.log" 2>&1
echo "bench_noise philox cuda: exit $?"
tail -n 12 "$out/bench_noise_gpu.log"

timeout 120 python3 scripts/gpu_check_philox.py --numbers 4194304 > "$out/philox_check.log" 2>&1
echo "gpu_check_philox: exit $? (0: identical bits and bit-identical replay)"
tail -n 3 "$out/philox_check.log"

timeout 240 python3 scripts/bench_es.py --workload gpu05b \
    --methods reference,inplace,inplace-uncached,inplace-philox,inplace-philox-uncached,lowrank,lowrank-frozen,inference-seq,inference-batched \
    --json > "$out/bench_gpu05b.json" 2> "$out/bench_gpu05b.log"
echo "bench_es gpu05b: exit $?"
tail -n 15 "$out/bench_gpu05b.log"
