"The ground-truth stage: recall, the UnitMem point set, and the stage's results file."
import json

import pytest
import torch

from memloc.config import resolve
from memloc.data import load_digits
from memloc.ground_truth import recall_at, unitmem_points
from memloc.stats import bootstrap_share, empirical_p, verdict
from memloc import testbed as tb


def test_recall_counts_S_among_the_top_units():
    sc = torch.zeros(3, 5)
    sc[2, 4], sc[0, 1], sc[1, 0] = 3.0, 2.0, 1.0
    assert recall_at(sc, [[2, 4], [0, 1]]) == 1.0
    assert recall_at(sc, [[2, 4], [1, 1]]) == 0.5
    assert recall_at(sc, [[1, 2]]) == 0.0


def test_unitmem_points_hold_the_extra_points_and_a_seeded_member_sample():
    _, split, _ = tb.load_testbed("var", tb.testbed_manifest("long"))
    labels = load_digits(16)[1]
    extra = torch.tensor([int(split.non_members[0])])
    a = unitmem_points(split, labels, extra, 3, seed=1)
    assert a == unitmem_points(split, labels, extra, 3, seed=1) and int(extra) in a
    members = set(a) - {int(extra)}
    assert members <= set(split.members.tolist()) and len(members) == 30
    assert not members & set(split.canaries.tolist())


def test_stats():
    assert empirical_p(0, [1] * 10) == pytest.approx(1 / 11)
    assert verdict(0.05, True, n_draws=20) == "supported" and verdict(0.05, False, n_draws=20) == "not supported"
    b = bootstrap_share([1, 0, 0, 0])
    assert b["lo"] <= 0.25 <= b["hi"] and b["n"] == 4


def test_committed_results_have_the_issue_keys():
    p = resolve("figures/mini/ground_truth/results.json")
    r = json.loads(p.read_text())
    for tb in ("long", "canary"):
        for fam in ("var", "rar"):
            e = r["testbeds"][tb][fam]
            for k in ("epochs", "canary_stream_share", "membership_auc", "canaries_extracted_share", "non_members_extracted_share"):
                assert 0 <= e[k] <= (1 if k != "epochs" else 1e6), (tb, fam, k)
            assert len({i["seed"] for i in e["implants"]}) >= 5
            for i in e["implants"]:
                for k in ("seed", "n_units", "recall_unitmem", "recall_random", "implants_extracted_before",
                          "implants_extracted_after_zero_S", "implants_extracted_after_zero_random"):
                    assert k in i
                assert 0 <= i["recall_unitmem"] <= 1 and 0 < i["recall_random"] < 1
