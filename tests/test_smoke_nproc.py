"""`make smoke`'s `--nproc 2` pass: stages of profile [smoke] run again in two gloo processes under torchrun (into
runs/smoke/nproc2/), and every file they wrote equals the one-process run's (figures/smoke/) byte for byte; only
the per-process UnitMem statistics files are named by their process. One file is equal to rounding only: quality.json,
whose FID, IS and KID one process computes from the gathered (bit-identical) samples on the threads it was given, and
torchrun gives each process one (OMP_NUM_THREADS=1) where the one-process run has the machine's: the feature
statistics are summed in another order."""
import json
import math
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("extraction", "quality", "var_scales", "rar_blocks")   # the stages `make smoke` runs with --nproc 2
ONE, TWO = ROOT / "figures" / "smoke", ROOT / "runs" / "smoke" / "nproc2" / "figures"

pytestmark = pytest.mark.skipif(not os.environ.get("MEMLOC_SMOKE_RUN"), reason="checks the outputs of `make smoke`")


def _files(folder: Path) -> dict[str, bytes]:
    "Every file of a stage's folder but its UnitMem statistics (`<stem>.stats.pt`, or one file per process under --nproc)."
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".stats." not in p.name}


LOOSE = {"quality.json": 1e-6}   # file: the relative tolerance of its floats (measured: 1e-9 and below)


def _close(a, b, rel: float) -> bool:
    "Equal JSON values, floats to `rel`."
    if isinstance(a, float) and isinstance(b, float): return math.isclose(a, b, rel_tol=rel, abs_tol=0.0)
    if isinstance(a, dict) and isinstance(b, dict): return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list): return len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_close_is_strict_beyond_its_tolerance():
    assert _close({"fid": [1e6, 2]}, {"fid": [1e6 * (1 + 1e-9), 2]}, 1e-6)
    assert not _close({"fid": [1e6, 2]}, {"fid": [1e6 * (1 + 1e-5), 2]}, 1e-6) and not _close({"n": 2}, {"n": 3}, 1e-6)


@pytest.mark.parametrize("stage", STAGES)
def test_two_processes_wrote_what_one_wrote(stage):
    one, two = _files(ONE / stage), _files(TWO / stage)
    assert one and set(one) == set(two)
    loose = lambda f: Path(f).name in LOOSE and _close(json.loads(one[f]), json.loads(two[f]), LOOSE[Path(f).name])
    assert [f for f in one if one[f] != two[f] and not loose(f)] == []


@pytest.mark.parametrize("stage", ("var_scales", "rar_blocks"))
def test_each_process_saved_its_statistics(stage):
    stats = sorted(p.name for p in (TWO / stage).glob("*.stats.*pt"))
    assert stats and all(".rank" in s for s in stats) and len([s for s in stats if "rank1-of-2" in s]) == len(stats) // 2


def test_the_processes_stayed_on_this_machine():
    "torchrun and gloo look up this machine's own name (the offline guard logs it); nothing else was attempted."
    import socket
    log = ROOT / "runs" / "smoke" / "network-nproc2.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    own = {f"gethostbyaddr of {n!r}" for n in (socket.gethostname(), socket.getfqdn())} | {f"gethostbyname of {socket.gethostname()!r}"}
    assert [l for l in lines if l.split(": ", 1)[-1] not in own] == []
