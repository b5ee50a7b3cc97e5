"Reading weight files: pickled code refused as such, truncated and foreign files named."
import pytest
import torch

from memloc.checkpoints import CheckpointError, load_torch_file, read_state_dict


class Code:
    "A pickle that would call a function when loaded."
    def __reduce__(self): return (print, ("this ran",))


def test_pickled_code_is_refused_as_not_weights_only(tmp_path):
    p = tmp_path / "code.pth"
    torch.save({"w": torch.zeros(2), "x": Code()}, p)
    for f in (read_state_dict, load_torch_file):
        with pytest.raises(CheckpointError) as e: f(p)
        assert "not weights-only" in str(e.value) and "pickled" in str(e.value) and "truncated" not in str(e.value)


def test_truncated_empty_and_foreign_files(tmp_path):
    p = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(100)}, p)
    assert torch.equal(read_state_dict(p)["w"], torch.zeros(100))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"): read_state_dict(p)
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"): read_state_dict(p)
    p.write_text("some notes, not weights")
    with pytest.raises(CheckpointError, match="not a checkpoint"): read_state_dict(p)


def test_load_strict_takes_a_kind_it_does_not_know_by_its_keys():
    import torch
    from torch import nn
    from memloc.checkpoints import CheckpointError, load_strict
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    load_strict(dst, src.state_dict(), "newfamily")                     # a new family's kind: the keys decide
    assert torch.equal(dst.weight, src.weight)
    with pytest.raises(CheckpointError, match="does not match the newfamily"):
        load_strict(dst, {"weight": src.weight}, "newfamily")
    with pytest.raises(ValueError, match="kind"):
        load_strict(dst, src.state_dict(), "")
