"Stages 2 and 3: the maps, the depth index and its trend, the tests of the paper's claims, on known answers."
import numpy as np
import pytest
import torch

from memloc.rar_blocks import block_profile, late_share, late_share_test
from memloc.unitmem import measure, unitmem_from_values
from memloc.var_scales import (argmax_cells, bootstrap_units, cell_maps, class_shares, class_test, depth_index, point_values,
                               scale_depth_test, stats_from_values, top_depth, top_mask, trend, unit_stats,
                               unitmem_from_counts)

torch.set_num_threads(1)


def planted_block3_scale0(S=4, B=6, H=32):
    um = torch.full((S, B, H), 0.1, dtype=torch.float64)
    um[0, 3] = 0.8
    return um


def test_maps_find_the_planted_cell():
    um = planted_block3_scale0()
    m = cell_maps(um, top_p=10, q=0.9)           # 10% of 768 = 77 top units: the 32 planted + 45 ties at 0.1
    assert m["mean"].shape == (4, 6) and m["mean"][0, 3] == 0.8 and m["quantile"][0, 3] == 0.8
    assert m["mean"].argmax().item() == 3 and m["top_share"].argmax().item() == 3
    assert abs(m["top_share"][0, 3].item() - 32 / 77) < 1e-12 and abs(m["top_share"].sum().item() - 1) < 1e-12


def test_depth_index_and_trend_on_planted_grids():
    um = planted_block3_scale0()
    d = depth_index(um)
    assert abs(d[1].item() - 2.5) < 1e-12 and d[0] > d[1]  # uniform scales sit at the middle, scale 0 pulled to block 3
    assert abs(d[0].item() - (0.1 * 32 * 12 + 0.8 * 32 * 3) / (0.1 * 32 * 5 + 0.8 * 32)) < 1e-12
    assert trend(d.numpy())["rho"] < 0                   # coarsest scale deepest: the opposite of the paper's claim
    deeper = torch.full((5, 6, 16), 0.05, dtype=torch.float64)
    for s in range(5): deeper[s, s] = 0.9                 # scale s memorizes in block s
    t = trend(depth_index(deeper).numpy())
    assert t["rho"] == pytest.approx(1.0) and t["slope"] > 0
    assert top_depth(deeper, 100 * 16 / 96).tolist() == [0, 1, 2, 3, 4]
    assert trend(np.ones(4))["rho"] == 0.0               # a flat depth has no trend (not NaN)


def test_top_mask_counts_and_rejects_bad_percent():
    um = torch.rand(3, 4, 50, generator=torch.Generator().manual_seed(0))
    assert top_mask(um, 10).sum() == 60 and top_mask(um, 0.001).sum() == 1
    assert um[top_mask(um, 10)].min() >= um[~top_mask(um, 10)].max()
    for bad in (0, -1, 101):
        with pytest.raises(ValueError, match="percentage"): top_mask(um, bad)


def test_unitmem_from_counts_is_unitmem_of_the_resample():
    v = torch.rand(20, 7, generator=torch.Generator().manual_seed(1)) + 0.1
    assert torch.allclose(unitmem_from_counts(v, torch.ones(20)), unitmem_from_values(v))
    c = torch.zeros(20, dtype=torch.int64); c[[0, 3, 3, 5, 9, 9, 9]] = torch.tensor([1, 2, 2, 1, 3, 3, 3])
    rows = torch.cat([v[i].expand(int(c[i]), 7) for i in range(20) if c[i] > 0])
    assert torch.allclose(unitmem_from_counts(v, c), unitmem_from_values(rows))


def synthetic_var(N=60, S=4, B=6, H=16, plant=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(N, S, B, H, generator=g) + 0.5
    if plant:
        for s in range(S): v[torch.arange(H // 2), s, s + 1, torch.arange(H // 2)] += 6.0
    return v


def test_scale_depth_test_planted_vs_null():
    v = synthetic_var()
    t = scale_depth_test(unitmem_from_values(v), v, n_boot=60, seed=0)
    assert t["bootstrap"] == "points" and t["rho_ci"][0] > 0 and t["p_rho_le_0"] == 0 and t["verdict"].startswith("deeper")
    covered = 0
    for seed in range(5):
        v0 = synthetic_var(plant=False, seed=seed)
        t0 = scale_depth_test(unitmem_from_values(v0), v0, n_boot=60, seed=seed)
        covered += t0["rho_ci"][0] <= 0 <= t0["rho_ci"][1]
    assert covered >= 4, f"the null interval covered 0 in only {covered} of 5 data sets"
    # the reverse trend is called so
    vr = synthetic_var().flip(1)
    assert scale_depth_test(unitmem_from_values(vr), vr, n_boot=60)["verdict"].startswith("shallower")


def test_scale_depth_test_without_values_bootstraps_units():
    um = torch.full((4, 6, 40), 0.1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    um += 0.02 * torch.rand(um.shape, generator=g, dtype=torch.float64)
    for s in range(4): um[s, s + 1, :8] = 0.9
    t = scale_depth_test(um, None, n_boot=60)
    assert t["bootstrap"] == "units" and t["rho_ci"][0] > 0
    with pytest.raises(ValueError, match="do not match"): scale_depth_test(um, torch.ones(5, 4, 6, 39), n_boot=2)


def synthetic_rar(N=60, B=6, H=20, blocks=(4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(N, B, H, generator=g) + 0.5
    for b in blocks: v[torch.arange(H // 2), b, torch.arange(H // 2)] += 6.0
    return v


def test_block_profile_and_late_share():
    um = torch.full((6, 50), 0.1, dtype=torch.float64); um[4, :30] = 0.7
    p = block_profile(um, top_p=10)
    assert p.top_share.tolist() == [0, 0, 0, 0, 1, 0] and p["quantile"][4] == 0.7 and p["median"][4] == 0.7
    assert late_share(um, 10) == 1.0
    um5 = torch.full((5, 10), 0.1, dtype=torch.float64); um5[2, :5] = 0.9   # odd depth: the middle block is first half
    assert late_share(um5, 10) == 0.0


def test_late_share_test_planted_null_and_early():
    late = synthetic_rar()
    t = late_share_test(unitmem_from_values(late), late, top_p=10, n_boot=60)
    assert t["share"] == 1.0 and t["chance"] == 0.5 and t["p_perm"] < 1e-3 and t["verdict"].startswith("concentrated in the second")
    early = synthetic_rar(blocks=(0, 1))
    assert late_share_test(unitmem_from_values(early), early, n_boot=60)["verdict"].startswith("concentrated in the first")
    calls = []
    for seed in range(5):
        v0 = synthetic_rar(blocks=(), seed=seed)
        t0 = late_share_test(unitmem_from_values(v0), v0, n_boot=60, seed=seed)
        calls.append(t0["verdict"] == "not distinguishable from chance")
    assert sum(calls) >= 4, calls
    t_units = late_share_test(unitmem_from_values(late), None, n_boot=60)
    assert t_units["bootstrap"] == "units" and 0 <= t_units["share_ci"][0] <= t_units["share_ci"][1] <= 1


def test_argmax_cells_and_class_shares():
    um = torch.full((2, 3, 10), 0.1, dtype=torch.float64); um[1, 2, :4] = 0.9
    am = torch.zeros(2, 3, 10, dtype=torch.int64); am[1, 2, :4] = 7; am[0, 0, 0] = 7
    ac = argmax_cells(um, am, [7], top_p=10)
    assert ac["n_top"] == 6 and ac["n_top_hit"] == 4 and ac["top"][1, 2] == 4 and ac["all"].sum() == 5
    cs = class_shares(um, am, torch.tensor([0] * 7 + [1] + [0] * 2), range(10), top_p=10).set_index("label")
    assert cs.loc[1, "share_top"] == pytest.approx(4 / 6) and cs.loc[1, "share_points"] == pytest.approx(0.1)
    assert cs.loc[1, "ratio"] == pytest.approx(4 / 6 / 0.1)
    g = torch.Generator().manual_seed(0)
    even = class_shares(torch.rand(200, generator=g), torch.arange(200), torch.arange(200) % 2, range(200), top_p=50)
    assert class_test(even)["p"] > 0.01                                          # no class structure: not called skewed
    skew = class_shares(torch.arange(200.), torch.arange(200), (torch.arange(200) >= 100).long(), range(200), top_p=50)
    t = class_test(skew)                                                        # every top unit points at class 1
    assert t["p"] < 1e-10 and t["max_ratio_label"] == 1 and t["max_ratio"] == pytest.approx(2.0)


@pytest.fixture(scope="module")
def digits():
    from memloc.data import load_digits
    return load_digits(size=16)


def test_point_values_resume_and_match_measure(tmp_path, digits):
    from memloc import rar
    from memloc.data import Augment
    torch.manual_seed(0)
    model = rar.build_model("mini").eval()
    aug, pts = Augment(model.image_size, hflip=False), list(range(0, 40, 4))
    whole = point_values(model, digits, pts, aug, augmentations=2, batch_size=3, seed=0)
    ref = measure(model, digits, augment=aug, augmentations=2, batch_size=3, points=pts, seed=0, progress=False)
    st = stats_from_values(whole, pts, batch_size=3)
    assert all(torch.equal(getattr(st, k), getattr(ref, k)) for k in ("sum", "max", "argmax"))

    from memloc.unitmem import augment_fingerprint
    class Dies:                                           # aug's views, until it dies
        fingerprint = augment_fingerprint(aug)
        def __init__(self): self.n = 0
        def view(self, img, ids, v, seed=0):
            self.n += 1
            if self.n > 5: raise RuntimeError("killed")
            return aug.view(img, ids, v, seed=seed)
    path = tmp_path / "v.pt"
    with pytest.raises(RuntimeError, match="killed"):
        point_values(model, digits, pts, Dies(), augmentations=2, batch_size=3, seed=0, path=path, save_every=1)
    assert torch.load(path, weights_only=True)["done"] == 6
    resumed = point_values(model, digits, pts, aug, augmentations=2, batch_size=3, seed=0, path=path, save_every=1)
    assert torch.equal(resumed, whole)
    with pytest.raises(ValueError, match="another run"):
        point_values(model, digits, pts, aug, augmentations=1, batch_size=3, seed=0, path=path)
    other = rar.build_model("mini").eval()                # other (random) weights: never the saved values
    with pytest.raises(ValueError, match="weights: saved"):
        point_values(other, digits, pts, aug, augmentations=2, batch_size=3, seed=0, path=path)
    imgs, labels = digits
    changed = (imgs.flip(-1), labels)
    with pytest.raises(ValueError, match="images or labels of points"):
        point_values(model, changed, pts, aug, augmentations=2, batch_size=3, seed=0, path=path)
    fresh = point_values(other, digits, pts, aug, augmentations=2, batch_size=3, seed=0, path=path, recompute=True)
    assert torch.equal(fresh, point_values(other, digits, pts, aug, augmentations=2, batch_size=3, seed=0))


def test_full_pass_on_random_weight_models(tmp_path, digits):
    "The whole stage on random-weight miniature models and a fake split: shapes, sums, verdicts, files."
    from memloc import rar, var
    from memloc.data import Augment
    torch.manual_seed(0)
    pts = list(range(0, 60, 3))                 # 20 points; 'canaries' 0 and 30
    vm = var.build_model(var.preset_config("mini")).eval()
    st, vals = unit_stats(vm, digits, pts, Augment(16, hflip=False), 2, 10, 0, folder=tmp_path, name="var")
    um = st.compute()[:, :, :]
    assert um.shape == (6, 6, 256) and vals.shape == (20, 6, 6, 256) and len(list(tmp_path.glob("var-*.values.pt"))) == 1
    m = cell_maps(um, 10)
    assert abs(m["top_share"].sum().item() - 1) < 1e-9 and torch.isfinite(m["quantile"]).all()
    t = scale_depth_test(um, vals, n_boot=10)
    assert -1 <= t["rho"] <= 1 and len(t["depth"]) == 6 and all(0 <= d <= 5 for d in t["depth"])
    assert t["verdict"].split(" ")[0] in ("deeper", "shallower", "no")
    ac = argmax_cells(um, st.argmax, [0, 30], 10)
    assert ac["top"].shape == (6, 6) and 0 <= ac["n_top_hit"] <= ac["n_top"] == round(0.1 * um.numel())
    assert set(st.argmax.unique().tolist()) <= set(pts)
    cs = class_shares(um, st.argmax, digits[1], pts, 10)
    assert abs(cs.share_top.sum() - 1) < 1e-9 and abs(cs.share_points.sum() - 1) < 1e-9

    rm = rar.build_model("mini").eval()
    st2, _ = unit_stats(rm, digits, pts, Augment(16, hflip=False), 1, 10, 0, folder=tmp_path, name="rar", keep_values=False)
    assert len(list(tmp_path.glob("rar-*.stats.pt"))) == 1 and st2.shape == (1, 6, 256)
    t2 = late_share_test(st2.compute()[0], None, n_boot=10)
    assert t2["chance"] == 0.5 and t2["top_units"] == round(0.1 * 6 * 256) and 0 <= t2["p_perm"] <= 1
    st3, _ = unit_stats(rm, digits, pts, Augment(16, hflip=False), 1, 10, 0, folder=tmp_path, name="rar", keep_values=False)
    assert torch.equal(st3.max, st2.max)      # the rerun resumed from the saved statistics


def test_model_fingerprint_names_the_weights():
    from memloc import rar
    from memloc.var_scales import model_fingerprint
    torch.manual_seed(0)
    a = rar.build_model("mini")
    fp = model_fingerprint(a)
    assert fp == model_fingerprint(a) and len(fp) == 12
    with torch.no_grad(): a.mlp_blocks()[0][0].weight[0, 0] += 1.0
    assert model_fingerprint(a) != fp


def test_bfloat16_autocast_keeps_tokens_exact(digits):
    "Under bf16 autocast the tokenizer stays in float32 (VAR's nearest-code search fails in mixed precision otherwise)."
    from memloc import var
    torch.manual_seed(0)
    m = var.build_model(var.preset_config("mini")).eval()
    pts = list(range(6))
    a = point_values(m, digits, pts, None, 1, 3)
    b = point_values(m, digits, pts, None, 1, 3, dtype="bfloat16")
    assert not torch.equal(a, b) and (a - b).abs().max() < 0.05 * a.abs().max()
    st, _ = unit_stats(m, digits, pts, None, 1, 3, keep_values=False, dtype="bfloat16")
    assert st.count == 6 and st.sum.device.type == "cpu"
    with pytest.raises(ValueError, match="dtype"): point_values(m, digits, pts, None, 1, 3, dtype="int8")


def test_matching_values_for_reuse_by_another_stage(tmp_path, digits):
    from memloc import rar
    from memloc.data import Augment
    from memloc.var_scales import matching_values
    torch.manual_seed(0)
    model = rar.build_model("mini").eval()
    aug, pts = Augment(model.image_size, hflip=False), list(range(0, 24, 4))
    vals = point_values(model, digits, pts, aug, augmentations=2, batch_size=3, path=tmp_path / "v.pt")
    got, why = matching_values(tmp_path / "v.pt", model, digits, pts, aug, augmentations=2)
    assert why == "ok" and torch.equal(got, vals)
    assert "augment" in matching_values(tmp_path / "v.pt", model, digits, pts, Augment(model.image_size, hflip=True), augmentations=2)[1]
    assert "weights" in matching_values(tmp_path / "v.pt", rar.build_model("mini").eval(), digits, pts, aug, augmentations=2)[1]
    assert "images or labels" in matching_values(tmp_path / "v.pt", model, (digits[0].flip(-1), digits[1]), pts, aug, augmentations=2)[1]
