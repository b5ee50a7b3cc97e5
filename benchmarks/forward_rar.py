"""Teacher-forced forward throughput (images/s) of RAR with random weights.

One forward is RAR's training/measurement pass: [cls, condition, 256 raster tokens] through every
block and the head (the pass UnitMem and the extraction score run).  CPU: float32 at a small batch.
GPU: bf16 autocast + PyTorch SDPA, with the achieved fraction of the measured bf16 matmul rate.
Writes benchmarks/results/forward_rar_<device>.json.

    python benchmarks/forward_rar.py --models rar_b rar_xxl --batch 1 --iters 2             # CPU
    python benchmarks/forward_rar.py --device cuda --models rar_b rar_xxl --batch 16 64 256  # GPU
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward import bench  # the command and machine description shared with VAR's benchmark
from memloc.rar import RAR, RARConfig, rar_config, raster_orders


def build_random(name: str, device: str) -> RAR:
    "A RAR preset generator with random weights, allocated directly on `device`."
    with torch.device("meta"): m = RAR(RARConfig(**rar_config(name)["generator"]))
    m = m.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in m.parameters(): p.normal_(0, 0.02, generator=g)
    return m.eval()


def forward_flops(m: RAR) -> float:
    "Matmul FLOPs of one teacher-forced forward per image (attention over the full T x T, as SDPA computes it)."
    c = m.cfg; C, T, V, I, D = c.hidden_size, c.image_seq_len + 2, c.codebook_size, c.intermediate_size, c.num_hidden_layers
    per_tok = D * (2 * C * 3 * C + 2 * C * C + 2 * 2 * C * I + 2 * 2 * T * C + 2 * C * 6 * C) + 2 * C * 2 * C + 2 * C * V
    return T * per_tok


def time_forward(m: RAR, B: int, device: str, warmup: int, iters: int) -> float:
    g = torch.Generator(device=device).manual_seed(1)
    N = m.cfg.image_seq_len
    ids = torch.randint(0, m.cfg.codebook_size, (B, N), device=device, generator=g)
    cond = torch.randint(0, m.cfg.condition_num_classes, (B,), device=device, generator=g) + m.cond_offset
    orders = raster_orders(B, N, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device == "cuda" else (lambda: torch.autocast("cpu", enabled=False))
    with torch.inference_mode(), ctx():
        for _ in range(warmup): m.forward_tf(ids, cond, orders)
        sync(); t = time.perf_counter()
        for _ in range(iters): m.forward_tf(ids, cond, orders)
        sync()
    return (time.perf_counter() - t) / iters


def main(argv=None):
    bench("rar", build_random, forward_flops, time_forward, lambda m: ("N", m.cfg.image_seq_len), ["rar_b", "rar_xxl"],
          "RAR teacher-forced forward, raster order, N+2 block positions, random weights, images/s", argv)


if __name__ == "__main__":
    main()
