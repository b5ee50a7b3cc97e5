"The localization benchmark: every method on a known answer, recall on (stand-in) implants, the mitigation bookkeeping."
import sys
import types

import pytest
import torch

import memloc.localization as L
from memloc.intervention import scale_units

TARGETED = ["unitmem", "activation_contrast", "gradient", "learned_mask"]


def rank(scores, bu):
    flat = torch.argsort(-scores.flatten(), stable=True)
    return int((flat == bu[0] * scores.shape[1] + bu[1]).nonzero()[0, 0]) + 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", TARGETED)
def test_planted_unit_ranks_first(method, seed):
    toy = L.PlantedToy(seed=seed)
    assert rank(L.localize(method, toy, L.planted_evidence(toy)), toy.planted) == 1


def test_planted_unit_is_the_memory():
    toy = L.PlantedToy()
    ev = L.planted_evidence(toy)
    tok = toy.tokenize(ev.targets)
    with torch.no_grad():
        before = L.tf_loss(toy, tok, ev.target_labels)
        with scale_units(toy, [list(toy.planted)], 0.0): after = L.tf_loss(toy, tok, ev.target_labels)
    assert after[0] > before[0] + 0.5 and torch.allclose(after[1:], before[1:])


def test_methods_leave_the_model_as_it_was():
    toy = L.PlantedToy()
    flags = [p.requires_grad for p in toy.parameters()]
    sd = {k: v.clone() for k, v in toy.state_dict().items()}
    ev = L.planted_evidence(toy)
    for m in TARGETED: L.localize(m, toy, ev)
    assert all(torch.equal(v, sd[k]) for k, v in toy.state_dict().items())
    assert [p.requires_grad for p in toy.parameters()] == flags and all(p.grad is None for p in toy.parameters())
    for mod in toy.act: assert not mod._forward_hooks


def test_interface_checks():
    toy = L.PlantedToy()
    with pytest.raises(KeyError, match="unknown localization method"): L.localize("nosuch", toy)
    with pytest.raises(ValueError, match="pass evidence"): L.localize("gradient", toy)
    with pytest.raises(ValueError, match="target_term"): L.localize("learned_mask", toy, L.planted_evidence(toy), target_term="x")
    assert {m: L.METHODS[m].uses_targets for m in L.METHODS} == {"unitmem": False, "activation_contrast": True, "gradient": True,
                                                                  "learned_mask": True, "random": False}
    s = L.localize("random", toy, seed=1)
    assert s.dtype == torch.float64 and tuple(s.shape) == (3, 16) and torch.equal(s, L.localize("random", toy, seed=1))


def test_recall_at_k():
    sc = torch.tensor([[0.1, 0.9, 0.2, 0.0], [0.8, 0.3, 0.7, 0.05]])
    assert L.recall_at_k(sc, [[0, 1], [1, 2]]) == 0.5
    assert L.recall_at_k(sc, [[0, 1], [1, 2]], k=3) == 1.0
    assert L.recall_curve(sc, [[1, 3]], [1, 8]) == [0.0, 1.0]
    with pytest.raises(ValueError, match="no implanted"): L.recall_at_k(sc, torch.zeros(0, 2, dtype=torch.long))


def test_implants_through_the_interface(monkeypatch):
    "A stand-in `memloc.implant` with the agreed interface: every method finds the implanted unit."
    Implant = types.SimpleNamespace
    fake = types.ModuleType("memloc.implant")
    fake.load_implants = lambda family, testbed: [Implant(seed=s, rate=1 / 48, model=L.PlantedToy(seed=s), units=torch.tensor([[1, 5]]),
                                                          implant_ids=torch.tensor([0])) for s in range(2)]
    monkeypatch.setitem(sys.modules, "memloc.implant", fake)
    imps = L.load_implants_or_none("var", "canary")
    rec = L.implant_recall(imps, lambda imp: L.planted_evidence(imp.model), {m: {} for m in TARGETED}, random_draws=10, ks=[1, 48])
    assert (rec[rec.method != "random"].recall == 1.0).all()
    r = rec[rec.method == "random"]
    assert len(r) == 20 and r.recall.mean() < 0.5 and all(c[-1] == 1.0 for c in rec.curve)


def test_activation_contrast_streams_exactly():
    toy = L.PlantedToy(seed=3)
    ev = L.planted_evidence(toy, n_references=9)
    vals = torch.cat(list(L.unit_values(toy, ev.references, ev.reference_labels, 4)))
    t = torch.cat(list(L.unit_values(toy, ev.targets, ev.target_labels, 2))).mean(0)
    z = ((t - vals.mean(0)) / (vals.std(0) + 1e-6)).amax(0)
    assert torch.allclose(L.localize("activation_contrast", toy, ev), z, rtol=1e-6)


def test_audit_sets():
    att = dict(indices=torch.tensor([5, 6, 7, 8, 9, 10]), groups=["canary", "member", "non_member", "member", "canary", "member"],
               extracted=torch.tensor([True, True, True, False, True, False]))
    members = torch.tensor([1, 2, 3, 4, 5, 6, 8, 9, 10])
    s = L.audit_sets(att, members, target_fraction=0.5, n_references=4, seed=0)
    assert sorted(s["targets"].tolist() + s["others"].tolist()) == [5, 6, 9]          # never the extracted non-member 7
    assert len(s["targets"]) == 2 and not set(s["references"].tolist()) & {5, 6, 7, 9} and len(s["references"]) == 4
    assert all(torch.equal(a, b) for a, b in zip(s.values(), L.audit_sets(att, members, 0.5, 4, 0).values()))
    with pytest.raises(ValueError, match="nothing to localize"):
        L.audit_sets(dict(att, extracted=torch.zeros(6, dtype=torch.bool)), members)


def test_mitigation_counts_and_cache(monkeypatch, tmp_path):
    "With a stand-in attack (target 1 is extracted unless the planted unit is scaled down), the counts, FID budgets and cache."
    toy = L.PlantedToy()
    calls = []
    def fake_attack(model, probe, n_samples=0):
        calls.append(n_samples)
        w = model.fc1[1].weight[5, -1].item()           # the planted unit's fc1 weight on the flag (8 unless scaled)
        return dict(extracted_indices=[2] + ([1] if w > 6 else []), fid=1.0 + (8 - w) if n_samples else None)
    monkeypatch.setattr(L, "attack_and_fid", fake_attack)
    monkeypatch.setattr(L, "probe_fingerprint", lambda probe: "probe")
    scores = torch.zeros(3, 16, dtype=torch.float64); scores[1, 5] = 1.0
    cache = L.ResultCache(tmp_path / "c.pt")
    rows = L.mitigation(toy, scores, None, targets=[1], others=[2], top_ps=[2.0, 10.0], factors=[0.5, 0.0], n_samples=10,
                        fid_ps=[10.0], cache=cache)
    assert [(r["p"], r["factor"], r["targets_extracted"], r["others_extracted"]) for r in rows] == \
           [(0.0, 1.0, 1, 1), (2.0, 0.5, 0, 1), (2.0, 0.0, 0, 1), (10.0, 0.5, 0, 1), (10.0, 0.0, 0, 1)]
    assert [r["fid"] for r in rows] == [1.0, None, None, 5.0, 9.0] and calls == [10, 0, 0, 10, 10]
    cache.save()
    again = L.mitigation(toy, scores, None, [1], [2], [2.0, 10.0], [0.5, 0.0], 10, [10.0], L.ResultCache(tmp_path / "c.pt"))
    assert again == rows and len(calls) == 5                 # all from the file
    entry = L.results_entry({"toy": rows}, [10.0], {"toy": [rows, rows]})["10"]
    assert entry["targets_extracted_after"] == 0 and entry["p_value_vs_random"] == 1.0 and entry["pruned"]["fid_after"] == 9.0


def test_empirical_p_and_pareto():
    assert L.empirical_p(0, [1, 2, 3]) == 0.25 and L.empirical_p(3, [1, 2, 3]) == 1.0 and L.empirical_p(1, []) is None
    assert L.pareto_front([(1, 5), (2, 3), (3, 4), (4, 1)]) == [(1, 5), (2, 3), (4, 1)]


def test_options_key_names_objects_by_value():
    from memloc.data import Augment
    assert L._opts_key(dict(augment=Augment(16, hflip=False))) == L._opts_key(dict(augment=Augment(16, hflip=False)))
    assert L._opts_key(dict(augment=Augment(16, hflip=False))) != L._opts_key(dict(augment=Augment(16, hflip=True)))


def test_fingerprint():
    assert L.fingerprint(torch.ones(2)) != L.fingerprint(torch.ones(3)) != L.fingerprint(torch.ones(2, dtype=torch.float64))
    assert L.fingerprint("a", 1) == L.fingerprint("a", 1) != L.fingerprint("a", 2)


def test_result_cache_files_and_merge(tmp_path):
    for name in ("c.pt", "c.json"):
        c = L.ResultCache(tmp_path / name)
        c.get("a", lambda: dict(extracted_indices=[1, 2], fid=None)); c.save()
        again = L.ResultCache(tmp_path / name)
        assert again.data == {"a": dict(extracted_indices=[1, 2], fid=None)} and again.get("a", lambda: 1 / 0)["extracted_indices"] == [1, 2]
    worker = L.ResultCache(data=again.data)
    worker.get("b", lambda: dict(extracted_indices=[], fid=0.5))
    assert list(worker.added) == ["b"]                      # what a worker hands back: only what it computed
    again.merge(worker.added, worker.hits, worker.misses)
    assert set(again.data) == {"a", "b"} and (again.hits, again.misses) == (1, 1)


@pytest.fixture(scope="module")
def mini_var():
    from memloc.config import load_settings
    from memloc.data import load_source
    from memloc.extraction import load_attack
    model, split, _ = L.testbed_model("var", load_settings("mini").str("testbed"))   # the testbed the extraction stage ran on
    imgs, labs = load_source(split.source, 16)
    return model.eval(), split, imgs, labs, load_attack("var")


def test_attack_and_fid_is_evaluate(mini_var):
    "The extracted indices are stage 4's `evaluate`'s, unmodified and with units pruned (FID: checked in the notebook)."
    from memloc.intervention import Probe, evaluate
    model, split, imgs, labs, att = mini_var
    sets = L.audit_sets(att, split.members)
    probe = L.audit_probe(lambda i: (imgs[i], labs[i]), sets, att)
    for units in (torch.zeros(0, 2, dtype=torch.long), L.top_units(L.localize("random", model, seed=0), 40)):
        with scale_units(model, units, 0.0):
            a, e = L.attack_and_fid(model, probe), evaluate(model, probe)
        assert a == dict(extracted_indices=e["extracted_indices"], fid=None)


def test_testbed_attack_is_the_extraction_stages(mini_var, tmp_path):
    model, split, imgs, labs, att = mini_var
    mine = L.cached_attack(model, split, imgs, labs, 0, tmp_path)
    assert mine["backend"].threshold == pytest.approx(att["backend"].threshold, abs=1e-9) and mine["prefix"] == att["prefix"]
    verdicts = lambda a: sorted(zip(torch.as_tensor(a["indices"]).tolist(), a["groups"], torch.as_tensor(a["extracted"]).tolist()))
    assert verdicts(mine) == verdicts(att)
    again = L.cached_attack(model, split, imgs, labs, 0, tmp_path)            # from the file
    assert len(list(tmp_path.glob("attack-*.pt"))) == 1 and verdicts(again) == verdicts(att) and (again["backend"].name, again["backend"].threshold, again["backend"].source) == (mine["backend"].name, mine["backend"].threshold, mine["backend"].source)


def test_benchmark_draws(monkeypatch):
    "Some random draws only: the draws asked for, with an FID on the first `random_fid_draws` of all draws."
    toy = L.PlantedToy()
    calls = []
    monkeypatch.setattr(L, "attack_and_fid", lambda m, p, n=0: calls.append(n) or dict(extracted_indices=[], fid=1.0 if n else None))
    monkeypatch.setattr(L, "probe_fingerprint", lambda probe: "probe")
    sets = dict(targets=torch.tensor([1]), others=torch.tensor([2]))
    b = L.benchmark(toy, L.planted_evidence(toy), None, sets, {}, top_ps=[10.0], factors=[0.0], random_draws=4, random_fid_draws=1,
                    n_samples=5, draws=[0, 3])
    assert len(b["random"]) == 2 and b["mitigation"] == {} and [r["fid"] for r in b["random"][0]] == [1.0, 1.0]
    assert [r["fid"] for r in b["random"][1]] == [None, None]


def _square(x): return x * x


def test_run_tasks_in_workers(tmp_path):
    "A piece of the study gives the same rows here and in spawned workers."
    assert L.run_tasks(_square, [1, 2, 3]) == [1, 4, 9]
    cfg = dict(profile="mini", device="cpu", dtype="float32", batch_size=64, augmentations=1, subset_fraction=1.0, seed=0,
               target_fraction=0.5, n_references=64, factors=[0.0], n_samples=0, random_draws=2, image_size=16, main_testbed="dup",
               out=str(tmp_path), method_options={}, recall_ks_pct=[1],
               testbeds={"dup": dict(top_ps=[1.0], fid_ps=[], random_draws=2, random_fid_draws=0)})
    task = dict(cfg=cfg, part="random", testbed="dup", name="var", family="var", draws=[0, 1])   # the extraction stage's testbed and attack
    here, there = L.run_tasks(L.study_task, [task]), L.run_tasks(L.study_task, [task, dict(task, draws=[1])], workers=2)
    assert here[0]["bench"]["random"] == there[0]["bench"]["random"] and there[1]["bench"]["random"] == here[0]["bench"]["random"][1:]
    assert here[0]["misses"] == 3 and len(here[0]["added"]) == 3     # the unmodified model once, then one evaluation per draw


def test_variants_share_passes_and_match_their_method():
    toy = L.PlantedToy(seed=1)
    ev = L.planted_evidence(toy)
    V = L.method_variants(mask_steps=(12, 4), mask_l1s=(1e-3, 1e-2))
    got = L.variant_scores(toy, ev, V, dict(augmentations=1))
    for m, vs in V.items():
        assert list(got[m]) == list(vs)
        for v, o in vs.items():
            assert torch.allclose(got[m][v]["scores"], L.localize(m, toy, ev, **o)), (m, v)
    T, R = len(ev.targets), len(ev.references)
    g = got["gradient"]
    assert (g["axgrad contrast"]["forward"], g["axgrad"]["forward"], g["axgrad"]["backward"]) == (T + R, T, T)
    lm = got["learned_mask"]
    assert lm["l1 0.001, 4 steps"]["backward"] * 3 == lm["l1 0.001, 12 steps"]["backward"] > 0
    assert lm["l1 0.001, 4 steps"]["seconds"] <= lm["l1 0.001, 12 steps"]["seconds"]    # checkpoints of one run
    for m in V:                                       # each method's default variant finds the planted unit
        assert rank(got[m][next(iter(V[m]))]["scores"], toy.planted) == 1, m
    with pytest.raises(KeyError, match="no variants for method"): L.variant_scores(toy, ev, {"random": {"a": {}}})
    with pytest.raises(ValueError, match="stat must be"): L.localize("activation_contrast", toy, ev, stat="median")
    with pytest.raises(ValueError, match="kind must be"): L.localize("gradient", toy, ev, kind="ig")


def test_choice_is_made_on_validation_seeds_only():
    import pandas as pd
    rows = []
    for seed in range(4):
        for v, val, test in (("a", 0.2, 0.9), ("b", 0.6, 0.1)):   # a is better on the test seeds, b on the validation seeds
            rows.append(dict(seed=seed, rate=0.01, n_units=4, method="m", variant=v, draw=None,
                             recall=val if seed < 2 else test, seconds=1.0, forward=10, backward=0 if v == "a" else 10))
        rows.append(dict(seed=seed, rate=0.01, n_units=4, method="random", variant="uniform", draw=0, recall=0.05,
                         seconds=0.0, forward=0, backward=0))
    t = L.split_recall(pd.DataFrame(rows), [0, 1])
    c = L.choose_variants(t)["m"]
    assert (c["variant"], c["recall_validation"], c["recall_test"]) == ("b", 0.6, 0.1)
    mc = L.matched_compute(t)
    assert mc["budget"] == 10 and mc["chosen"]["m"]["variant"] == "a"     # b costs 10 + 2 x 10
    with pytest.raises(ValueError, match="none is left to test on"): L.split_recall(pd.DataFrame(rows), range(4))


@pytest.mark.parametrize("seed", range(5))
def test_min_detectable_is_the_p_value_boundary(seed):
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, 30, (20,), generator=g).tolist()
    md = L.min_detectable(draws, before=40, alpha=0.05)
    if md["max_count"] is None: assert min(draws) == 0; return
    assert L.empirical_p(md["max_count"], draws) <= 0.05 < L.empirical_p(md["max_count"] + 1, draws)
    assert md["min_cut"] == pytest.approx(sum(draws) / 20 - md["max_count"])
    assert L.min_detectable(draws[:10])["max_count"] is None and "cannot reach" in L.min_detectable(draws[:10])["note"]


def test_results_entry_records_power():
    base = dict(p=0.0, factor=1.0, n_units=0, targets_extracted=9, others_extracted=0, fid=None)
    row = lambda t: [base, dict(p=1.0, factor=0.5, n_units=3, targets_extracted=t, others_extracted=0, fid=None)]
    e = L.results_entry({"m": row(2)}, [1.0], {"m": [row(t) for t in range(3, 23)]}, alpha=0.05, factors=(0.5,))["1"]
    assert (e["n_draws"], e["alpha"], e["p"]) == (20, 0.05, 1 / 21) and "pruned" not in e
    assert e["min_detectable"]["max_count"] == 2
    assert L.by_chance(10, 20) == pytest.approx(10 / 21)
