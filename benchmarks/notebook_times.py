"""How long each notebook's demonstrations take: `nbdev-test` on one notebook at a time (the cells not tagged `#| slow`).

The "Start here" page of the site (`make docs`) shows these times beside the reading order. Each notebook runs in
its own `nbdev-test` process, one after the other, with the thread count of the environment (run it with
OMP_NUM_THREADS=1 for the one-core figure a laptop gives at least); the time includes starting the kernel.

    OMP_NUM_THREADS=1 python benchmarks/notebook_times.py                  # every notebook: results/notebook_times.json
    OMP_NUM_THREADS=1 python benchmarks/notebook_times.py --note "measured while two trainings ran"
    python benchmarks/notebook_times.py 00_config.ipynb 19_stages.ipynb   # some notebooks (the others' times are kept)
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "notebook_times.json"


def cpu_name() -> str:
    "The processor's model name (Linux), else what `platform` knows."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def time_notebook(name: str, timeout: float) -> dict:
    "Seconds `nbdev-test` takes on the notebook `nbs/<name>`, and whether it passed."
    nbdev_test = Path(sys.executable).with_name("nbdev-test")
    t0 = time.perf_counter()
    try:
        r = subprocess.run([str(nbdev_test), "--path-glob", f"*/{name}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=timeout)
        ok, tail = r.returncode == 0, (r.stdout + r.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        ok, tail = False, [f"over {timeout:.0f} s"]
    out = {"seconds": round(time.perf_counter() - t0, 1), "passed": ok}
    if not ok: out["error"] = " / ".join(tail)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="names in nbs/ (default: every notebook)")
    ap.add_argument("--note", default="", help="how the machine was loaded while it ran (shown on the page)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one notebook may take")
    a = ap.parse_args(argv)
    names = a.notebooks or sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    times = old.get("notebooks", {}) if a.notebooks else {}
    for n in names:
        times[n] = time_notebook(n, a.timeout)
        print(f"{n:32s} {times[n]['seconds']:8.1f} s{'' if times[n]['passed'] else '  FAILED'}", flush=True)
    result = {"what": "seconds of `nbdev-test` on each notebook alone (its cells not tagged slow), kernel start included",
              "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset"),
              "date": time.strftime("%Y-%m-%d"), "note": a.note,
              "notebooks": dict(sorted(times.items()))}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"total {sum(t['seconds'] for t in times.values()):.0f} s -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
