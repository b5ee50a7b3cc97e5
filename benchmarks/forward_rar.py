"""Teacher-forced forward throughput (images/s) of RAR with random weights.

One forward is RAR's training/measurement pass: [cls, condition, 256 raster tokens] through every
block and the head (the pass UnitMem and the extraction score run).  CPU: float32 at a small batch.
GPU: bf16 autocast + PyTorch SDPA, with the achieved fraction of the measured bf16 matmul rate.
Writes benchmarks/results/forward_rar_<device>.json.

    python benchmarks/forward_rar.py --models rar_b rar_xxl --batch 1 --iters 2             # CPU
    python benchmarks/forward_rar.py --device cuda --models rar_b rar_xxl --batch 16 64 256  # GPU
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

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


def matmul_rate(device: str, dtype, n=8192, iters=20) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3): a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters): a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.perf_counter() - t)


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


def machine(device: str) -> dict:
    cpu = platform.processor()
    try: cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception: pass
    d = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
         "python": platform.python_version(), "platform": platform.platform()}
    if device == "cuda": d["gpu"] = torch.cuda.get_device_name(0)
    return d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["rar_b", "rar_xxl"])   # RAR presets
    ap.add_argument("--batch", nargs="+", type=int, default=[1])          # batch sizes
    ap.add_argument("--device", default="cpu")                           # cpu | cuda
    ap.add_argument("--threads", type=int, default=1)                    # CPU threads
    ap.add_argument("--warmup", type=int, default=1)                     # untimed passes
    ap.add_argument("--iters", type=int, default=2)                      # timed passes
    ap.add_argument("--out", default=None)                               # result JSON (default benchmarks/results/forward_rar_<device>.json)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {"what": "RAR teacher-forced forward, raster order, N+2 block positions, random weights, images/s",
           "device": a.device, "dtype": "bf16 autocast + SDPA" if a.device == "cuda" else "float32 + SDPA",
           "machine": machine(a.device), "warmup": a.warmup, "iters": a.iters, "runs": []}
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        res["bf16_matmul_rate_tflops"] = matmul_rate("cuda", torch.bfloat16) / 1e12
    for name in a.models:
        t0 = time.perf_counter(); m = build_random(name, a.device); t_build = time.perf_counter() - t0
        fl = forward_flops(m)
        for B in a.batch:
            try: s = time_forward(m, B, a.device, a.warmup, a.iters)
            except torch.cuda.OutOfMemoryError:
                res["runs"].append({"model": name, "batch": B, "error": "out of memory"}); torch.cuda.empty_cache(); continue
            r = {"model": name, "N": m.cfg.image_seq_len, "params": sum(p.numel() for p in m.parameters()), "batch": B,
                 "seconds_per_forward": s, "images_per_s": B / s, "tflops_achieved": fl * B / s / 1e12, "build_s": t_build}
            if "bf16_matmul_rate_tflops" in res: r["fraction_of_bf16_matmul_rate"] = r["tflops_achieved"] / res["bf16_matmul_rate_tflops"]
            res["runs"].append(r); print(json.dumps(r), flush=True)
        del m
        if a.device == "cuda": torch.cuda.empty_cache()
    out = Path(a.out or Path(__file__).resolve().parent / "results" / f"forward_rar_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print("wrote", out)


if __name__ == "__main__":
    main()
