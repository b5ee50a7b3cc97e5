"The papermill driver: parameters from settings.ini, staleness, stage selection, failures, --check."
import json

import pytest

from memloc.config import SettingsError, load_settings
from memloc.reproduce import (STAGES, Stage, StageFailed, _convert, check_profile, run_stage, select_stages,
                              stage_key, stage_parameters)


def test_select_stages():
    names = [s.name for s in STAGES]
    assert [s.name for s in select_stages(STAGES, only=["rar_blocks", "testbed"])] == ["testbed", "rar_blocks"]
    assert [s.name for s in select_stages(STAGES, start="intervention")] == names[names.index("intervention"):]
    with pytest.raises(SystemExit, match="unknown stage"):
        select_stages(STAGES, only=["nope"])


def test_settings_converted_to_the_notebooks_types():
    s = load_settings("mini")
    assert _convert("0.25, 0.5", "[0.1]", "subset_fractions", s) == [0.25, 0.5]
    assert _convert("var", "'x'", "var_models", s) == "var"
    assert _convert("var, rar", "['var']", "var_models", s) == ["var", "rar"]
    assert _convert("64", "16", "batch_size", s) == 64


def _write_nb(path, body, params="profile = 'mini'\nscale = 1.0"):
    cells = [{"id": "p", "cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": params, "outputs": [], "execution_count": None},
             {"id": "b", "cell_type": "code", "metadata": {}, "source": body, "outputs": [], "execution_count": None}]
    path.write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}},
                                "nbformat": 4, "nbformat_minor": 5}))


@pytest.fixture
def fake_repo(tmp_path):
    (tmp_path / "nbs").mkdir()
    (tmp_path / "memloc").mkdir()
    (tmp_path / "memloc" / "m.py").write_text("x = 1\n")
    (tmp_path / "settings.ini").write_text(f"[mini]\nscale = 2.5\nruns_dir = {tmp_path}/runs\nfigures_dir = {tmp_path}/figs\n"
                                           f"inp_path = {tmp_path}/input.txt\n")
    (tmp_path / "input.txt").write_text("a")
    return tmp_path


def test_parameters_and_staleness(fake_repo):
    _write_nb(fake_repo / "nbs" / "s.ipynb", "print(scale)")
    s = load_settings("mini", fake_repo / "settings.ini")
    st = Stage("s", "s.ipynb", "t", ("{inp_path}",))
    params = stage_parameters(st, s, fake_repo)
    assert params == {"profile": "mini", "scale": 2.5}
    k1 = stage_key(st, params, s, fake_repo)
    assert stage_key(st, params, s, fake_repo) == k1
    (fake_repo / "input.txt").write_text("b")
    k2 = stage_key(st, params, s, fake_repo)
    assert k2 != k1
    assert stage_key(st, {**params, "scale": 3.0}, s, fake_repo) != k2
    (fake_repo / "memloc" / "m.py").write_text("x = 2\n")
    assert stage_key(st, params, s, fake_repo) != k2


def test_failing_stage_names_notebook_and_cell(fake_repo):
    _write_nb(fake_repo / "nbs" / "bad.ipynb", "raise ValueError('broken input')")
    s = load_settings("mini", fake_repo / "settings.ini")
    with pytest.raises(StageFailed) as e:
        run_stage(Stage("bad", "bad.ipynb", "t"), {"profile": "mini"}, s, fake_repo, progress=False)
    msg = str(e.value)
    assert "bad.ipynb" in msg and "ValueError" in msg and "broken input" in msg and "cell" in msg


def test_notebook_without_profile_parameter_is_refused(fake_repo):
    _write_nb(fake_repo / "nbs" / "np.ipynb", "1", params="scale = 1.0")
    s = load_settings("mini", fake_repo / "settings.ini")
    with pytest.raises(SettingsError, match="profile"):
        stage_parameters(Stage("np", "np.ipynb", "t"), s, fake_repo)


def test_check_stops_on_missing_full_paths():
    with pytest.raises(SettingsError) as e:
        check_profile(load_settings("full"))
    assert "var_d30_path" in str(e.value) and "data_root" in str(e.value)


def test_executed_notebook_names_no_machine_path(fake_repo):
    _write_nb(fake_repo / "nbs" / "cwd.ipynb", "import os; print(os.getcwd())")
    s = load_settings("mini", fake_repo / "settings.ini")
    run_stage(Stage("cwd", "cwd.ipynb", "t"), {"profile": "mini"}, s, fake_repo, progress=False)
    text = (fake_repo / "runs" / "cwd.ipynb").read_text()
    assert str(fake_repo) not in text and "runs" in text
