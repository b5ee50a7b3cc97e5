"The report, the figures drawn from saved tables, and the site: built from the committed miniature run, in seconds."
import json
import shutil

import pytest

from memloc import figures
from memloc.config import Settings, load_settings, repo_root
from memloc.report import (DEFAULT_TESTBED, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, build_site, check_site, report_page, summary,
                           var_depth_claim)
from memloc.report import testbeds as find_testbeds   # not collected as a test

MINI = repo_root() / "figures" / "mini"
STAGES = ["extraction", "var_scales", "rar_blocks", "intervention", "subset_robustness"]


def test_report_is_short_and_has_no_raw_json():
    md = report_page(load_settings("mini")).markdown()
    assert md.count("\n") < 330      # three families on three testbeds, every table's rows shown once
    assert "```" not in md and "## Summary" in md
    assert "FID" in md and "Stage 1" in md            # the quality stage's quality.json and stage 1 are read
    for s in ("intervention/headline.png", "extraction/extracted_vs_prefix.png"): assert s in md


def test_verdicts_follow_the_saved_statistics(tmp_path):
    d = tmp_path / "var_scales"; shutil.copytree(MINI / "var_scales", d, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    r = json.loads((d / "results.json").read_text())
    t = r["models"]["var"]["test"]
    assert var_depth_claim({"var_scales": d})[1] == (SUPPORTED if t["rho_ci"][0] > 0 else NOT_SUPPORTED if t["rho_ci"][1] < 0 else INCONCLUSIVE)
    for ci, want in (([-0.3, -0.1], NOT_SUPPORTED), ([-0.1, 0.2], INCONCLUSIVE), ([0.1, 0.4], SUPPORTED)):
        t["rho_ci"] = ci; (d / "results.json").write_text(json.dumps(r))
        assert var_depth_claim({"var_scales": d})[1] == want


def test_a_second_testbed_gets_its_own_column(tmp_path):
    for s in STAGES: shutil.copytree(MINI / s, tmp_path / s, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    shutil.copytree(tmp_path / "intervention", tmp_path / "canary" / "intervention")
    header, rows = summary(tmp_path, None, STAGES)
    assert header[2:4] == [f"miniature, {DEFAULT_TESTBED} testbed", "miniature, canary testbed"]   # the settings' testbed first
    assert rows[0][3] == "not run" and rows[2][3] != "not run"   # the canary testbed has only stage 4 here
    assert summary(tmp_path, None, STAGES, root="wide")[0][2] == "miniature, wide testbed"


def test_a_stage_that_names_its_testbed_is_believed(tmp_path):
    for s in ("extraction", "var_scales"): shutil.copytree(MINI / s, tmp_path / s, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    r = json.loads((tmp_path / "var_scales" / "results.json").read_text())
    (tmp_path / "var_scales" / "results.json").write_text(json.dumps(dict(r, testbed="canary")))
    assert {tb: sorted(d) for tb, d in find_testbeds(tmp_path, ["extraction", "var_scales"]).items()} == {DEFAULT_TESTBED: ["extraction"], "canary": ["var_scales"]}


def _implant(seed, rate, recall, after_unitmem, after_random):
    return {"seed": seed, "rate": rate, "n_units": 16, "valid": True, "recall_unitmem": recall, "recall_random": 16 / 1024,
            "argmax_implant_share_S": 0.5, "implants_extracted_before": 1.0, "implants_extracted_after_unitmem_0.5": 0.6,
            "implants_extracted_after_unitmem_0": after_unitmem, "implants_extracted_after_zero_S": 0.0,
            "implants_extracted_after_zero_random": after_random}


def _testbed(epochs, share, auc, after_top, recall=0.5, after_unitmem=0.0):
    share_ci = lambda s: {"share": s, "lo": max(0.0, s - 0.2), "hi": min(1.0, s + 0.2), "n": 8}
    draws = [7, 8, 6, 7, 8, 7, 6, 8, 7, 7] * 2
    p = (1 + sum(d <= after_top for d in draws)) / (1 + len(draws))
    return {"epochs": epochs, "canary_stream_share": share, "membership_auc": auc, "canaries_extracted_share": 0.9,
            "non_members_extracted_share": 0.0, "canaries_extracted": share_ci(0.9), "non_members_extracted": share_ci(0.0),
            "top_units_argmax_canary_share": 0.4, "canary_point_share": 0.1,
            "intervention": {"p": 10.0, "factor": 0.5, "n_units": 50, "canaries_before": 8, "canaries_after_top": after_top,
                             "canaries_after_random": draws, "random_mean": sum(draws) / len(draws), "p_value": p},
            "implants": [_implant(s, r, recall, after_unitmem, 1.0) for s in range(3) for r in (0.5, 1.0)]}


def _localization(after_unitmem, p_unitmem):
    entry = lambda after, p: {"10": {"targets_extracted_before": 12, "targets_extracted_after": after, "p_value_vs_random": p,
                                     "fid_before": 1.0, "fid_after": 1.2, "pruned": {}}}
    rnd = {"10": {"targets_extracted_before": 12, "targets_extracted_after": 10.0, "per_draw": [10] * 20, "fid_before": 1.0, "fid_after": 1.1}}
    return {"methods": {"unitmem": {"uses_targets": False, "recall_implants": {"mean": 0.4, "per_seed": [0.4]}, "mitigation": {"dup": entry(after_unitmem, p_unitmem)}},
                        "gradient": {"uses_targets": True, "recall_implants": {"mean": 0.2, "per_seed": [0.2]}, "mitigation": {"dup": entry(11, 0.6)}}},
            "random": {"uses_targets": False, "draws": 20, "recall_implants": {"mean": 0.02, "per_seed": [0.02]}, "mitigation": {"dup": rnd}}}


def _figures(tmp_path, gt, loc):
    figs = tmp_path / "figs"
    for s in STAGES: shutil.copytree(MINI / s, figs / s, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    for name, r in (("ground_truth", gt), ("localization", loc)):
        (figs / name).mkdir(exist_ok=True); (figs / name / "results.json").write_text(json.dumps(r))
    return figs


def _page(figs):
    s = load_settings("mini")
    return report_page(Settings("mini", {**s, "figures_dir": str(figs), "runs_dir": str(figs.parent / "runs")})).markdown()


def test_ground_truth_rows_and_sections_follow_the_numbers(tmp_path):
    gt = {"testbeds": {"dup": {"var": _testbed(350, 0.045, 0.8, after_top=2)},
                       "canary": {"var": _testbed(40, 0.5, 0.55, after_top=7, recall=0.0, after_unitmem=1.0)}}}
    figs = _figures(tmp_path, gt, _localization(3, 1 / 21))
    header, rows = summary(figs, None, STAGES + ["ground_truth"])
    assert header[2:4] == ["miniature, dup testbed", "miniature, canary testbed"]
    row = {r[0].split(" (")[0]: dict(zip(header, r)) for r in rows}
    recall, regime = row["UnitMem finds implanted units"], next(v for k, v in row.items() if k.startswith("The testbed behaves like the released models"))
    assert recall["verdict"] == "**dup: supported; canary: not supported**" and "Recall@|S| 0.50" in recall["miniature, dup testbed"]
    assert regime["verdict"] == "**dup: supported; canary: not supported**"
    removal = next(r for r in rows if "removes the implants" in r[0])
    assert removal[-1] == "**dup: supported; canary: not supported**"
    var_cut = dict(zip(header, rows[2]))   # the canary column's intervention: the ground truth's canaries, 8 -> 7 (random 7.1)
    assert "canaries, top 10% by 0.5: 8 -> 7" in var_cut["miniature, canary testbed"] and var_cut["verdict"] == "**not supported**"
    md = _page(figs)
    assert md.count("\n") < 330 and "```" not in md and "{" not in md.split("## Runs")[1]   # no raw JSON
    assert "## Ground truth" in md and "| passes over the training stream | 350 | 40 |" in md and "0.90 [0.70, 1.00]" in md
    assert "| dup | var | 0.5 | 3 | 0.50 ± 0.00 | 0.016 |" in md
    assert "Unitmem leaves the fewest targets" not in md and "unitmem leaves the fewest targets extractable" in md
    assert "On the implants, unitmem has the highest Recall@|S| (0.4, random 0.02)" in md

    gt["testbeds"]["canary"]["var"] = _testbed(400, 0.02, 0.9, after_top=2)   # the contrast now in the regime, and its cut beating random
    figs = _figures(tmp_path / "b", gt, _localization(11, 0.6))
    rows = summary(figs, None, STAGES + ["ground_truth"])[1]
    regime = next(r for r in rows if r[0].startswith("The testbed behaves like the released models"))
    assert regime[-1] == "**supported**" and rows[2][-1] == "**dup: not supported; canary: supported**"
    md = _page(figs)
    assert "no method beats random units at the top 10%" in md
def test_figures_redraw_from_the_saved_tables(tmp_path):
    written = []
    for s in figures.FIGURES:
        shutil.copytree(MINI / s, tmp_path / s, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
        written += figures.draw(s, tmp_path / s, formats=("png",))
    assert sorted(p.name for p in written) == sorted(
        ["extracted_vs_prefix.png", "extracted_vs_copies.png", "var_depth.png", "var_maps.png", "var_classes.png", "rar_profile.png", "rar_classes.png",
         "llamagen_profile.png", "llamagen_classes.png",
         "headline.png", "sweep.png", "consistency.png", "mitigation.png"])
    assert all(p.stat().st_size > 10_000 for p in written)


def test_site_builds_offline_and_every_link_resolves(tmp_path):
    site = build_site("mini", out=tmp_path / "site", notebooks=["00_config.ipynb", "12_rar_blocks.ipynb"], work=tmp_path / "src")
    counts = check_site(site)
    assert counts["pages"] >= 4 and counts["images"] >= 8
    index = (site / "index.html").read_text()
    assert "Summary" in index and "nbs/12_rar_blocks.html" in index   # a stage's links lead to its executed run's page
    assert "Out[" in (site / "nbs" / "12_rar_blocks.html").read_text() or "output" in (site / "nbs" / "12_rar_blocks.html").read_text()


def test_check_site_finds_broken_links(tmp_path):
    (tmp_path / "index.html").write_text('<a href="b.html#nope">b</a><img src="gone.png">')
    (tmp_path / "b.html").write_text('<h1 id="here">b</h1>')
    with pytest.raises(AssertionError, match="gone.png does not exist"):
        check_site(tmp_path)


def test_stage_intervals_and_p_values_are_shown_and_judge(tmp_path):
    import pandas as pd
    from memloc.report import intervention_claim, subset_claim
    for s in ("extraction", "intervention", "subset_robustness"): shutil.copytree(MINI / s, tmp_path / s, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    r = json.loads((tmp_path / "extraction" / "results.json").read_text())
    numbers = lambda: report_page.__globals__["SECTIONS"]["extraction"].numbers(tmp_path / "extraction", None)
    for e in r.values(): e["count_rank_correlation"] = {"rho": 0.5, "ci": [0.25, 0.75], "n": 8}
    (tmp_path / "extraction" / "results.json").write_text(json.dumps(r))
    head, rows = numbers()                                           # the attack as at full scale: the duplication curve's interval
    assert rows[0][head.index("rank correlation with copies [95% CI]")] == "0.50 [0.25, 0.75]"
    for e in r.values():
        del e["by_count"]; e["extracted_share"] = {g: {"share": 0.5, "lo": 0.25, "hi": 0.75, "n": 8} for g in e["groups"]}
    (tmp_path / "extraction" / "results.json").write_text(json.dumps(r))
    head, rows = numbers()                                           # a canary attack: the canaries' share
    assert "(0.50 [0.25, 0.75])" in rows[0][2]
    h = pd.read_csv(tmp_path / "intervention" / "headline.csv")
    var_top = (h.model == "var") & (h.units == "top UnitMem")
    h.loc[var_top, "extracted"] = 0                                  # the top units cut more than the random units' mean
    h.loc[(h.model == "var") & (h.units == "random mean"), "extracted"] = 3
    for p, n, want in ((1 / 21, 20, SUPPORTED), (0.5, 20, NOT_SUPPORTED), (1 / 11, 10, INCONCLUSIVE)):   # 10 draws cannot reach 0.05
        h.assign(p_vs_random=[p if t else None for t in var_top], random_draws=[n if t else None for t in var_top]).to_csv(tmp_path / "intervention" / "headline.csv", index=False)
        cell, v = intervention_claim({"intervention": tmp_path / "intervention"}, "var", 10.0)
        assert v == want and f"p {p:.2g}" in cell
    m = pd.read_csv(tmp_path / "subset_robustness" / "mitigation.csv")
    largest = f'{pd.read_csv(tmp_path / "subset_robustness" / "consistency.csv").fraction.max():g}'
    rnd = m.units.astype(str).str.startswith("random")
    m.loc[rnd, "extracted"] = 10                              # random units cut little ...
    m.loc[m.units.astype(str) == largest, "extracted"] = 0     # ... the largest subset's units cut everything
    m.loc[~rnd & ~m.units.astype(str).isin([largest, "none (before)"]), "extracted"] = 1   # ... and the smaller subsets' nearly as much
    two = pd.concat([m[~rnd], m[rnd].groupby("model").head(2)])   # 2 random draws per model
    twenty = pd.concat([m[~rnd]] + [m[rnd].groupby("model").head(1).assign(units=lambda d, k=k: d.units.astype(str) + f"-{k}") for k in range(20)])
    for m, p_largest, want in ((two, 1 / 21, INCONCLUSIVE), (twenty, 0.5, INCONCLUSIVE), (twenty, 1 / 21, SUPPORTED)):   # 2 draws cannot decide; 20 can
        m.assign(p_vs_random=[None if str(u).startswith(("none", "random")) else (p_largest if u == largest else 1 / 21) for u in m.units.astype(str)]
                 ).to_csv(tmp_path / "subset_robustness" / "mitigation.csv", index=False)
        cell, v = subset_claim({"subset_robustness": tmp_path / "subset_robustness"})
        assert "p 0.048" in cell and v == want
