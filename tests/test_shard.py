"memloc.shard: the candidate scan, the FID samples and tasks split by run_each across two gloo processes equal one process's, with and without saved parts."
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_shard import run
from memloc.shard import StaleRun, run_batches, shard_batches

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("state", ["state", "none"])
def test_two_ranks_equal_one(tmp_path, state):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists(): pytest.skip("torchrun not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(HERE / "dist_shard.py"), str(tmp_path), state],
                       env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    merged = torch.load(tmp_path / "merged.pt", weights_only=True)
    single = run(tmp_path / "single", state == "state")
    assert set(merged) == set(single)
    for k in single: assert torch.equal(merged[k], single[k]), k
    assert merged["samples"].dtype == torch.uint8 and merged["samples"].shape == (10, 3, 64, 64)
    assert torch.equal(merged["labels"], torch.tensor([1, 3, 5, 7, 9, 1, 3, 5, 7, 9, 1, 0, 4]))
    if state == "state":   # each rank saved its own batches (save_every=1): 4 scan parts and 3 sample parts, in one folder per run
        scan, = (tmp_path / "state" / "scan").iterdir()
        assert len(list(scan.glob("part-*.safetensors"))) == 4 and (scan / "run.json").is_file()


class Stop(Exception):
    "A run killed part-way."


def test_resume_after_a_stop(tmp_path):
    "A run stopped after its first part resumes from it: the batches it saved are not computed again."
    calls, stop_at = [], [4]
    def compute(items, _):
        if items.start in stop_at: raise Stop
        calls.append(items.start)
        return {"x": torch.arange(items.start, items.stop)}
    with pytest.raises(Stop): run_batches(compute, 9, 2, tmp_path, save_every=2, progress=False)
    calls.clear(); stop_at.clear()
    out = run_batches(compute, 9, 2, tmp_path, save_every=2, progress=False)
    assert calls == [4, 6, 8] and torch.equal(out["x"], torch.arange(9))


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="rows"): run_batches(lambda it, _: {"x": torch.zeros(1)}, 4, 2, progress=False)
    with pytest.raises(ValueError, match="batch_size"): shard_batches(3, 0)
    with pytest.raises(ValueError, match="save_every"): run_batches(lambda it, _: {}, 4, 2, save_every=0)
    (tmp_path / "x").mkdir()
    run_batches(lambda it, _: {"x": torch.zeros(len(it))}, 4, 2, tmp_path / "x", meta={"m": 1}, progress=False)
    folder, = (tmp_path / "x").iterdir()
    (folder / "part-00000009-00000009.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(StaleRun, match="unreadable"):
        run_batches(lambda it, _: {"x": torch.zeros(len(it))}, 4, 2, tmp_path / "x", meta={"m": 1}, progress=False)
