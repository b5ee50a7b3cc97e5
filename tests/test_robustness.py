"Stage 5: agreement measures with known answers, exact per-subset statistics, the subset checks, a tiny end-to-end run."
import math

import numpy as np
import pytest
import torch

from memloc.data import Augment, load_digits, make_split
from memloc.robustness import (check_fractions, compare_mitigation, consistency, jaccard, jaccard_chance, level_stats,
                               levels, merged_stats, nested_subsets, pearson, reuse_values, spearman,
                               subset_stats_from_values, unit_map, verify_values)
from memloc.unitmem import measure
from memloc.var_scales import stats_from_values


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


# --- agreement measures -------------------------------------------------------------------------

def test_spearman_known_answers():
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert spearman(x, x ** 3) == pytest.approx(1.0)            # monotone: ranks unchanged
    assert spearman(x, -2 * x + 1) == pytest.approx(-1.0)
    a = torch.tensor([1.0, 2.0, 3.0, 4.0]); b = torch.tensor([1.0, 3.0, 2.0, 4.0])
    assert spearman(a, b) == pytest.approx(1 - 6 * 2 / (4 * 15))  # one adjacent swap: 1 - 6 sum d^2 / n(n^2-1)
    assert math.isnan(spearman(a, torch.ones(4)))
    with pytest.raises(ValueError, match="shapes differ"): spearman(a, torch.ones(5))


def test_jaccard_pairs_and_masks():
    A = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    B = torch.tensor([[0, 0], [0, 1], [2, 0], [2, 1], [2, 2]])
    assert jaccard(A, B) == pytest.approx(2 / 7)
    assert jaccard(A, A) == 1.0 and jaccard(A, torch.tensor([[5, 5]])) == 0.0
    m1 = torch.zeros(2, 5, dtype=torch.bool); m1[0, :3] = True
    m2 = torch.zeros(2, 5, dtype=torch.bool); m2[0, 2:] = True
    assert jaccard(m1, m2) == pytest.approx(1 / 5)
    assert jaccard_chance(10, 100) == pytest.approx(0.1 / 1.9)
    g = torch.Generator().manual_seed(0)                         # chance formula against simulation
    sims = [len(set(torch.randperm(200, generator=g)[:20].tolist()) & set(torch.randperm(200, generator=g)[:20].tolist()))
            for _ in range(2000)]
    inter = np.mean(sims)
    assert inter / (40 - inter) == pytest.approx(jaccard_chance(20, 200), rel=0.05)


def test_map_correlation_known_answers():
    assert pearson([[1, 2], [3, 4]], [[2, 4], [6, 8]]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    # VAR: the mean map of UnitMem [scales, blocks, units]; a UnitMem shifted by a constant keeps the map's shape
    um = torch.rand(3, 4, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert pearson(unit_map(um)["mean"], unit_map(um + 0.3)["mean"]) == pytest.approx(1.0)
    assert unit_map(um)["mean"].shape == (3, 4)
    assert unit_map(um[0])["mean"].shape == (1, 4)               # RAR: [blocks, units] -> one block profile


def test_consistency_table_against_largest():
    g = torch.Generator().manual_seed(2)
    big = torch.rand(2, 5, 40, generator=g, dtype=torch.float64)
    other = torch.rand(2, 5, 40, generator=g, dtype=torch.float64)    # independent of the largest
    tab = consistency([other, big + 1e-3 * torch.rand(big.shape, generator=g, dtype=torch.float64), big],
                      [0.1, 0.5, 1.0], top_p=10, counts=[5, 20, 40], times=[1, 2, 4])
    last = tab.iloc[-1]
    assert last.spearman == pytest.approx(1) and last.jaccard == 1 and last.map_corr == pytest.approx(1)
    assert tab.spearman.iloc[1] > 0.99 and abs(tab.spearman.iloc[0]) < 0.2
    assert tab.top_units.tolist() == [20] * 3 and tab.jaccard_chance.iloc[0] == pytest.approx(jaccard_chance(20, 200))  # 10% of 5 x 40 unit scores
    assert tab.points.tolist() == [5, 20, 40] and tab.time_s.tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="shape"): consistency([big[:1], big], [0.5, 1.0])


# --- subsets ------------------------------------------------------------------------------------

def test_levels_and_fraction_checks():
    order, sizes = levels([[3, 1], [1, 3, 7, 5], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert order.tolist() == [1, 3, 5, 7, 0, 2, 4, 6] and sizes == [2, 4, 8]
    with pytest.raises(ValueError, match="not nested"): levels([[0, 1], [1, 2, 3, 4]])
    with pytest.raises(ValueError, match="adds 0 point"): levels([[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="repeated"): levels([[0, 0, 1], [0, 1, 2, 3]])
    with pytest.raises(ValueError, match="class 1"): levels([[0, 1, 2], [0, 1, 2, 3, 4]], [[0, 0, 1], [0, 0, 1, 1, 1]])
    assert check_fractions([1, 0.25, 0.5]) == [0.25, 0.5, 1.0]
    for bad, msg in (([0.5], "at least two"), ([0.0, 1.0], r"\(0, 1\]"), ([0.5, 0.5, 1], "repeat")):
        with pytest.raises(ValueError, match=msg): check_fractions(bad)


def test_nested_subsets_on_a_fake_split(digits):
    split = make_split(digits[1])
    _, ids, labs = nested_subsets("mini", [1.0, 0.25, 0.5], seed=0, split=split)
    assert [len(i) for i in ids] == sorted(len(i) for i in ids)
    for a, b in zip(ids, ids[1:]): assert torch.isin(a, b).all()       # nested
    assert all(torch.isin(split.canaries, i).all() for i in ids)      # canaries in every subset
    assert torch.equal(ids[-1], split.members.sort().values)
    assert torch.equal(labs[0], digits[1][ids[0]])
    _, ids_nc, _ = nested_subsets("mini", [0.25, 1.0], seed=0, split=split, canaries=False)
    assert len(ids_nc[0]) < len(ids[0])


def test_too_small_subset_is_refused(digits):
    split = make_split(digits[1])
    with pytest.raises(ValueError, match=r"fraction 0.005 is too small: it draws 1 image\(s\) of class"):
        nested_subsets("mini", [0.005, 1.0], split=split)
    with pytest.raises(ValueError, match="fraction 0.001 is too small: at least 2 images of every class"):
        nested_subsets("mini", [0.001, 1.0], split=split)
    nested_subsets("mini", [0.005, 1.0], split=split, min_per_class=1)  # allowed when asked


# --- exactness of derived statistics ------------------------------------------------------------

def test_derived_equals_direct_on_random_values():
    order, sizes = levels([[2, 5, 7], [1, 2, 5, 7, 9], list(range(10))])
    vals = torch.rand(10, 2, 3, 4, generator=torch.Generator().manual_seed(0))
    for n, st in zip(sizes, subset_stats_from_values(vals, order, sizes, batch_size=4)):
        d = stats_from_values(vals[:n], order[:n], 4)
        assert torch.equal(st.sum, d.sum) and torch.equal(st.max, d.max) and torch.equal(st.argmax, d.argmax) and st.count == n
    with pytest.raises(ValueError, match="rows of values"): subset_stats_from_values(vals[:9], order, sizes)


def test_derived_subsets_equal_measuring_each_subset_alone(digits):
    "Statistics of every subset derived from one pass over the largest = stage 1's `measure` run on that subset alone."
    import memloc.rar as rar
    torch.manual_seed(0)
    model = rar.build_model("mini").eval()
    imgs, labs = digits
    subsets = [[3, 8, 20], [3, 8, 11, 20, 30], [1, 3, 8, 11, 14, 20, 25, 30]]
    order, sizes = levels(subsets)
    aug = Augment(16, hflip=False)
    kept, t = level_stats(model, (imgs, labs), order, sizes, aug, augmentations=2, batch_size=1, seed=3)
    streamed, _ = level_stats(model, (imgs, labs), order, sizes, aug, augmentations=2, batch_size=1, seed=3, keep_values=False)
    for sub, st, sm in zip(subsets, kept, streamed):
        alone = measure(model, (imgs, labs), aug, augmentations=2, batch_size=1, points=sorted(sub), seed=3, progress=False)
        assert st.count == alone.count == len(sub)
        assert torch.equal(st.max, alone.max) and torch.equal(st.argmax, alone.argmax)
        torch.testing.assert_close(st.sum, alone.sum, rtol=1e-15, atol=0)     # float64 sums, another order of points
        torch.testing.assert_close(st.compute(), alone.compute(), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(sm.compute(), alone.compute(), rtol=1e-12, atol=1e-15)
        assert torch.equal(sm.argmax, alone.argmax)
    assert t[0] < t[1] < t[2]


def test_merged_stats_copies():
    vals = torch.rand(6, 2, 3, generator=torch.Generator().manual_seed(5))
    parts = [stats_from_values(vals[:2], [0, 1]), stats_from_values(vals[2:], [2, 3, 4, 5])]
    m = merged_stats(parts)
    assert m[0].count == 2 and m[1].count == 6 and parts[0].count == 2       # inputs untouched
    torch.testing.assert_close(m[1].compute(), stats_from_values(vals, range(6)).compute(), rtol=1e-12, atol=0)


def test_reuse_values(tmp_path):
    vals = torch.arange(4 * 3, dtype=torch.float32).view(4, 3)
    pts = [2, 5, 7, 9]
    p = tmp_path / "var.values.pt"
    torch.save({"values": vals, "done": 4, "meta": {"shape": [3], "augmentations": 4, "seed": 0, "points": pts, "dtype": "float32"}}, p)
    got = reuse_values(p, [7, 2, 9, 5], 4, 0, "float32")
    assert torch.equal(got, vals[[2, 0, 3, 1]])
    assert reuse_values(p, [7, 2, 9, 5], 10, 0) is None          # other views
    assert reuse_values(p, [7, 2, 9], 4, 0) is None              # other points
    assert reuse_values(tmp_path / "none.pt", pts, 4, 0) is None


# --- end to end ---------------------------------------------------------------------------------

def test_tiny_end_to_end_random_weight_var(digits):
    "Nested subsets -> per-subset UnitMem -> agreement table -> mitigation with restored weights, on a random-weight mini VAR."
    import memloc.var as var
    from memloc.extraction import make_backend
    from memloc.intervention import Probe
    torch.manual_seed(0)
    model = var.build_model(var.preset_config("mini")).eval()
    imgs, labs = digits
    c0, c1 = (labs == 0).nonzero()[:4, 0], (labs == 1).nonzero()[:4, 0]    # two classes, 2 / 3 / 4 images each
    subsets = [torch.cat([c0[:k], c1[:k]]) for k in (2, 3, 4)]
    fr = [0.5, 0.75, 1.0]
    order, sizes = levels(subsets, [labs[s] for s in subsets], fr)
    stats, times = level_stats(model, (imgs, labs), order, sizes, Augment(16, hflip=False), augmentations=2, batch_size=4)
    ums = [s.compute() for s in stats]
    assert ums[0].shape == (len(model.unit_groups()), 6, 256)
    from memloc.var_scales import point_values
    vals = point_values(model, (imgs, labs), order, Augment(16, hflip=False), augmentations=2, batch_size=4)
    ok, per_view = verify_values(model, (imgs, labs), order[:4], vals[:4], Augment(16, hflip=False), augmentations=2, batch_size=4)
    assert ok and per_view > 0
    assert not verify_values(model, (imgs, labs), order[:4], vals[:4] * 1.01, Augment(16, hflip=False), augmentations=2, batch_size=4)[0]
    reused, est = level_stats(model, (imgs, labs), order, sizes, augmentations=2, batch_size=4, values=vals, per_view_s=per_view)
    for a, b in zip(reused, stats):
        torch.testing.assert_close(a.compute(), b.compute(), rtol=1e-4, atol=1e-6); assert a.count == b.count  # other batches: float32 rounding
    assert est == pytest.approx([n * 2 * per_view for n in sizes])
    tab = consistency(ums, fr, top_p=10, counts=sizes, times=times)
    assert tab.spearman.iloc[-1] == pytest.approx(1.0) and tab.jaccard.iloc[-1] == 1.0
    assert tab.spearman.between(-1, 1).all() and tab.jaccard.between(0, 1).all() and tab.map_corr.between(-1, 1).all()
    assert tab.time_s.is_monotonic_increasing
    ids = torch.tensor([0, 10, 20, 30])
    probe = Probe(imgs[ids], labs[ids], ids, ["canary", "member", "member", "non_member"],
                  make_backend("pixel-ncc", threshold=0.9), prefixes=[model.prefix_lengths()[1]], batch_size=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mit = compare_mitigation(model, {"0.5": ums[0], "1": ums[-1]}, probe, p=1, random_seeds=(0,))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert mit.units.tolist() == ["none (before)", "0.5", "1", "random seed 0"]
    assert mit.n_units.tolist()[1:] == [round(0.01 * 6 * 256)] * 3 and mit.jaccard_ref.iloc[2] == 1.0
    assert (mit.extracted <= 4).all()



def test_resumed_levels_keep_their_compute_time(tmp_path, digits):
    "A rerun that loads the level files reports the seconds the measurement took, not the loading."
    import memloc.rar as rar
    torch.manual_seed(0)
    model = rar.build_model("mini").eval()
    order, sizes = levels([[0, 1, 2], [0, 1, 2, 3, 4, 5]])
    st1, t1 = level_stats(model, digits, order, sizes, augmentations=1, batch_size=2, folder=tmp_path, name="rar")
    st2, t2 = level_stats(model, digits, order, sizes, augmentations=1, batch_size=2, folder=tmp_path, name="rar")
    assert len(list(tmp_path.glob("rar.level0*.seconds.json"))) == 1
    assert t2 == t1                                                   # loaded whole: the measured seconds
    for a, b in zip(st1, st2): assert torch.equal(a.compute(), b.compute())
