#!/usr/bin/env bash
# The GPU benchmarks, in one script: teacher-forced forward throughput of VAR-d16/d30 and RAR-B/XXL
# (random weights, bf16 autocast, SDPA) and the UnitMem capture overhead on VAR-d16/d30 in bf16.
# Usage (repository root, a CUDA machine): OUT=some/folder bash benchmarks/gpu_run.sh
# Pure-Python dependencies missing on the machine may be put in .gpu_deps/ (added to PYTHONPATH).
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu_device.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu_device.txt"
timeout 150 python benchmarks/forward.py --device cuda --models d16 d30 --batch 32 128 --warmup 2 --iters 5 \
    --out "$OUT/forward_var_cuda.json" 2>&1 | tail -6
timeout 120 python benchmarks/forward_rar.py --device cuda --models rar_b rar_xxl --batch 64 256 --warmup 2 --iters 5 \
    --out "$OUT/forward_rar_cuda.json" 2>&1 | tail -6
timeout 150 python benchmarks/unitmem_memory.py --device cuda --dtype bfloat16 --models d16 d30 --batch 32 --reps 5 \
    --overhead-only 2>&1 | tail -6
cp benchmarks/results/unitmem_overhead_*cuda*.json "$OUT/" 2>/dev/null
ls -la "$OUT"
