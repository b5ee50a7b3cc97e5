"`memloc reproduce --nproc 2`: a stage's notebook in two gloo processes under torchrun gives what one process gives, and a run whose process is killed resumes with the same command."
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memloc.reproduce import Ranks, UsageError, main

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# A stage with both kinds of long pass: UnitMem statistics (`measure`, saved per process) and a `run_batches` pass
# (parts in the stage's state folder). `die.rank1` makes process 1 kill itself in its second batch, after one save.
STAGE = """
import os, signal, time, torch
from pathlib import Path
root = Path(os.environ["MEMLOC_ROOT"])
if (root / "wait").exists():                                     # a test interrupts the run here
    (root / f"started.{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    while (root / "wait").exists(): time.sleep(0.1)
from memloc.config import out_dir
from memloc.shard import rank_world, run_batches
from memloc.unitmem import measure
from toy_adapter import ToyAdapter, toy_data, shift_aug
torch.set_num_threads(1)
d = out_dir(profile, "u")
calls = [0]
def views(img, ids, v):
    calls[0] += 1
    if calls[0] > 3 and os.environ.get("RANK") == "1" and (Path(os.environ["MEMLOC_ROOT"]) / "die.rank1").exists():
        (Path(os.environ["MEMLOC_ROOT"]) / "die.rank1").unlink(); os.kill(os.getpid(), signal.SIGKILL)
    return shift_aug(img, ids, v)
x, y = toy_data()
st = measure(ToyAdapter(), (x, y), augment=views, augmentations=3, batch_size=4, stats_path=str(d / "u.stats.pt"), save_every=1, progress=False)
sq = run_batches(lambda it, _: {"v": torch.arange(it.start, it.stop, dtype=torch.float64) ** 2}, 13, 4, state_dir, {"task": "squares"},
                 save_every=1, progress=False)
torch.save({"sum": st.sum, "max": st.max, "argmax": st.argmax, "count": st.count, "um": st.compute(), "sq": sq["v"], "world": rank_world()[1]},
           d / "result.pt")
"""


def _write_nb(path, body):
    cells = [{"id": "p", "cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "profile = 'mini'\nstate_dir = None",
              "outputs": [], "execution_count": None},
             {"id": "b", "cell_type": "code", "metadata": {}, "source": body, "outputs": [], "execution_count": None}]
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}},
                                "nbformat": 4, "nbformat_minor": 5}))


def _repo(path: Path) -> Path:
    (path / "nbs").mkdir(parents=True)
    (path / "pyproject.toml").write_text("[project]\nname = 'fake'\n")
    (path / "settings.ini").write_text(f"[mini]\nruns_dir = {path}/runs\nfigures_dir = {path}/figs\n")
    _write_nb(path / "nbs" / "u.ipynb", STAGE)
    return path


def _run(repo, *args):
    code = ("import sys; from memloc.reproduce import main, Stage; "
            "main(sys.argv[1:], stages=[Stage('u', 'u.ipynb', 't', folders=(('state_dir', 'state'),), ranks=True)])")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "MEMLOC_ROOT": str(repo), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, "reproduce", "--no-progress", *args], env=env, cwd=repo,
                          capture_output=True, text=True, timeout=300)


def _result(repo):
    return torch.load(repo / "figs" / "u" / "result.pt")


def test_ranks_options_are_checked():
    assert Ranks(2).torchrun()[-2:] == ["--nproc_per_node=2", "--standalone"]
    assert "--node_rank=1" in Ranks(8, 2, 1, "10.0.0.1", 29400).torchrun()
    for bad in (Ranks(0), Ranks(2, 2, 2), Ranks(1, 1, 0, "h", 0)):
        with pytest.raises(UsageError): bad.check()


def test_help_lists_nproc(capsys):
    with pytest.raises(SystemExit): main(["reproduce", "--help"])
    out = capsys.readouterr().out
    assert all(o in out for o in ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port"))


@pytest.mark.timeout(600)
def test_two_gloo_processes_equal_one_and_a_killed_one_resumes(tmp_path):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None: pytest.skip("torchrun not installed")
    one, two = _repo(tmp_path / "one"), _repo(tmp_path / "two")
    r = _run(one)
    assert r.returncode == 0, r.stderr[-3000:]
    (two / "die.rank1").write_text("")                             # process 1 dies in its second batch
    r = _run(two, "--nproc", "2")
    assert r.returncode == 1 and "failed under torchrun (2 processes" in r.stderr and "same command resumes" in r.stderr, r.stderr[-3000:]
    assert not (two / "die.rank1").exists() and not (two / "figs" / "u").exists()   # nothing promoted
    saved = list((two / "runs" / ".partial" / "u").rglob("u.stats.rank1-of-2.pt"))
    assert len(saved) == 1                                         # process 1's first batch was saved
    from memloc.unitmem import load_stats
    assert len(load_stats(saved[0])[1]) == 4
    r = _run(two, "--nproc", "2")                                  # the same command resumes
    assert r.returncode == 0 and "u: resuming" in r.stdout, r.stdout + r.stderr[-3000:]
    a, b = _result(one), _result(two)
    assert a["world"] == 1 and b["world"] == 2
    for k in ("max", "argmax", "sq"): assert torch.equal(a[k], b[k]), k   # exact: the same values, folded by max or gathered
    assert a["count"] == b["count"] == 20
    # the sums are float64 sums of the same float32 values, added in another order (each process's, then the two): equal to rounding
    assert torch.allclose(a["sum"], b["sum"], rtol=1e-14, atol=0) and torch.allclose(a["um"], b["um"], rtol=1e-12, atol=1e-15)
    assert sorted(p.name for p in (two / "figs" / "u").glob("u.stats*.pt")) == ["u.stats.rank0-of-2.pt", "u.stats.rank1-of-2.pt"]
    assert not (two / "runs" / ".partial").exists() and not (two / "figs" / ".partial").exists()
    r = _run(two, "--nproc", "2")
    assert r.returncode == 0 and "unchanged, kept" in r.stdout, r.stdout


@pytest.mark.timeout(600)
def test_two_machines_share_a_stage(tmp_path):
    "Two 'machines' on this host (--nnodes 2, one process each, one shared folder): machine 1 joins machine 0's stage and stops with its run."
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None: pytest.skip("torchrun not installed")
    import socket
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = str(s.getsockname()[1])
    repo = _repo(tmp_path / "shared")
    code = ("import sys; from memloc.reproduce import main, Stage; "
            "main(sys.argv[1:], stages=[Stage('u', 'u.ipynb', 't', folders=(('state_dir', 'state'),), ranks=True)])")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "MEMLOC_ROOT": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = lambda r: [sys.executable, "-c", code, "reproduce", "--no-progress", "--nnodes", "2", "--node-rank", str(r),
                     "--master-addr", "127.0.0.1", "--master-port", port]
    follower = subprocess.Popen(cmd(1), env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = subprocess.run(cmd(0), env=env, cwd=repo, capture_output=True, text=True, timeout=500)
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None: follower.kill()
    assert r.returncode == 0, r.stderr[-3000:]
    assert follower.returncode == 0 and "u: joining" in out and "u: done" in out, out + err[-3000:]
    assert _result(repo)["world"] == 2 and _result(repo)["count"] == 20


def _gone(pid: int, timeout: float = 20) -> bool:
    import time
    t0 = time.time()
    while time.time() - t0 < timeout:
        try: os.kill(pid, 0)
        except ProcessLookupError: return True
        time.sleep(0.1)
    os.kill(pid, 9)                                                # the test's own orphan: do not leave it running
    return False


@pytest.mark.timeout(300)
def test_ctrl_c_stops_every_process_with_the_drivers_message_alone(tmp_path):
    import signal, time
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None: pytest.skip("torchrun not installed")
    repo = _repo(tmp_path / "r")
    (repo / "wait").write_text("")
    code = ("import sys; from memloc.reproduce import main, Stage; "
            "main(sys.argv[1:], stages=[Stage('u', 'u.ipynb', 't', folders=(('state_dir', 'state'),), ranks=True)])")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "MEMLOC_ROOT": str(repo), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-c", code, "reproduce", "--no-progress", "--nproc", "2"], env=env, cwd=repo,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not all((repo / f"started.{r}").exists() for r in (0, 1)):
        assert p.poll() is None and time.time() - t0 < 200, p.communicate()
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.strip().splitlines() == [l for l in err.strip().splitlines() if l.startswith("interrupted")], err
    assert all(_gone(int((repo / f"started.{r}").read_text())) for r in (0, 1)), "a process's kernel outlived the driver"
    (repo / "wait").unlink()
    r = _run(repo, "--nproc", "2")                                 # the same command redoes the stage
    assert r.returncode == 0 and "u: resuming" in r.stdout, r.stdout + r.stderr[-2000:]
