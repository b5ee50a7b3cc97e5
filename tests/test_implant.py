"Implanted memorization: only S moves, a run reproduces bit for bit, files round-trip, committed implants load and verify."
import json

import pytest
import torch

from memloc.data import load_digits
from memloc.implant import (apply_implant, choose_implants, frozen_outside, implant_pool, implant_units, implant_valid,
                            load_implants, read_implants, save_implant, train_units)
from memloc.intervention import unit_grid
from memloc import testbed as tb
from memloc.testbed import load_testbed


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _base(family="rar", testbed="canary"):
    return load_testbed(family, tb.testbed_manifest(testbed))


def _implant(model, split, seed=0, steps=6, keep=True):
    images, labels = load_digits(16)
    ids = choose_implants(split, 1, seed)
    S = implant_units(unit_grid(model), 0.01, seed)
    others = split.members[:64]
    k = (model.tokenize(images[others]), labels[others]) if keep else None
    rec = train_units(model, S, model.tokenize(images[ids]), labels[ids], steps, 3e-2, k, 1.0, 1.0, 8, seed)
    return S, rec


@pytest.mark.parametrize("family", ["var", "rar"])
def test_only_S_moves_and_a_run_reproduces(family):
    a, split, _ = _base(family)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    S, rec = _implant(a, split)
    assert frozen_outside(a, before, S) and rec["keep_used"]
    assert any(not torch.equal(v, before[k]) for k, v in a.state_dict().items())
    b, _, _ = _base(family)
    _implant(b, split)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_implant_file_round_trips_and_refuses_another_base(tmp_path):
    m, split, entry = _base()
    S, _ = _implant(m, split, keep=False)
    f = save_implant(m, S, tmp_path / "i.safetensors", entry["sha256"])
    fresh, _, _ = _base()
    apply_implant(fresh, f, S, entry["sha256"])
    assert all(torch.equal(x, y) for x, y in zip(fresh.state_dict().values(), m.state_dict().values()))
    with pytest.raises(tb.TestbedError, match="was implanted into base"):
        apply_implant(fresh, f, S, "0" * 64)
    with pytest.raises(tb.TestbedError, match="another unit set"):
        apply_implant(fresh, f, implant_units(unit_grid(fresh), 0.01, seed=5), entry["sha256"])
    with pytest.raises(tb.TestbedError, match="not found"):
        apply_implant(fresh, tmp_path / "none.safetensors")


def test_units_and_implants_are_seeded_and_never_seen():
    m, split, _ = _base("var", "long")
    grid = unit_grid(m)
    assert torch.equal(implant_units(grid, 0.0025, 3), implant_units(grid, 0.0025, 3))
    assert len(implant_units(grid, 0.01, 0)) == round(0.01 * grid[0] * grid[1])
    pool, src = implant_pool(split)
    assert src == "unused"
    ids = choose_implants(split, 3, 0)
    assert not set(ids.tolist()) & (set(split.members.tolist()) | set(split.non_members.tolist()))
    with pytest.raises(ValueError, match="rate"):
        implant_units(grid, 0.0, 0)
    _, canary_split, _ = _base("var", "canary")
    assert implant_pool(canary_split)[1] == "non_member"


def test_validity_rules():
    rec = {"implants_extracted_before": 1.0, "implants_extracted_after_zero_S": 0.0, "implants_extracted_after_zero_random": 1.0,
           "fid_base": 1.0, "fid_implanted": 1.09, "frozen_outside_S": True}
    assert implant_valid(rec)["all"]
    assert not implant_valid(rec | {"fid_implanted": 1.2})["fid_within_10pct"]
    assert not implant_valid(rec | {"implants_extracted_before": 0.5})["extracted"]
    assert not implant_valid(rec | {"implants_extracted_after_zero_S": 0.5})["zero_S_removes"]


@pytest.mark.parametrize("testbed", ["long", "canary"])
def test_committed_implants_load_and_match_their_records(testbed):
    recs = read_implants(testbed)
    from memloc.testbed import read_manifest, testbed_manifest
    assert set(recs) == set(read_manifest(testbed_manifest(testbed)))   # every family the testbed trained has its implants
    for fam, rs in recs.items():
        assert len({r["seed"] for r in rs}) >= 5 and {r["rate"] for r in rs} == {0.01, 0.0025}
        imps = load_implants(fam, testbed)
        assert len(imps) == len(rs)
        for imp in imps:
            assert imp.record["frozen_outside_S"] and imp.record["valid"] == implant_valid(imp.record)
            assert len(imp.units) == imp.record["n_units"]
