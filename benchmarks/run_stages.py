"""Run the miniature study's stage notebooks without a Jupyter kernel, for machines that have torch but
not papermill/nbclient (a lent GPU machine). Each notebook's code cells run in order in a fresh
namespace, with `profile` and (where the notebook declares it) `device` overridden after its
parameters cell; the time of each stage and its results.json are collected.

    python benchmarks/run_stages.py --device cuda --out some/folder
"""
import argparse
import json
import shutil
import time
import traceback
from pathlib import Path

import matplotlib
matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parent.parent
STAGES = [("extraction", "04_extraction"), ("adaptation", "10_adaptation"), ("var_scales", "11_var_scales"),
          ("rar_blocks", "12_rar_blocks"), ("intervention", "13_intervention"), ("subset_robustness", "14_subset_robustness")]


def code_of(nb_path: Path, overrides: dict) -> str:
    nb = json.loads(nb_path.read_text())
    parts = []
    for c in nb["cells"]:
        if c["cell_type"] != "code": continue
        src = "".join(c["source"])
        lines = [l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))]
        if any(l.startswith("#| gpu") for l in lines): continue   # the full-scale cells
        parts.append("\n".join(lines))
        if "parameters" in c.get("metadata", {}).get("tags", []):
            declared = {l.split("=")[0].strip() for l in lines if "=" in l and not l.startswith("#")}
            parts.append("\n".join(f"{k} = {v!r}" for k, v in overrides.items() if k in declared or k == "profile"))
    return "\n\n".join(parts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="runs/mini/gpu")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    import torch
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "stages": {}}
    for stage, nb in STAGES:
        if a.only and stage not in a.only: continue
        t0 = time.perf_counter()
        try:
            exec(compile(code_of(ROOT / "nbs" / f"{nb}.ipynb", {"profile": "mini", "device": a.device}), nb, "exec"), {"__name__": "__main__"})
            status = "ok"
        except Exception:
            status = traceback.format_exc()[-1500:]
        secs = time.perf_counter() - t0
        report["stages"][stage] = {"seconds": round(secs, 1), "status": status}
        print(stage, round(secs, 1), status[:300], flush=True)
        res = ROOT / "figures" / "mini" / stage / "results.json"
        if res.is_file(): shutil.copy(res, out / f"{stage}_results.json")
        (out / "stages.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
