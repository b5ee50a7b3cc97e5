"Stage 4: the reversible intervention, the unit selection, the random control, and a tiny end-to-end run."
import pytest
import torch

from memloc.stats import top_count
from memloc.intervention import Probe, evaluate, random_like, run_setting, scale_units, select_units, setting_rows, unit_grid

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def var_model():
    import memloc.var as var
    torch.manual_seed(0)
    return var.build_model(var.preset_config("mini")).eval()


@pytest.fixture(scope="module")
def rar_model():
    import memloc.rar as rar
    torch.manual_seed(0)
    return rar.build_model("mini")


def snapshot(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def same(m, snap):
    return all(torch.equal(v, snap[k]) for k, v in m.state_dict().items())


def test_restore_is_bit_identical_on_exit_and_on_exception(var_model):
    snap = snapshot(var_model)
    units = torch.tensor([[0, 0], [2, 17], [2, 18], [5, 255]])
    fc1 = var_model.mlp_blocks()[2][0]
    with scale_units(var_model, units, factor=0.3):   # 0.3 is inexact in binary: dividing back would not restore
        assert not same(var_model, snap)
        assert torch.equal(fc1.weight[17], snap["generator.blocks.2.ffn.fc1.weight"][17] * 0.3)
        assert torch.equal(fc1.weight[16], snap["generator.blocks.2.ffn.fc1.weight"][16])
        assert torch.equal(fc1.bias, snap["generator.blocks.2.ffn.fc1.bias"])
    assert same(var_model, snap)
    with pytest.raises(RuntimeError, match="boom"):
        with scale_units(var_model, units, factor=0.5):
            raise RuntimeError("boom")
    assert same(var_model, snap)


def test_fc2_columns_and_factor_zero(var_model):
    snap = snapshot(var_model)
    _, _, fc2 = var_model.mlp_blocks()[3]
    key = "generator.blocks.3.ffn.fc2.weight"
    with scale_units(var_model, [[3, 5], [3, 7]], factor=0.0, target="fc2"):
        assert (fc2.weight[:, [5, 7]] == 0).all()
        assert torch.equal(fc2.weight[:, 6], snap[key][:, 6])
        assert torch.equal(var_model.mlp_blocks()[3][0].weight, snap["generator.blocks.3.ffn.fc1.weight"])  # fc1 untouched
        assert torch.equal(fc2.bias, snap["generator.blocks.3.ffn.fc2.bias"])
    assert same(var_model, snap)


def test_pruning_fc1_rows_silences_the_unit(var_model):
    "With factor 0 on fc1, the unit's pre-activation is its bias alone, whatever the input."
    fc1, act, _ = var_model.mlp_blocks()[0]
    x = torch.randn(2, 5, fc1.in_features)
    with scale_units(var_model, [[0, 11]], factor=0.0):
        y = fc1(x)
    assert torch.equal(y[..., 11], fc1.bias[11].expand(2, 5))


def test_bad_selections_are_refused(var_model):
    "Beyond 13_intervention's two (outside the grid, duplicates): a bad target or factor, and applying twice."
    with pytest.raises(ValueError, match="target"): scale_units(var_model, [[0, 1]], target="bias")
    with pytest.raises(ValueError, match="finite"): scale_units(var_model, [[0, 1]], factor=float("nan"))
    s = scale_units(var_model, [[0, 1]]).apply()
    with pytest.raises(RuntimeError, match="already applied"): s.apply()
    s.restore()


def test_selection_edges():
    "13_intervention asserts the 25% selections of this grid (global, per block, lowest); here 50% per block, 0%, 100%, 101%."
    sc = torch.tensor([[0.1, 0.5, 0.2, 0.0], [0.9, 0.8, 0.7, 0.3], [0.4, 0.6, 0.0, 0.0]], dtype=torch.float64)
    assert select_units(sc, 50, per_block=True).tolist() == [[0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1]]
    assert len(select_units(sc, 0)) == 0 and len(select_units(sc, 100)) == 12
    with pytest.raises(ValueError): select_units(sc, 101)


def test_selection_matches_a_brute_force_ranking():
    g = torch.Generator().manual_seed(3)
    sc = torch.rand(6, 256, generator=g, dtype=torch.float64)
    sel = select_units(sc, 10)
    assert len(sel) == top_count(10, 6 * 256) == 154
    thr = sc.flatten().sort(descending=True).values[153]
    assert set(map(tuple, sel.tolist())) == set(map(tuple, (sc >= thr).nonzero().tolist()))


def test_random_control_draws_distinct_units_and_matches_blocks():
    "13_intervention asserts seeding, uniformity and `exclude` on this selection; here: distinct units in every draw, many "
    "different draws, and `match_blocks` on a selection that spans blocks."
    grid = (3, 4)
    top = torch.tensor([[1, 0], [1, 1], [1, 2]])
    draws = [random_like(top, grid, s) for s in range(300)]
    assert len({tuple(map(tuple, d.tolist())) for d in draws}) > 50          # seeds differ
    assert all(len(d) == 3 and len(set(map(tuple, d.tolist()))) == 3 for d in draws)
    m = random_like(torch.tensor([[0, 1], [2, 0], [2, 3]]), grid, 1, match_blocks=True)
    assert torch.bincount(m[:, 0], minlength=3).tolist() == [1, 0, 2]


def test_tiny_end_to_end_on_a_random_weight_rar(rar_model):
    from memloc.data import load_digits
    from memloc.extraction import make_backend
    imgs, labs = load_digits(16)
    ids = torch.tensor([0, 1, 10, 11, 20, 21])
    probe = Probe(imgs[ids], labs[ids], ids, ["canary", "canary", "member", "member", "non_member", "non_member"],
                  make_backend("pixel-ncc", threshold=0.95), prefixes=[4], batch_size=8)
    snap = snapshot(rar_model)
    scores = torch.rand(unit_grid(rar_model), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = evaluate(rar_model, probe)
    res = run_setting(rar_model, scores, probe, p=5, seeds=(0, 1))
    assert same(rar_model, snap)
    assert res["n_units"] == len(res["units"]) == len(res["lowest_units"]) == top_count(5, 6 * 256)
    assert [r["seed"] for r in res["random"]] == [0, 1] and res["random"][0]["units"] != res["random"][1]["units"]
    assert before["candidates"] == {"canary": 2, "member": 2, "non_member": 2}
    assert evaluate(rar_model, probe) == before                                # deterministic, weights restored
    rows = setting_rows("rar", before, res)
    assert [r["units"] for r in rows] == ["none (before)", "top UnitMem", "lowest UnitMem", "random seed 0",
                                          "random seed 1", "random mean", "random std"]
