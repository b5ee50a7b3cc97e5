"Run by tests/test_unitmem.py under `torchrun --nproc_per_node=2`: sharded measure + all_reduce on gloo."
import sys
import torch
import torch.distributed as dist

from toy_adapter import ToyAdapter, toy_data, shift_aug
from memloc.unitmem import measure

torch.set_num_threads(1)
dist.init_process_group("gloo")
x, y = toy_data()
stats = measure(ToyAdapter().double(), (x.double(), y),  # float64 model: per-point values do not depend on the batch
                augment=shift_aug, augmentations=3, batch_size=4,
                stats_path=sys.argv[1] + "/run.pt", save_every=1, progress=False)
if dist.get_rank() == 0: torch.save(stats.state_dict(), sys.argv[1] + "/reduced.pt")
dist.destroy_process_group()
