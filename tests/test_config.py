import hashlib

import matplotlib
import pandas as pd
import json
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from memloc.config import (SettingsError, check_paths, load_settings, repo_root, resolve, save_fig,
                           save_json, save_table)


def test_repo_root_found_from_any_subfolder(repo_root):
    from memloc import config
    assert config.repo_root(repo_root / "nbs") == repo_root
    assert config.repo_root(repo_root / "memloc") == repo_root


def test_profiles_and_typed_values():
    mini, full = load_settings("mini"), load_settings("full")
    assert mini.str("device") == "cpu"
    assert mini.int("augmentations") == 4 and full.int("augmentations") == 10  # [DEFAULT] holds 10
    fr = mini.floats("subset_fractions")
    assert fr == sorted(fr) and all(0 < f <= 1 for f in fr)
    assert full.str("device") == "cuda" and full.float("subset_fraction") == 0.01


def test_unknown_profile_and_setting_named():
    with pytest.raises(SettingsError, match=r"\[nope\]"):
        load_settings("nope")
    with pytest.raises(SettingsError, match="no_such_key"):
        load_settings("mini").str("no_such_key")


def test_bad_values_named(tmp_path):
    ini = tmp_path / "settings.ini"
    ini.write_text("[mini]\nbatch_size = many\nflag = maybe\nfracs = 0.1, x\n")
    s = load_settings("mini", ini)
    with pytest.raises(SettingsError, match="batch_size"):
        s.int("batch_size")
    with pytest.raises(SettingsError, match="flag"):
        s.bool("flag")
    with pytest.raises(SettingsError, match="fracs"):
        s.floats("fracs")


def test_missing_paths_listed_before_any_work(tmp_path):
    ini = tmp_path / "settings.ini"
    present = tmp_path / "here.pth"
    present.write_bytes(b"x")
    ini.write_text(f"[full]\nvar_d30_path = {tmp_path}/absent.pth\nvar_vae_path = {present}\n"
                   f"data_root = {tmp_path}/no_imagenet\ndevice = cuda\n")
    s = load_settings("full", ini)
    with pytest.raises(SettingsError) as e:
        check_paths(s)
    msg = str(e.value)
    assert "var_d30_path" in msg and "absent.pth" in msg and "data_root" in msg
    assert "var_vae_path" not in msg
    assert check_paths(s, ["var_vae_path"]) == {"var_vae_path": present}


def test_relative_paths_resolve_from_repo_root(repo_root):
    assert resolve("data/mini") == repo_root / "data" / "mini"
    assert load_settings("mini").str("testbed") == "dup"


def test_outputs_are_byte_stable(tmp_path):
    digests = []
    for run in range(2):
        fig, ax = plt.subplots()
        ax.imshow([[0, 1], [1, 0]])
        ax.set_title("t")
        paths = save_fig(fig, "f", tmp_path / str(run))
        plt.close(fig)
        paths.append(save_table(pd.DataFrame({"a": [1.0, 2.5], "b": ["x", "y"]}), "t", tmp_path / str(run)))
        paths.append(save_json({"z": 1, "a": float("nan")}, "r", tmp_path / str(run)))
        digests.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in paths])
    assert digests[0] == digests[1]
    assert b"CreationDate" not in (tmp_path / "0" / "f.pdf").read_bytes()
    assert (tmp_path / "0" / "r.json").read_text() == '{\n  "a": null,\n  "z": 1\n}\n'


def test_settings_file_errors_name_file_section_key_value(tmp_path):
    ini = tmp_path / "settings.ini"
    ini.write_text("[mini]\nbatch_size = 8\nthis line has no equals sign\n")
    with pytest.raises(SettingsError, match=r"settings.ini: line 3: 'this line has no equals sign' is not `key = value`"):
        load_settings("mini", ini)
    ini.write_text("[mini]\nfracs = 0.5, half\nn = 3\n[full]\nseed = 1\n")
    s = load_settings("mini", ini)
    with pytest.raises(SettingsError, match=r"settings.ini \[mini\] fracs = '0.5, half': item 2, 'half', is not a number"):
        s.floats("fracs")
    for getter in ("int", "float", "floats", "bool", "str"):      # a missing key: named, never a bare KeyError
        with pytest.raises(SettingsError, match=r"\[mini\] seed: missing"):
            getattr(s, getter)("seed")
    assert "seed" in s.others and "seed" not in s


def test_check_settings_and_outputs(tmp_path):
    from memloc.config import check_outputs, check_settings
    ini = tmp_path / "settings.ini"
    ini.write_text(f"[mini]\nbatch_size = abc\nsubset_fractions = 0, 1.5, nan\ntop_p = 0.5\naugmentations = 0\n"
                   f"figures_dir = {tmp_path}/new/figs\nruns_dir = {ini}/runs\n")
    s = load_settings("mini", ini)
    problems = check_settings(s)
    assert len(problems) == 3 and any("batch_size" in p for p in problems) and any("augmentations" in p for p in problems)
    assert any("'nan'" in p for p in problems)
    s["subset_fractions"] = "0, 1.5"
    assert any("0.0, 1.5 is not fractions in (0, 1]" in p for p in check_settings(s))
    out = check_outputs(s)
    assert len(out) == 1 and "runs_dir" in out[0] and "is a file" in out[0]
    assert not (tmp_path / "new").exists()                        # checking creates nothing


def test_out_dir_follows_the_profile_and_the_staging(tmp_path, monkeypatch):
    from memloc.config import out_dir
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "settings.ini").write_text("[mini]\nfigures_dir = out/figs\n")
    monkeypatch.setenv("MEMLOC_ROOT", str(tmp_path))
    assert out_dir("mini", "s") == tmp_path / "out" / "figs" / "s"
    monkeypatch.setenv("MEMLOC_STAGING", str(tmp_path / "stage"))
    monkeypatch.setenv("MEMLOC_STAGE", "mini:s")
    assert out_dir("mini", "s") == tmp_path / "stage" / "s"          # the running stage writes to its staging folder
    assert out_dir("mini", "other") == tmp_path / "out" / "figs" / "other"   # and reads the others where they are


def test_outside_a_repository_only_absolute_paths(tmp_path, monkeypatch):
    from memloc.config import NotARepository
    monkeypatch.delenv("MEMLOC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotARepository, match="not inside a memloc repository"):
        resolve("data/mini")
    assert resolve(tmp_path / "x") == tmp_path / "x"


def test_truncated_manifest_is_named(tmp_path, monkeypatch):
    from memloc.config import read_json
    from memloc.study import load_model
    mp = tmp_path / "data" / "mini" / "long" / "manifest.json"   # the long testbed's manifest under the repository
    mp.parent.mkdir(parents=True)
    mp.write_text('{"var": {"file": "var.safet')
    with pytest.raises(SettingsError, match=r"manifest.json is not valid JSON"):
        read_json(mp)
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "settings.ini").write_text("[mini]\ntestbed = long\n")
    monkeypatch.setenv("MEMLOC_ROOT", str(tmp_path))
    with pytest.raises(SettingsError, match=str(mp)):
        load_model("var")


def test_a_run_sets_values_for_its_profile_only(monkeypatch):
    "`memloc reproduce --set` passes its values through MEMLOC_SET: every process of the run reads them, for that profile only."
    monkeypatch.setenv("MEMLOC_SET", json.dumps({"smoke": {"dtype": "bfloat16"}}))
    assert load_settings("smoke")["dtype"] == "bfloat16" and load_settings("mini")["dtype"] == "float32"
    monkeypatch.setenv("MEMLOC_SET", "dtype=bfloat16")
    with pytest.raises(SettingsError, match="MEMLOC_SET"): load_settings("smoke")
