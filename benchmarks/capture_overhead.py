"""UnitMem capture overhead, before and after the capture was reworked, measured in one process.

One UnitMem batch is `augmentations` teacher-forced passes with the capture hooks, the view average and one
fold into `UnitMemStats`. Its cost over the same passes without hooks is the capture's overhead. "before" is a
frozen copy of the capture as it was (an |act| copy of every block's activations, one division per group,
a finiteness check, that is a wait for the device, after every view, two more in the fold); "after" is
`memloc.unitmem` now (|act| per group's slice summed straight into the buffer, one division per pass, one
check per batch, one wait in the fold). Both give the same statistics bit for bit at float32 (checked here).

The models have the released widths (VAR-d16: 1024 -> 4096, 680 tokens in 10 scales; RAR-B: 768 -> 3072, 256
image tokens) with 2 blocks and random weights: the overhead is per block, as is most of the forward's cost.
Repetitions interleave plain / before / after; the medians are reported.

    python benchmarks/capture_overhead.py                 # CPU, 1 thread: results/capture_overhead_cpu.json
    python benchmarks/capture_overhead.py --device cuda --dtype bfloat16 --depth 0 --models VAR-d16 VAR-d30 RAR-B RAR-XXL \
        --batch 32 --views 10 --profile                   # GPU: released depths, bf16 autocast, a profile of the capture
"""
import argparse
import json
import platform
import statistics
import time
from functools import partial
from pathlib import Path

import torch

from memloc import rar, var
from memloc.unitmem import UnitCapture, UnitMemStats

HERE = Path(__file__).resolve().parent


class CaptureBefore(UnitCapture):
    "The capture as it was before the rework (hook and values), kept here as the baseline."
    def _hook(self, b, mod, inp, out):
        B, T, H = out.shape
        dt = torch.promote_types(out.dtype, torch.float32)
        if self._buf is None or self._buf.shape[0] != B or self._buf.device != out.device or self._buf.dtype != dt:
            self._buf = torch.empty(B, *self.shape, device=out.device, dtype=dt)
        x_BTH = out.detach().abs() if self.abs else out.detach()
        for g, (s, e) in enumerate(self.groups):
            torch.div(x_BTH[:, s:e].sum(1, dtype=dt), e - s, out=self._buf[:, g, b])
        self._seen[b] = True

    def values(self, check=True):
        buf, self._buf, self._seen = self._buf, None, [False] * self.shape[1]
        if (~torch.isfinite(buf)).any(): raise ValueError("non-finite")
        return buf


def update_before(st: UnitMemStats, v, idx):
    "`UnitMemStats.update` as it was: two waits for the device (finite, non-negative) before the fold."
    v = v.to(st.sum.device, torch.float64)
    if (~torch.isfinite(v)).any(): raise ValueError("non-finite")
    if (v < 0).any(): raise ValueError("negative")
    st._add_ids(idx.tolist(), "update")
    i = idx.to(st.sum.device).view(len(idx), *[1] * len(st.shape))
    mx = v.max(0).values
    am = torch.where(v == mx, i, torch.iinfo(torch.int64).max).min(0).values
    st.sum += v.sum(0); st._fold(mx, am); st.count += len(idx)


PRESETS = {"VAR-d16": ("var", "d16"), "VAR-d30": ("var", "d30"), "RAR-B": ("rar", "rar_b"), "RAR-XXL": ("rar", "rar_xxl")}


def build(name, depth=2):
    "The model `name` at its released width with `depth` blocks (0: the released depth), random weights (seed 0)."
    torch.manual_seed(0)
    fam, preset = PRESETS[name]
    if fam == "var":
        c = var.preset_config(preset); c["var"]["drop_path_rate"] = 0.0
        if depth: c["var"]["depth"] = depth
        return var.build_model(c).eval()
    c = rar.rar_config(preset)
    if depth: c["generator"]["num_hidden_layers"] = depth
    return rar.build_model(c).eval()


def batch(model, cap, tok, lab, views, mode, st, idx):
    "One UnitMem batch: `views` passes (tokens shifted per view) with capture `mode` ('plain', 'before', 'after')."
    acc = None
    for v in range(views):
        t = tok.roll(v, 1)
        if mode == "plain": model.logits(t, lab); continue
        with cap: model.logits(t, lab)
        x = cap.values() if mode == "before" else cap.values(check=False)
        acc = x if acc is None else (acc + x if mode == "before" else acc.add_(x))
    if mode == "plain": return None
    if mode == "before": update_before(st, acc / views, idx)
    else: st.update(cap.check(acc.div_(views)), idx)
    return st


@torch.no_grad()
def run(name, B, views, reps, device, dtype="float32", depth=2, profile=False):
    model = build(name, depth).to(device)
    ac = torch.autocast(device, dtype=getattr(torch, dtype)) if dtype != "float32" else torch.autocast(device, enabled=False)
    g = torch.Generator().manual_seed(0)
    tok = torch.randint(0, model.vocab_size, (B, model.seq_len), generator=g).to(device)
    lab = (torch.arange(B) % 10).to(device)
    caps = dict(before=CaptureBefore(model), after=UnitCapture(model))
    stats = {m: UnitMemStats(caps[m].shape, device=device) for m in caps}
    def once(mode, k):
        if device == "cuda": torch.cuda.synchronize()
        t = time.perf_counter()
        with ac: batch(model, caps.get(mode), tok, lab, views, mode, stats.get(mode), torch.arange(k * B, (k + 1) * B))
        if device == "cuda": torch.cuda.synchronize()
        return time.perf_counter() - t
    for m in ("plain", "before", "after"): once(m, reps)          # warm-up (ids past the measured ones)
    times = {m: [] for m in ("plain", "before", "after")}
    for k in range(reps):
        for m in ("plain", "before", "after"): times[m].append(once(m, k))
    same = all(torch.equal(getattr(stats["before"], a), getattr(stats["after"], a)) for a in ("sum", "max", "argmax"))
    med = {m: statistics.median(t) for m, t in times.items()}
    quart = {m: [round(q, 5) for q in statistics.quantiles(t, n=4)[::2]] for m, t in times.items()}   # the spread: [q1, q3]
    top = None
    if profile:                                                   # where the capture's time goes: the ops of one batch with "after"
        from torch.profiler import ProfilerActivity, profile as prof
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with prof(activities=acts) as p: once("after", reps + 1)
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        top = p.key_averages().table(sort_by=key, row_limit=15)
        print(top)
    return dict(model=f"{name} width, {depth or 'released'} blocks, random weights", grid=list(caps["after"].shape), batch=B, views=views,
                reps=reps, dtype=dtype, profile=top, seconds_per_batch={m: round(v, 5) for m, v in med.items()}, quartiles_s=quart,
                overhead_pct={m: round(100 * (med[m] - med["plain"]) / med["plain"], 2) for m in ("before", "after")},
                stats_bit_identical=same)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", nargs="+", default=["VAR-d16", "RAR-B"], choices=list(PRESETS))
    ap.add_argument("--depth", type=int, default=2, help="blocks per model (0: the released depth)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="autocast of the passes")
    ap.add_argument("--profile", action="store_true", help="also profile one batch of the reworked capture")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--note", default="", help="what else ran on the machine")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = [run(m, a.batch, a.views, a.reps, a.device, a.dtype, a.depth, a.profile) for m in a.models]
    dev = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {a.threads} thread)"
    res = dict(device=dev, torch=torch.__version__, note=a.note, results=rows)
    out = Path(a.out) if a.out else HERE / "results" / f"capture_overhead_{'cpu' if a.device == 'cpu' else 'cuda'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
