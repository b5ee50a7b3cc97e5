"The mitigation stage: its pieces on toy inputs and the dup testbed, the oracle's split, and the committed results' keys."
import json
from pathlib import Path

import pytest
import torch

from memloc.mitigation import (best_mitigation, descend, extracted_targets, kept, longer_prefix, pool_draws, stays_removed,
                               subprobe, wilson)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "figures" / "mini" / "mitigation" / "results.json"
FAMILIES = ("var", "rar", "llamagen")
REQUIRED = ("unitmem", "random", "unlearning", "finetune", "retrain_dedup")


def test_targets_are_extracted_training_images():
    att = dict(indices=torch.tensor([4, 2, 8, 6, 1]), extracted=torch.tensor([True, True, True, False, True]),
               groups=["member", "canary", "non_member", "member", "member"])
    assert extracted_targets(att, torch.tensor([2, 4, 6])).tolist() == [2, 4]   # 8: non-member; 6: not extracted; 1: not a member


@pytest.fixture(scope="module")
def rar():
    from memloc.localization import testbed_model
    model, split, _ = testbed_model("rar", "dup")
    return model, split


def test_kept_restores_after_scaling_and_training(rar):
    from memloc.intervention import scale_units
    model, _ = rar
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tok_before = {k: v.clone() for k, v in model.tokenizer.state_dict().items()}
    tokens = torch.randint(0, model.vocab_size, (2, model.seq_len)); labels = torch.tensor([1, 2])
    with kept(model):
        scale_units(model, torch.tensor([[0, 0], [1, 3]]), 0.0).apply()
        descend(model, lambda g: model.loss(tokens, labels, cond_drop_prob=0.0), 2, lr=1e-3)
        changed = any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
        assert all(torch.equal(v, tok_before[k]) for k, v in model.tokenizer.state_dict().items())   # only the generator trains
    assert changed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_longer_prefix_is_a_step_boundary_twice_the_headline():
    from memloc.localization import testbed_model
    got = {f: (testbed_model(f, "dup")[0].headline_prefix(), longer_prefix(testbed_model(f, "dup")[0])) for f in FAMILIES}
    assert got == {"var": (5, 14), "rar": (8, 16), "llamagen": (8, 16)}   # VAR: scales end at 1, 5, 14, 30, ...
    with pytest.raises(ValueError, match="no generation-step boundary"):
        longer_prefix(testbed_model("rar", "dup")[0], factor=100)


def test_subprobe_keeps_rows_aligned():
    from memloc.intervention import Probe
    pr = Probe(torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 3]), torch.tensor([10, 11, 12, 13]), ["m", "c", "m", "c"], None, [5],
               tokens=torch.arange(8).view(4, 2), recon_embedding=torch.eye(4))
    sub = subprobe(pr, {13, 11})
    assert sub.indices.tolist() == [11, 13] and sub.labels.tolist() == [1, 3] and sub.groups == ["c", "c"]
    assert sub.tokens.tolist() == [[2, 3], [6, 7]] and torch.equal(sub.recon_embedding, torch.eye(4)[[1, 3]])
    assert sub.prefixes == [5] and pr.indices.tolist() == [10, 11, 12, 13]   # the probe itself is unchanged


def test_pooled_draws_and_their_verdicts():
    recs = [dict(n_targets=10, extracted=10, extracted_share=1.0, removed=0, reemerged=dict(longer_prefix=0, sampling=0, finetune=0)),
            dict(n_targets=10, extracted=7, extracted_share=0.7, removed=3, reemerged=dict(longer_prefix=3, sampling=1, finetune=None))]
    p = pool_draws(recs)
    assert p["n_draws"] == 2 and p["extracted_draws"] == [10, 7] and p["fid"] is None and p["fid_draws"] == 0
    assert p["reemerged_share"] == dict(longer_prefix=1.0, sampling=1 / 3, finetune=None)   # the benign re-attack removed nothing
    assert p["reemerged_removed"]["finetune"] == 0 and p["reemerged_draws"]["finetune"] == 1
    sr = stays_removed(p)
    assert set(sr) == {"longer_prefix", "sampling"} and sr["longer_prefix"][3] == "comes back" and sr["sampling"][3] == "cannot tell"


def test_wilson_and_best():
    lo, hi = wilson(5, 10)
    assert 0.236 < lo < 0.237 and 0.763 < hi < 0.764   # the textbook 95% Wilson interval of 5 in 10
    r = dict(methods=dict(none=dict(fid=1.0, extracted_share=1.0), unitmem=dict(fid=5.0, extracted_share=0.0)))
    assert best_mitigation(r) is None   # nothing within the FID budget
    assert stays_removed(dict(removed=0, reemerged=dict(longer_prefix=0))) == {}


def test_oracle_split_holds_every_member_once():
    from memloc.testbed import dedup_split, regime_images, regime_split
    _, labels = regime_images("dup")
    s = regime_split("dup", labels)
    d = dedup_split(s)
    assert torch.equal(d.members, s.members) and torch.equal(d.canaries, s.canaries) and torch.equal(d.non_members, s.non_members)
    assert sorted(d.train_indices().tolist()) == s.members.tolist() and len(s.train_indices()) > len(d.train_indices())


def test_committed_oracle_matches_the_testbed():
    from memloc.testbed import dedup_manifest, read_manifest, testbed_manifest
    dup, oracle = read_manifest(testbed_manifest("dup")), read_manifest(dedup_manifest("dup"))
    assert set(oracle) == set(FAMILIES)
    for f in FAMILIES:
        assert oracle[f]["members"] == dup[f]["members"] and oracle[f]["non_members"] == dup[f]["non_members"]
        assert oracle[f]["stream"]["length"] == oracle[f]["stream"]["members"] == len(dup[f]["members"])   # each image once
        assert oracle[f]["train"]["settings"]["seed"] == dup[f]["train"]["settings"]["seed"]
        assert abs(oracle[f]["stream"]["epochs"] - dup[f]["stream"]["epochs"]) < 0.1     # the same passes over the stream


def test_committed_results_have_the_keys_the_report_reads():
    r = json.loads(RESULTS.read_text())
    assert r["testbed"] == "dup"
    for f in FAMILIES:
        ms = r[f]["methods"]
        assert set(REQUIRED) <= set(ms)
        assert ms["none"]["extracted_share"] == 1.0     # the targets are what the attack extracts from the model as trained
        for name, e in ms.items():
            assert 0.0 <= e["extracted_share"] <= 1.0 and e["fid"] is not None and e["fid"] > 0
            if name == "none": continue
            assert set(e["reemerged_share"]) == {"longer_prefix", "sampling", "finetune"}
            assert all(v is None or 0.0 <= v <= 1.0 for v in e["reemerged_share"].values())
        assert ms["random"]["n_draws"] >= 20 and len(ms["random"]["extracted_draws"]) == ms["random"]["n_draws"]
        assert all(0 < ms[m]["p_vs_random"] <= 1 for m in ("unitmem", "activation_contrast", "gradient", "learned_mask"))
        assert [c["steps"] for c in r[f]["curves"]["unlearning"]] == r["params"]["checkpoints"]
