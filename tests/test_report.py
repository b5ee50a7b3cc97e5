"The report, the figures drawn from saved tables, and the site: built from the committed miniature run, in seconds."
import json
import shutil

import pytest

from memloc import figures
from memloc.config import load_settings, repo_root
from memloc.report import (INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, build_site, check_site, report_page, summary,
                           var_depth_claim)

MINI = repo_root() / "figures" / "mini"
STAGES = ["extraction", "var_scales", "rar_blocks", "intervention", "subset_robustness"]


def test_report_is_short_and_has_no_raw_json():
    md = report_page(load_settings("mini")).markdown()
    assert md.count("\n") < 250
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
    shutil.copytree(tmp_path / "intervention", tmp_path / "long" / "intervention")
    header, rows = summary(tmp_path, None, STAGES)
    assert header[2:4] == ["miniature, canary testbed", "miniature, long testbed"]
    assert rows[0][3] == "not run" and rows[2][3] != "not run"   # the long testbed has only stage 4 here


def test_figures_redraw_from_the_saved_tables(tmp_path):
    written = []
    for s in figures.FIGURES:
        shutil.copytree(MINI / s, tmp_path / s, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
        written += figures.draw(s, tmp_path / s, formats=("png",))
    assert sorted(p.name for p in written) == sorted(
        ["extracted_vs_prefix.png", "var_depth.png", "var_maps.png", "var_classes.png", "rar_profile.png", "rar_classes.png",
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
