#!/usr/bin/env bash
# The GPU benchmarks, in one script: teacher-forced forward throughput of VAR-d16/d30 and RAR-B/XXL
# (random weights at the released sizes, bf16 autocast, SDPA) with its fraction of the measured bf16 matmul
# rate, and the UnitMem capture overhead before and after its rework (benchmarks/capture_overhead.py, bf16,
# released depths, with a profile of the capture); then benchmarks/results/gpu_speed.json as
# models.<name>.{capture_overhead, forward_fraction_of_peak, images_per_s}.
# MINI=1 also runs the miniature's stages on the GPU (benchmarks/run_stages.py) into $OUT/gpu_mini.
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
timeout 240 python benchmarks/capture_overhead.py --device cuda --dtype bfloat16 --depth 0 \
    --models VAR-d16 VAR-d30 RAR-B RAR-XXL --batch 32 --views 4 --reps 5 --profile \
    --out "$OUT/capture_overhead_cuda.json" 2>&1 | tail -80
python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1]); models = {}
names = {"d16": "VAR-d16", "d30": "VAR-d30", "rar_b": "RAR-B", "rar_xxl": "RAR-XXL"}
for f in ("forward_var_cuda.json", "forward_rar_cuda.json"):
    if not (out / f).is_file(): continue
    for r in json.loads((out / f).read_text())["runs"]:           # the largest batch of each model
        m = models.setdefault(names[r["model"]], {})
        if r["batch"] >= m.get("batch", 0):
            m.update(batch=r["batch"], images_per_s=r["images_per_s"], forward_fraction_of_peak=r["fraction_of_bf16_matmul_rate"])
if (out / "capture_overhead_cuda.json").is_file():
    for r in json.loads((out / "capture_overhead_cuda.json").read_text())["results"]:
        name = r["model"].split(" ")[0]
        models.setdefault(name, {}).update(capture_overhead=r["overhead_pct"]["after"] / 100,
                                           capture_overhead_before=r["overhead_pct"]["before"] / 100,
                                           capture_stats_bit_identical=r["stats_bit_identical"])
goals = {"capture_overhead": "< 0.05", "forward_fraction_of_peak": ">= 0.5 (VAR-d30, RAR-XXL), >= 0.4 (VAR-d16, RAR-B)"}
(out / "gpu_speed.json").write_text(json.dumps({"models": models, "goals": goals}, indent=1) + "\n")
print((out / "gpu_speed.json").read_text())
EOF
if [ "${MINI:-0}" = 1 ]; then
  timeout 300 python benchmarks/run_stages.py --device cuda --out "$OUT/gpu_mini" 2>&1 | tail -20
fi
ls -la "$OUT"
