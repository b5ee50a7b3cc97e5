"""Teacher-forced forward throughput (images/s) of VAR with random weights.

CPU: float32 at a small batch.  GPU: bf16 autocast + PyTorch SDPA, at batch sizes that fill the card,
with the achieved fraction of the measured bf16 matmul rate.  Writes benchmarks/results/forward_var_<device>.json.

    python benchmarks/forward.py --models d16 d30 --batch 1 --iters 2           # CPU
    python benchmarks/forward.py --device cuda --models d16 d30 --batch 16 64 128   # GPU
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from memloc.var import VAR, VARConfig, preset_config


def build_random(name: str, device: str) -> VAR:
    "A VAR preset with random weights, allocated directly on `device` (no float64 init pass)."
    cfg = preset_config(name)["var"]
    with torch.device("meta"): m = VAR(VARConfig(**{**cfg, "patch_nums": tuple(cfg["patch_nums"])}))
    m = m.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    keep = {k: v.clone() for k, v in VAR(VARConfig(**{**cfg, "patch_nums": tuple(cfg["patch_nums"]), "depth": 1, "num_classes": 1,
                                                       "embed_dim": 64, "num_heads": 1})).state_dict().items() if k in ("lvl_1L", "attn_bias_for_masking")}
    with torch.no_grad():
        for n, p in m.named_parameters(): p.normal_(0, 0.02, generator=g)
        for n, b in m.named_buffers():
            if n in keep: b.copy_(keep[n])
            else: b.zero_()
    return m.eval()


def forward_flops(m: VAR) -> float:
    "Matmul FLOPs of one teacher-forced forward per image (attention over the full L x L, as SDPA computes it)."
    C, L, V, hid, D = m.C, m.L, m.V, m.blocks[0].ffn.fc1.out_features, len(m.blocks)
    per_tok = D * (2 * C * 3 * C + 2 * C * C + 2 * 2 * C * hid + 2 * 2 * L * C) + 2 * C * V + 2 * m.Cvae * C
    per_img = D * 2 * C * 6 * C + 2 * C * 2 * C
    return L * per_tok + per_img


def matmul_rate(device: str, dtype, n=8192, iters=20) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3): a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters): a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.perf_counter() - t)


def time_forward(m: VAR, B: int, device: str, warmup: int, iters: int) -> float:
    g = torch.Generator(device=device).manual_seed(1)
    lab = torch.randint(0, m.num_classes, (B,), device=device, generator=g)
    x = torch.randn(B, m.L - m.first_l, m.Cvae, device=device, generator=g)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup): m(lab, x, cond_drop_rate=0.0)
        sync(); t = time.perf_counter()
        for _ in range(iters): m(lab, x, cond_drop_rate=0.0)
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


def bench(family: str, build, flops, time_fn, seq_len, default_models, what, argv=None):
    "The benchmark command shared by the families: `build(name, device)`, `flops(m)`, `time_fn(m, B, device, warmup, iters)`, `seq_len(m) -> (key, value)`."
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=default_models)  # presets
    ap.add_argument("--batch", nargs="+", type=int, default=[1])     # batch sizes
    ap.add_argument("--device", default="cpu")                      # cpu | cuda
    ap.add_argument("--threads", type=int, default=1)               # CPU threads
    ap.add_argument("--warmup", type=int, default=1)                # untimed passes
    ap.add_argument("--iters", type=int, default=2)                 # timed passes
    ap.add_argument("--out", default=None)                          # result JSON (default benchmarks/results/forward_<family>_<device>.json)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = {"what": what, "device": a.device, "dtype": "bf16 autocast + SDPA" if a.device == "cuda" else "float32",
           "machine": machine(a.device), "warmup": a.warmup, "iters": a.iters, "runs": []}
    if a.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        res["bf16_matmul_rate_tflops"] = matmul_rate("cuda", torch.bfloat16) / 1e12
    for name in a.models:
        t0 = time.perf_counter(); m = build(name, a.device); t_build = time.perf_counter() - t0
        fl = flops(m)
        for B in a.batch:
            try: s = time_fn(m, B, a.device, a.warmup, a.iters)
            except torch.cuda.OutOfMemoryError:
                res["runs"].append({"model": name, "batch": B, "error": "out of memory"}); torch.cuda.empty_cache(); continue
            key, n = seq_len(m)
            r = {"model": name, key: n, "params": sum(p.numel() for p in m.parameters()), "batch": B, "seconds_per_forward": s,
                 "images_per_s": B / s, "tflops_achieved": fl * B / s / 1e12, "build_s": t_build}
            if "bf16_matmul_rate_tflops" in res: r["fraction_of_bf16_matmul_rate"] = r["tflops_achieved"] / res["bf16_matmul_rate_tflops"]
            res["runs"].append(r); print(json.dumps(r), flush=True)
        del m
        if a.device == "cuda": torch.cuda.empty_cache()
    out = Path(a.out or Path(__file__).resolve().parent / "results" / f"forward_{family}_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    print("wrote", out)


def main(argv=None):
    bench("var", build_random, forward_flops, time_forward, lambda m: ("L", m.L), ["d16", "d30"],
          "VAR teacher-forced forward over all L tokens of the scale pyramid, random weights, images/s", argv)


if __name__ == "__main__":
    main()
