"Loading what a profile studies, and checking checkpoints before a run."
import pytest
import torch
from safetensors.torch import save_file

from memloc.config import SettingsError
from memloc.study import check_checkpoint, load_model, mini_split, model_split, study_points, unit_points


def _save(module, path):
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))


def test_check_checkpoint_accepts_matching_keys_and_shapes(tmp_path):
    from memloc.rar import build_model
    m = build_model("mini")
    _save(m.generator, tmp_path / "g.safetensors")
    _save(m.tokenizer, tmp_path / "t.safetensors")
    assert "keys match the generator" in check_checkpoint(tmp_path / "g.safetensors", "rar", "mini", "generator")
    assert "tokenizer" in check_checkpoint(tmp_path / "t.safetensors", "rar", "mini", "tokenizer")


def test_check_checkpoint_names_the_mismatch(tmp_path):
    from memloc.var import CheckpointError, build_model, preset_config
    m = build_model(preset_config("mini"))
    sd = dict(m.generator.state_dict())
    sd.pop("head.weight")
    sd["blocks.0.ffn.fc1.weight"] = torch.zeros(3, 3)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError) as e:
        check_checkpoint(tmp_path / "bad.safetensors", "var", "mini", "generator")
    assert "head.weight" in str(e.value) and "blocks.0.ffn.fc1.weight" in str(e.value)
    # the tokenizer is not the generator
    _save(m.tokenizer, tmp_path / "vae.safetensors")
    with pytest.raises(CheckpointError):
        check_checkpoint(tmp_path / "vae.safetensors", "var", "mini", "generator")


def test_full_model_without_files_stops_naming_the_setting():
    with pytest.raises(SettingsError, match="var_d30_path"):
        load_model("VAR-d30", "full")
    with pytest.raises(ValueError, match="unknown model"):
        load_model("VAR-d99", "mini")


def test_miniature_points_and_groups():
    split = mini_split()
    members = study_points("mini")
    assert set(members.indices.tolist()) == set(split.members.tolist())
    assert (members.groups == "canary").sum() == len(split.canaries)
    both = study_points("mini", which="all")
    assert (both.groups == "non_member").sum() == len(split.non_members)
    idx, img, label = members.dataset[0]
    assert img.shape[0] == 3 and 0 <= img.min() and img.max() <= 1 and label == members.labels[0]
    small, large = study_points("mini", fraction=0.25), study_points("mini", fraction=0.5)
    assert set(small.indices.tolist()) < set(large.indices.tolist())
    with pytest.raises(ValueError, match="which"):
        study_points("mini", which="canaries")


def test_load_model_stands_in_random_weights_without_a_testbed(tmp_path, monkeypatch):
    from memloc.family import FAMILIES
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "settings.ini").write_text("[mini]\ntestbed = long\ndevice = cpu\nimage_size = 16\n")
    monkeypatch.setenv("MEMLOC_ROOT", str(tmp_path))            # a repository without a trained testbed
    for fam in FAMILIES:
        a, b = load_model(fam, seed=3), load_model(fam, seed=3)
        assert a.family == fam and a.source == "random weights" and not a.training
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))   # seeded
        split = model_split(fam)
        assert len(split.canaries) and not set(split.members.tolist()) & set(split.non_members.tolist())
    assert model_split("VAR-d30", "full") is None


def test_unit_points_keep_every_canary_when_asked():
    data, ids, labels, split = unit_points("mini", fraction=0.1, seed=0, add_canaries=True)
    assert set(split.canaries.tolist()) <= set(ids) and ids == sorted(set(ids))
    drawn = unit_points("mini", fraction=0.1, seed=0)[1]       # mini: the paper's draw, canaries only where drawn
    assert set(drawn) < set(ids) and not set(split.canaries.tolist()) <= set(drawn)
    assert set(ids) <= set(split.members.tolist()) and len(ids) < len(split.members)
    images, point_labels = data
    assert len(labels) == len(images) and torch.equal(torch.as_tensor(point_labels), labels)
