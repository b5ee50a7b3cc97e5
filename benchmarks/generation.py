"""Greedy generation throughput (images/s, tokens only, no decoding) with the KV cache and without.

Methods, per family (miniature presets with seeded random weights; the speed does not depend on the weights):
  kv_cache       the adapter's `generate(greedy=True)`, KV-cached (what extraction and sampling use)
  no_cache       RAR only: the adapter's own `generate(..., kv_cache=False)`, the full prefix re-run each step
  teacher_forced `memloc.extraction.generate_uncached`: one full teacher-forced `logits` pass per step
                 (VAR: per scale, 6 steps; RAR: per token, 64 steps); works for any adapter
Every method must give the same tokens (checked). Writes benchmarks/results/generation_<device>.json and .md.

    python benchmarks/generation.py                                  # CPU, batch 1 and 64
    python benchmarks/generation.py --device cuda --batch 1 64 256   # GPU
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from memloc.extraction import generate_uncached


def build(family: str, device: str):
    torch.manual_seed(0)
    if family == "var":
        from memloc.var import build_model, preset_config
        return build_model(preset_config("mini")).to(device).eval()
    from memloc.rar import build_model
    return build_model("mini", device=device)


def methods(model):
    out = {"kv_cache": lambda y: model.generate(y, greedy=True)}
    if model.family == "rar": out["no_cache"] = lambda y: model.generate(y, greedy=True, kv_cache=False)
    out["teacher_forced"] = lambda y: generate_uncached(model, y)
    return out


def bench(fn, y, device, iters: int):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        out = fn(y); sync()                      # warm-up, and the tokens for the equality check
        t = time.perf_counter()
        for _ in range(iters): fn(y)
        sync()
    return len(y) * iters / (time.perf_counter() - t), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", nargs="+", default=["var", "rar"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for fam in a.families:
        model = build(fam, a.device)
        for B in a.batch:
            y = (torch.arange(B) % model.num_classes).to(a.device)
            ref = None
            for name, fn in methods(model).items():
                ips, toks = bench(fn, y, a.device, a.iters)
                same = True if ref is None else bool(torch.equal(toks.cpu(), ref))
                ref = toks.cpu() if ref is None else ref
                rows.append(dict(family=fam, seq_len=model.seq_len, batch=B, method=name, images_per_s=round(ips, 3),
                                 same_tokens_as_kv_cache=same))
                print(rows[-1], flush=True)
    env = dict(device=a.device, threads=a.threads, torch=torch.__version__, python=platform.python_version(),
               cpu=platform.processor() or platform.machine(), loadavg_1min=os.getloadavg()[0],
               note="CPU shared with other jobs; compare methods within one run, not across runs")
    if a.device == "cuda": env["gpu"] = torch.cuda.get_device_name()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"generation_{a.device}.json").write_text(json.dumps(dict(env=env, rows=rows), indent=2, sort_keys=True) + "\n")
    kv = {(r["family"], r["batch"]): r["images_per_s"] for r in rows if r["method"] == "kv_cache"}
    lines = [f"# Greedy generation throughput ({a.device}, {a.threads} thread(s), load average {env['loadavg_1min']:.1f})", "",
             "| family | L | batch | method | images/s | x slower than KV cache | same tokens |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['seq_len']} | {r['batch']} | {r['method']} | {r['images_per_s']:.2f} | "
                     f"{kv[(r['family'], r['batch'])] / r['images_per_s']:.1f} | {r['same_tokens_as_kv_cache']} |")
    (out / f"generation_{a.device}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
