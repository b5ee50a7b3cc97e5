"""The dry run of the full-scale path (`make smoke`): `memloc reproduce --profile smoke`, offline, ran every stage's full-scale branch.

`make smoke` writes the assets, runs the driver with every process offline (`tests/offline`) and then
these checks; they are skipped elsewhere (`MEMLOC_SMOKE_RUN` unset)."""
import json
import os
from pathlib import Path

import pytest

from memloc.config import load_settings
from memloc.family import model_family
from memloc.reproduce import available_stages
from memloc.study import profile_models

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not os.environ.get("MEMLOC_SMOKE_RUN"), reason="checks the outputs of `make smoke`")

SETTINGS = load_settings("smoke", ROOT / "settings.ini")
FIGS, RUNS = SETTINGS.path("figures_dir"), SETTINGS.path("runs_dir")
STAGES = [s for s in available_stages(ROOT) if not s.miniature]      # [smoke] names no testbed: the miniature's own stages do not run
MODELS = profile_models(SETTINGS)
# the models each stage studies: all of the profile's, but VAR's scales and the RAR-like families' blocks
STUDIED = {"var_scales": [m for m in MODELS if model_family(m) == "var"],
           "rar_blocks": [m for m in MODELS if model_family(m) != "var"], "adaptation": []}


def test_the_profile_is_the_full_one_in_small():
    assert SETTINGS["testbed"] == "" and SETTINGS.path("data_root").is_dir()
    assert sorted(model_family(m) for m in MODELS) == ["llamagen", "rar", "var"]
    assert [s.name for s in STAGES] == ["extraction", "quality", "adaptation", "var_scales", "rar_blocks", "intervention",
                                        "subset_robustness", "localization"]


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_ran_without_error(stage):
    nb = json.loads((RUNS / stage.notebook).read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{stage.notebook}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    params = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert "profile = \"smoke\"" in "".join(params["source"])


@pytest.mark.parametrize("stage", [s for s in STAGES if s.name != "adaptation"], ids=lambda s: s.name)
def test_every_stage_took_its_full_scale_branch(stage):
    "The stage wrote results that name the profile's models (the miniature's branch names var, rar, llamagen), and a figure."
    d = FIGS / stage.name
    text = "".join(f.read_text() for f in d.glob("*.json"))
    assert text, f"{d}: no results file"
    want = STUDIED.get(stage.name, MODELS)
    missing = [m for m in want if f'"{m}"' not in text]
    assert not missing, f"{d}: results name no {', '.join(missing)}"
    if stage.name != "quality":   # FID and IS only at full scale: a table, no figure
        assert list(d.glob("*.png")), f"{d}: no figure"


@pytest.mark.parametrize("stage", ["var_scales", "rar_blocks"])
def test_the_dtype_stages_ran_under_bf16_autocast(stage):
    "The second pass (`--set dtype=bfloat16`, into figures/smoke-bf16): the stages that take a dtype, on the CPU under bf16 autocast."
    s = next(x for x in STAGES if x.name == stage)
    nb = json.loads((ROOT / "runs" / "smoke-bf16" / s.notebook).read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{s.notebook}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    params = "".join(next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))["source"])
    assert 'dtype = "bfloat16"' in params
    text = "".join(f.read_text() for f in (ROOT / "figures" / "smoke-bf16" / stage).glob("*.json"))
    assert all(f'"{m}"' in text for m in STUDIED[stage])


def test_the_report_has_a_section_per_stage():
    page = (FIGS / "REPORT.md").read_text()
    absent = [s.title for s in STAGES if s.name != "adaptation" and f"## {s.title}" not in page]
    assert not absent, f"REPORT.md has no section {absent}"


def test_nothing_was_downloaded():
    log = RUNS / "network.log"
    attempts = log.read_text() if log.is_file() else ""
    assert attempts == "", f"network access attempted during the dry run:\n{attempts}"
