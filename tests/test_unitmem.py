"UnitMem (memloc.unitmem): the formula, streaming statistics, capture hooks, resumable and distributed measure."
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from memloc.unitmem import (NonFiniteActivation, StaleStats, UnitCapture, UnitMemStats, augment_fingerprint, load_stats,
                            measure, unitmem, unitmem_from_values)
from toy_adapter import ToyAdapter, shift_aug, toy_data

torch.set_num_threads(1)
HERE = Path(__file__).parent


def test_unitmem_averages_views_and_has_no_nan():
    "10_adaptation computes one view by hand; here the mean over views, a unit that never fires, and the signed variant."
    # [N=3, A=2, U=2]; unit 0: |acts| view means 1, 2, 9 -> max 9, rest (1+2)/2 = 1.5 -> 7.5/10.5
    acts = torch.tensor([[[1., 0.], [-1., 0.]],
                         [[2., 0.], [2., 0.]],
                         [[8., 0.], [-10., 0.]]])
    um = unitmem(acts)
    assert um.dtype == torch.float64
    assert um[0].item() == pytest.approx(7.5 / 10.5, abs=1e-15)
    assert um[1].item() == 0.0                          # both terms 0 -> 0, not NaN
    signed = unitmem(acts, abs=False)                   # view means 0, 2, -1: max 2, rest -0.5
    assert signed[0].item() == pytest.approx(2.5 / 1.5)


def test_others_is_mean_or_median():
    "10_adaptation asserts both variants by hand; a third is refused."
    with pytest.raises(ValueError, match="others"): unitmem(torch.tensor([1., 1., 4., 9.])[:, None, None], others="mode")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_equals_batch_for_random_splits_shards_and_merge_order(seed):
    g = torch.Generator().manual_seed(seed)
    N, shape = 37, (2, 3, 4)
    vals = torch.rand(N, *shape, generator=g).round(decimals=1)      # many ties in the max
    ref = unitmem_from_values(vals)
    ref_arg = torch.where(vals == vals.max(0).values, torch.arange(N).view(N, 1, 1, 1), N).min(0).values
    perm = torch.randperm(N, generator=g)                             # points arrive in any order
    cuts = sorted(torch.randperm(N - 1, generator=g)[:5].add(1).tolist())
    shards = []
    for part in torch.tensor_split(perm, cuts):
        shards.append(UnitMemStats(shape).update(vals[part], part))
    one = UnitMemStats(shape)
    for part in torch.tensor_split(perm, cuts): one.update(vals[part], part)
    for order in (range(len(shards)), reversed(range(len(shards))), torch.randperm(len(shards), generator=g).tolist()):
        m = UnitMemStats(shape)
        for i in order: m.merge(shards[i])
        assert m.count == N
        assert torch.equal(m.argmax, ref_arg) and torch.equal(m.max, vals.double().max(0).values)
        assert torch.allclose(m.compute(), ref, rtol=0, atol=1e-13)
    assert torch.equal(one.argmax, ref_arg) and torch.allclose(one.compute(), ref, rtol=0, atol=1e-13)


def test_argmax_tie_is_lowest_point_index_in_any_order():
    vals = torch.tensor([[1.], [5.], [5.], [2.], [5.]])
    for ids in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 4, 0, 3, 1]):
        s = UnitMemStats((1,))
        for i in ids: s.update(vals[[i]], torch.tensor([i]))
        assert s.argmax.item() == 1


def test_state_dict_roundtrip_loads_weights_only(tmp_path):
    s = UnitMemStats((2, 3)).update(torch.rand(5, 2, 3))
    torch.save(s.state_dict(), tmp_path / "s.pt")
    t = UnitMemStats((2, 3)).load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert t.count == 5 and all(torch.equal(getattr(s, k), getattr(t, k)) for k in ("sum", "max", "argmax"))
    with pytest.raises(ValueError, match="saved shape"): UnitMemStats((3, 2)).load_state_dict(s.state_dict())


def test_memory_is_units_not_points():
    s = UnitMemStats((10, 30, 64))
    before = s.nbytes()
    for _ in range(5): s.update(torch.rand(16, 10, 30, 64))
    assert s.nbytes() == before == 10 * 30 * 64 * 24


def test_bad_input_errors():
    with pytest.raises(ValueError, match="at least 2 points"): unitmem(torch.ones(1, 3, 4))
    with pytest.raises(ValueError, match="at least 2 points"): UnitMemStats((4,)).update(torch.ones(1, 4)).compute()
    with pytest.raises(ValueError, match=r"\[N points, A augmentations"): unitmem(torch.ones(3, 4))
    with pytest.raises(ValueError, match="unit shape"): UnitMemStats((4,)).update(torch.ones(2, 5))
    with pytest.raises(ValueError, match="shapes differ"): UnitMemStats((4,)).merge(UnitMemStats((2, 2)))
    with pytest.raises(ValueError, match="non-finite"): UnitMemStats((2,)).update(torch.tensor([[1., float("inf")]]))
    with pytest.raises(ValueError, match="non-finite"): unitmem(torch.tensor([[[1.]], [[float("nan")]]]))
    with pytest.raises(ValueError, match="median"): UnitMemStats((2,)).update(torch.ones(3, 2)).compute("median")
    with pytest.raises(ValueError, match="at least 2 points"): measure(ToyAdapter(), toy_data(1), augmentations=1, progress=False)


def test_model_without_fc1_layers():
    class NoMLP(nn.Module):
        def mlp_blocks(self): return []
        def unit_groups(self): return [(0, 1)]
    with pytest.raises(ValueError, match="no fc1 layers"): UnitCapture(NoMLP())
    with pytest.raises(TypeError, match="not a family adapter"): UnitCapture(nn.Linear(2, 2))


def test_capture_equals_reduction_of_full_stored_activations():
    model = ToyAdapter(groups=[(0, 1), (1, 5), (5, 14)]).double().eval()
    x, y = toy_data(6)
    full = {}
    hooks = [a.register_forward_hook(lambda m, i, o, b=b: full.__setitem__(b, o.detach().clone()))
             for b, (_, a, _) in enumerate(model.mlp_blocks())]
    cap = UnitCapture(model)
    with torch.no_grad(), cap: model.logits(model.tokenize(x.double()), y)
    for h in hooks: h.remove()
    v = cap.values()
    assert v.shape == (6, 3, 3, 12) and v.dtype == torch.float64     # [B, G, n_blocks, hidden]
    for g, (s, e) in enumerate(model.unit_groups()):
        for b in range(3):
            assert torch.allclose(v[:, g, b], full[b][:, s:e].abs().mean(1), rtol=1e-12, atol=1e-14)
    assert (full[0] < 0).any()                                        # GELU gave negatives: abs matters
    with pytest.raises(RuntimeError, match="no activations"): cap.values()   # consumed once


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_activation_names_block_and_unit(bad):
    model = ToyAdapter()
    with torch.no_grad(): model.fc1[2].weight[7] = bad
    with pytest.raises(NonFiniteActivation, match="block 2, unit 7"):
        measure(model, toy_data(4), augmentations=1, batch_size=2, progress=False)


def test_measure_equals_unitmem_on_stored_activations():
    model, (x, y) = ToyAdapter().eval(), toy_data(10)
    stats = measure(model, (x, y), augment=shift_aug, augmentations=3, batch_size=3, progress=False)
    cap, per_view = UnitCapture(model), []
    for view in range(3):
        with torch.no_grad(), cap: model.logits(model.tokenize(shift_aug(x, torch.arange(10), view)), y)
        per_view.append(cap.values())
    stored = torch.stack(per_view, 1)                                 # [N, A, G, n_blocks, hidden]
    assert stats.count == 10
    assert torch.allclose(stats.compute(), unitmem(stored), rtol=0, atol=1e-6)
    means = stored.double().mean(1)
    assert torch.equal(stats.argmax, torch.where(means == means.max(0).values, torch.arange(10).view(10, 1, 1, 1), 99).min(0).values)


def test_measure_on_a_subset_and_a_dataset_object():
    model, (x, y) = ToyAdapter().eval(), toy_data(12)
    pts = [11, 3, 5, 0]
    a = measure(model, (x, y), augmentations=1, batch_size=2, points=pts, progress=False)
    ds = torch.utils.data.TensorDataset(x, y)
    b = measure(model, ds, augmentations=1, batch_size=2, points=pts, progress=False)
    assert a.count == 4 and set(a.argmax.unique().tolist()) <= set(pts)
    assert torch.equal(a.sum, b.sum) and torch.equal(a.argmax, b.argmax)

    class WithIds(torch.utils.data.Dataset):                  # items (point id, image, label), like PointDataset
        def __len__(self): return 12
        def __getitem__(self, k): return 100 + k, x[k], y[k]
    c = measure(model, WithIds(), augmentations=1, batch_size=2, points=pts, progress=False)
    assert torch.equal(c.argmax, a.argmax + 100) and torch.equal(c.sum, a.sum)


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    model, data = ToyAdapter().eval(), toy_data(20)
    run = dict(augment=shift_aug, augmentations=3, batch_size=4, save_every=2, progress=False)
    whole = measure(model, data, **run)

    class Kill(Exception): pass
    calls = {"n": 0}
    def dies(img, ids, view):
        calls["n"] += 1
        if calls["n"] == 3 * 3 + 2: raise Kill                 # mid fourth batch, after a save at batch 2
        return shift_aug(img, ids, view)
    dies.fingerprint = augment_fingerprint(shift_aug)         # the same views as shift_aug, until it dies

    with pytest.raises(Kill): measure(model, data, **{**run, "augment": dies}, stats_path=tmp_path / "s.pt")
    saved, done, meta = load_stats(tmp_path / "s.pt")
    assert done == list(range(8)) and saved.count == 8       # batch 3 finished but unsaved: redone, not lost
    resumed = measure(model, data, **run, stats_path=tmp_path / "s.pt")
    assert resumed.count == 20
    for k in ("sum", "max", "argmax"): assert torch.equal(getattr(resumed, k), getattr(whole, k)), k
    again = measure(model, data, **run, stats_path=tmp_path / "s.pt")  # finished run: nothing added
    assert again.count == 20 and torch.equal(again.sum, whole.sum)
    with pytest.raises(StaleStats, match="augmentations: saved 3, this run 2"):
        measure(model, data, **{**run, "augmentations": 2}, stats_path=tmp_path / "s.pt")


@pytest.mark.timeout(120)
def test_torchrun_two_processes_gloo_equals_one_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists(): pytest.skip("torchrun not installed")
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))   # the toy adapter, and the memloc this process imports
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(HERE / "dist_unitmem.py"), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, r.stderr[-3000:]
    reduced = UnitMemStats.from_state_dict(torch.load(tmp_path / "reduced.pt", weights_only=True))
    x, y = toy_data()
    single = measure(ToyAdapter().double(), (x.double(), y), augment=shift_aug, augmentations=3, batch_size=4, progress=False)
    shard0, done0, _ = load_stats(tmp_path / "run.rank0-of-2.pt")
    assert done0 == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19] and shard0.count == 12   # every other batch of 4, from the first
    assert reduced.count == 20 and torch.equal(reduced.argmax, single.argmax) and torch.equal(reduced.max, single.max)
    assert torch.allclose(reduced.compute(), single.compute(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("family,preset", [("var", "tiny"), ("rar", "mini")])
def test_family_small_preset(family, preset, tmp_path):
    "On the real VAR / RAR adapters: hook reduction = full reduction per group, measure = unitmem on stored values."
    import importlib
    from memloc.data import Augment
    mod = importlib.import_module(f"memloc.{family}")
    torch.manual_seed(0)
    model = mod.build_model(mod.preset_config(preset) if family == "var" else preset).eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, model.image_size, model.image_size, generator=g), torch.arange(6) % model.num_classes
    full = {}
    hooks = [a.register_forward_hook(lambda m, i, o, b=b: full.__setitem__(b, o.detach().double()))
             for b, (_, a, _) in enumerate(model.mlp_blocks())]
    cap = UnitCapture(model)
    with torch.no_grad(), cap: model.logits(model.tokenize(x), y)
    for h in hooks: h.remove()
    v = cap.values().double()
    groups = model.unit_groups()
    assert v.shape == (6, len(groups), len(model.mlp_blocks()), model.mlp_blocks()[0][0].out_features)
    if family == "var": assert len(groups) > 1 and groups[0] == (0, 1)     # one group per scale
    else: assert groups == [(2, model.seq_len + 2)]                         # RAR: the image tokens
    for gi, (s, e) in enumerate(groups):
        ref = torch.stack([full[b][:, s:e].abs().mean(1) for b in range(len(full))], 1)
        assert torch.allclose(v[:, gi], ref, rtol=1e-5, atol=1e-6)
    aug = Augment(model.image_size, hflip=True)
    stats = measure(model, (x, y), augment=aug, augmentations=2, batch_size=3, seed=1, progress=False, stats_path=tmp_path / "s.pt")
    per_view = []
    for view in range(2):
        with torch.no_grad(), cap: model.logits(model.tokenize(aug.view(x, torch.arange(6), view, seed=1)), y)
        per_view.append(cap.values())
    assert stats.count == 6 and load_stats(tmp_path / "s.pt")[2]["seed"] == 1
    assert torch.allclose(stats.compute(), unitmem(torch.stack(per_view, 1)), rtol=0, atol=1e-5)


def test_canary_share_of_top_cells():
    from memloc.unitmem import canary_share
    um = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    arg = torch.tensor([[5, 1], [2, 5], [7, 0]])
    assert canary_share(um, arg, {5, 7}, top=0.5) == (2 / 3, 3)     # top 3 cells: 0.9 -> 5, 0.8 -> 2, 0.7 -> 7
    assert canary_share(um, arg, lambda i: i == 2, top=0.01) == (0.0, 1)


# --- no stale reuse, clear errors ------------------------------------------------------------------------

def _saved_run(tmp_path, **kw):
    from memloc.data import Augment
    model, data = ToyAdapter().eval(), toy_data(12)
    run = dict(augment=Augment(8, hflip=False), augmentations=2, batch_size=4, progress=False, **kw)
    st = measure(model, data, **run, stats_path=tmp_path / "s.pt")
    return model, data, run, st


def test_resume_refuses_other_weights_augment_or_images(tmp_path):
    from memloc.data import Augment
    model, data, run, st = _saved_run(tmp_path)
    other_model = ToyAdapter(seed=1).eval()                        # the same architecture, other weights
    with pytest.raises(StaleStats, match="weights: saved '[0-9a-f]{64}', this run '[0-9a-f]{64}'"):
        measure(other_model, data, **run, stats_path=tmp_path / "s.pt")
    with pytest.raises(StaleStats, match="augment: saved .*1.125.*this run .*1.25"):
        measure(model, data, **{**run, "augment": Augment(8, scale=1.25, hflip=False)}, stats_path=tmp_path / "s.pt")
    imgs, labels = data
    changed = (imgs.clone(), labels); changed[0][3] = 1 - changed[0][3]
    with pytest.raises(StaleStats, match=r"images or labels of points \[3\]"):
        measure(model, changed, **run, stats_path=tmp_path / "s.pt")
    again = measure(other_model, data, **run, stats_path=tmp_path / "s.pt", recompute=True)   # asked to: measured anew
    fresh = measure(other_model, data, **run)
    assert torch.equal(again.sum, fresh.sum) and not torch.equal(again.sum, st.sum)


def test_resume_checks_a_dataset_by_rereading_points(tmp_path):
    from memloc.data import PointDataset
    model, (imgs, labels), run, st = _saved_run(tmp_path)
    assert torch.equal(measure(model, PointDataset(imgs, labels), **run, stats_path=tmp_path / "s.pt").sum, st.sum)
    other = imgs.clone(); other[7] = other[7].flip(-1)
    with pytest.raises(StaleStats, match=r"points \[7\]"):
        measure(model, PointDataset(other, labels), **run, stats_path=tmp_path / "s.pt", verify_points=12)


def test_unreadable_stats_files_are_named(tmp_path):
    p = tmp_path / "s.pt"
    _saved_run(tmp_path)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(StaleStats, match=r"s.pt is truncated"): load_stats(p)
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(StaleStats, match=r"not a UnitMem statistics file written by measure"): load_stats(p)
    p.write_bytes(b"")
    with pytest.raises(StaleStats, match="empty"): load_stats(p)

    class Code:
        def __reduce__(self): return (print, ("ran",))
    torch.save({"stats": {}, "done": torch.zeros(1), "meta": Code()}, p)
    with pytest.raises(StaleStats, match="not weights-only: it holds pickled Python objects") as e: load_stats(p)
    assert "truncated" not in str(e.value)


def test_stats_refuse_impossible_values():
    with pytest.raises(ValueError, match="negative value"):
        UnitMemStats((2,)).update(torch.tensor([[1.0, -0.5], [0.2, 0.3]]))
    assert UnitMemStats((2,), signed=True).update(torch.tensor([[1.0, -0.5], [0.2, 0.3]])).count == 2
    s = UnitMemStats((2,)).update(torch.rand(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"already counted: \[2\]"):
        s.update(torch.rand(2, 2), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="twice in one batch"):
        UnitMemStats((2,)).update(torch.rand(2, 2), torch.tensor([5, 5]))
    other = UnitMemStats((2,)).update(torch.rand(2, 2), torch.tensor([1, 7]))
    with pytest.raises(ValueError, match=r"merge: points already counted: \[1\]"):
        UnitMemStats((2,)).merge(s).merge(other)
    sd = s.state_dict()
    with pytest.raises(ValueError, match=r"sum has shape \(3,\), but the statistics say \(2,\)"):
        UnitMemStats((2,)).load_state_dict({**sd, "sum": torch.zeros(3)})
    with pytest.raises(ValueError, match="not UnitMem statistics"):
        UnitMemStats((2,)).load_state_dict({"shape": [2]})
    with pytest.raises(ValueError, match="point ids"):
        UnitMemStats((2,)).load_state_dict({**sd, "count": 5})


@pytest.mark.parametrize("bad, text", [("nan", "non-finite"), ("255", "divide by 255")])
def test_measure_refuses_bad_images(bad, text):
    model, (imgs, labels) = ToyAdapter().eval(), toy_data(6)
    imgs = imgs.clone()
    if bad == "nan": imgs[2, 0, 0, 0] = float("nan")
    else: imgs = imgs * 255
    with pytest.raises(ValueError, match=text):
        measure(model, (imgs, labels), augmentations=1, batch_size=3, progress=False)


def test_matching_stats_for_reuse_by_another_stage(tmp_path):
    from memloc.data import Augment
    from memloc.unitmem import matching_stats
    model, data, run, st = _saved_run(tmp_path)
    kw = dict(augment=run["augment"], augmentations=2, batch_size=4)
    got, why = matching_stats(tmp_path / "s.pt", model, data, range(12), **kw)
    assert why == "ok" and torch.equal(got.sum, st.sum)
    for args, text in [((ToyAdapter(seed=1).eval(), data, range(12)), "weights: saved"),
                       ((model, data, range(10)), "points"),
                       ((model, (data[0].flip(-1), data[1]), range(12)), "images or labels")]:
        got, why = matching_stats(tmp_path / "s.pt", *args, **kw)
        assert got is None and text in why, why
    got, why = matching_stats(tmp_path / "s.pt", model, data, range(12), **{**kw, "augment": Augment(8, hflip=True)})
    assert got is None and "augment" in why
    assert matching_stats(tmp_path / "none.pt", model, data, range(12), **kw)[0] is None


def test_a_bfloat16_run_is_not_reused_as_float32(tmp_path):
    "The precision is part of what a run is: statistics measured under bf16 autocast are not resumed, or matched, by a float32 run."
    from memloc.unitmem import matching_stats, precision_of
    model, data, run, st = _saved_run(tmp_path)                   # a float32 run, saved
    assert precision_of(model) == "float32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert precision_of(model) == "bfloat16"
        with pytest.raises(StaleStats, match="precision: saved 'float32', this run 'bfloat16'"):
            measure(model, data, **run, stats_path=tmp_path / "s.pt")
        bf = measure(model, data, **run, stats_path=tmp_path / "bf.pt")
    got, why = matching_stats(tmp_path / "bf.pt", model, data, run.get("points", range(len(data[0]))), run.get("augment"),
                              run["augmentations"], run.get("seed", 0))
    assert got is None and "precision" in why


def test_passes_tokenize_outside_autocast_and_run_the_model_in_it():
    "Under a caller's bfloat16 autocast, `measure` and `point_values` tokenize in float32 (exact tokens) and run the model's pass in bfloat16."
    from memloc.var_scales import point_values
    seen = []
    class Spy(ToyAdapter):
        def tokenize(self, img): seen.append(("tokenize", torch.is_autocast_enabled("cpu"))); return super().tokenize(img)
        def logits(self, tok, lab): seen.append(("logits", torch.is_autocast_enabled("cpu"))); return super().logits(tok, lab)
    model, (x, y) = Spy().eval(), toy_data(6)
    with torch.autocast("cpu", dtype=torch.bfloat16): measure(model, (x, y), augmentations=1, progress=False)
    point_values(model, (x, y), range(6), augmentations=1, dtype="bfloat16")
    assert seen and set(seen) == {("tokenize", False), ("logits", True)}


def test_statistics_record_the_tokenizers_precision(tmp_path):
    "A file measured with the tokens of a bfloat16 tokenizer is not resumed by a float32 one, and the reverse."
    from memloc.unitmem import tokenizer_precision
    model, data, run, st = _saved_run(tmp_path)
    assert load_stats(tmp_path / "s.pt")[2]["tokenizer_precision"] == "float32"     # no tokenizer module: float32
    ck = torch.load(tmp_path / "s.pt", weights_only=False)
    ck["meta"]["tokenizer_precision"] = "bfloat16"                                  # as if half-written under another precision
    torch.save(ck, tmp_path / "s.pt")
    with pytest.raises(StaleStats, match="tokenizer_precision: saved 'bfloat16', this run 'float32'"):
        measure(model, data, **run, stats_path=tmp_path / "s.pt")
    from memloc import var
    torch.manual_seed(0)
    v = var.build_model(var.preset_config("tiny"))
    assert tokenizer_precision(v) == "float32"
    v.tokenizer.to(torch.bfloat16)
    assert tokenizer_precision(v) == "bfloat16"


class _CaptureBefore(UnitCapture):
    "The capture as it was (an |act| copy of the whole activation, one division per group): the statistics must not change."
    def _hook(self, b, mod, inp, out):
        B, T, H = out.shape
        dt = torch.promote_types(out.dtype, torch.float32)
        if self._buf is None or self._buf.shape[0] != B or self._buf.dtype != dt: self._buf = torch.empty(B, *self.shape, dtype=dt)
        x = out.detach().abs()
        for g, (s, e) in enumerate(self.groups): torch.div(x[:, s:e].sum(1, dtype=dt), e - s, out=self._buf[:, g, b])
        self._seen[b] = True

    def values(self, check=True):
        buf, self._buf, self._seen = self._buf, None, [False] * self.shape[1]
        return buf


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("family,preset", [("var", "mini"), ("rar", "mini")])
def test_capture_equals_the_previous_capture_bit_for_bit(family, preset, dtype):
    "The reworked capture (|act| per slice, one division per pass, views summed in place) gives the same bits, in float32 and under bf16 autocast (CPU)."
    import importlib
    from memloc.unitmem import batch_values
    mod = importlib.import_module(f"memloc.{family}")
    torch.manual_seed(0)
    model = mod.build_model(mod.preset_config(preset) if family == "var" else preset).eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(5, 3, model.image_size, model.image_size, generator=g), torch.arange(5) % model.num_classes
    views = lambda img, ids, v: img.roll(v, -1)
    new, _, _ = batch_values(model, UnitCapture(model), (x, y), list(range(5)), views, 3, "cpu", dtype)
    old, acc = _CaptureBefore(model), None
    with torch.no_grad():
        for v in range(3):
            tok = model.tokenize(views(x, None, v))
            with old, torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"): model.logits(tok, y)
            acc = old.values() if acc is None else acc + old.values()
    assert torch.equal(new, acc / 3)


def test_a_nonfinite_activation_in_a_later_view_is_found():
    "The check runs once per batch, on the sum of the views: a NaN in one view only is still named."
    x, y = toy_data(4)
    def views(img, ids, v):
        if v == 2: img = img.clone(); img[1] = float("nan")
        return img
    class Poison(ToyAdapter):                                      # a NaN pixel makes its point's whole pass NaN
        def tokenize(self, img):
            t = super().tokenize(img.nan_to_num(0.5)); self._nan = torch.isnan(img).flatten(1).any(1); return t
        def logits(self, tok, lab):
            x = self.tok(tok) + self.pos + self.cls(lab)[:, None]
            x = torch.where(self._nan[:, None, None], torch.full_like(x, float("nan")), x)
            for fc1, act, fc2 in self.mlp_blocks(): x = x + fc2(act(fc1(x)))
            return self.head(x)
    with pytest.raises(NonFiniteActivation, match="batch row 1"):
        measure(Poison().eval(), (x, y), augment=views, augmentations=3, batch_size=4, progress=False)
