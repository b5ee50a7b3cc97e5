"The notebooks are the source: their parameters reach papermill runs, and they stay clean."
import json
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = sorted((ROOT / "nbs").glob("*.ipynb"))
STAGES = ["10_adaptation", "11_var_scales", "12_rar_blocks", "13_intervention", "14_subset_robustness"]


def parameter_cells(path):
    nb = json.loads(path.read_text())
    return [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]


def test_notebooks_exist_and_export_one_module_each():
    mods = {}
    for p in NBS:
        src = "\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"])
        exp = [l.split()[-1] for l in src.splitlines() if l.startswith("#| default_exp")]
        assert len(exp) <= 1, f"{p.name} exports more than one module"
        if exp:
            assert exp[0] not in mods, f"{exp[0]} exported by {mods.get(exp[0])} and {p.name}"
            mods[exp[0]] = p.name
    assert "config" in mods


@pytest.mark.parametrize("stage", STAGES)
def test_stage_notebooks_are_parameterized(stage):
    path = ROOT / "nbs" / f"{stage}.ipynb"
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    cells = parameter_cells(path)
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert "profile" in pm.inspect_notebook(str(path))


def test_parameters_tag_survives_nbdev_clean(tmp_path):
    "nbdev-clean keeps the `parameters` tag (allowed_cell_metadata_keys), else papermill runs the defaults."
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    nb = json.loads((ROOT / "nbs" / "00_config.ipynb").read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    cell["metadata"]["scrolled"] = True  # noise that cleaning must drop
    clean_nb(nb, allowed_cell_metadata_keys=get_config().allowed_cell_metadata_keys)
    assert cell["metadata"] == {"tags": ["parameters"]}


def test_papermill_parameter_reaches_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMLOC_ROOT", str(ROOT))   # run from outside the repository: the kernel is told where it is
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(ROOT / "nbs" / "00_config.ipynb"), str(out), parameters={"profile": "full"},
                        cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    text = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                   for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    assert "[full]" in text and "device=cuda" in text


def test_stage_defaults_equal_the_mini_profile():
    "`nbdev-test` runs a stage notebook on its defaults and the driver on settings.ini [mini]: the two agree."
    import ast
    from memloc.config import load_settings
    from memloc.reproduce import STAGES as DRIVER_STAGES, _convert
    s, differ = load_settings("mini", ROOT / "settings.ini"), []
    for st in DRIVER_STAGES:
        for k, info in pm.inspect_notebook(str(ROOT / "nbs" / st.notebook)).items():
            if k == "profile" or k not in s or (st.settings is not None and k not in st.settings): continue
            if _convert(s[k], info["default"], k, s) != ast.literal_eval(info["default"]):
                differ.append(f"{st.notebook}: {k} = {info['default']} but [mini] {k} = {s[k]}")
    assert not differ, "\n".join(differ)
