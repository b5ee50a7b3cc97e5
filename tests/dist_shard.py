"Run by tests/test_shard.py, alone or under `torchrun --nproc_per_node=2` (gloo): the candidate scan and the samples, split and merged."
import sys

import torch
import torch.distributed as dist

from memloc.extraction import score_dataset
from memloc.quality import sample_images
from memloc.shard import run_each
import memloc.var as var


def tiny_var():
    torch.manual_seed(0)
    return var.build_model(var.preset_config("tiny")).eval()


def images(n=22, size=64):
    g = torch.Generator().manual_seed(1)
    return torch.utils.data.TensorDataset(torch.rand(n, 3, size, size, generator=g), torch.arange(n) % 10)


def run(out_dir, state: bool):
    model, data = tiny_var(), images()
    keep = list(range(1, 22, 2)) + [0, 4]                 # 13 positions, not in order: batches of 4 are 4 + 4 + 4 + 1
    st = (lambda k: f"{out_dir}/state/{k}") if state else (lambda k: None)
    scores, labels = score_dataset(model, data, keep, batch_size=4, num_workers=0, state_dir=st("scan"), save_every=1, progress=False)
    samples, sample_labels = sample_images(model, 10, seed=3, batch_size=4, state_dir=st("samples"), save_every=1)
    # three "random draws", each with samples of its own (a pass inside a task: that process's alone), split across ranks
    draws = run_each(lambda s: sample_images(model, 3, seed=10 + s, batch_size=2)[0], [0, 1, 2])
    return dict(scores=scores, labels=labels, samples=samples, sample_labels=sample_labels, draws=torch.stack(draws))


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, state = sys.argv[1], sys.argv[2] == "state"
    dist.init_process_group("gloo")
    res = run(out, state)
    if dist.get_rank() == 0: torch.save(res, f"{out}/merged.pt")
    dist.destroy_process_group()
