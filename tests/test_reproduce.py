"The papermill driver: parameters from settings.ini, staleness, stage selection, failures, --check, and faults."
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from memloc.config import SettingsError, load_settings
from memloc.reproduce import (STAGES, Stage, StageFailed, UsageError, _convert, check_profile, clean_state, main, run_lock,
                              run_stage, select_stages, stage_key, stage_modules, stage_parameters, RunLocked)

ROOT = Path(__file__).resolve().parent.parent


def test_select_stages():
    names = [s.name for s in STAGES]
    assert [s.name for s in select_stages(STAGES, only=["rar_blocks", "testbed"])] == ["testbed", "rar_blocks"]
    assert [s.name for s in select_stages(STAGES, start="intervention")] == names[names.index("intervention"):]
    with pytest.raises(UsageError, match="unknown stage 'nope'"):
        select_stages(STAGES, only=["nope"])


def test_unknown_stage_exits_2_even_with_check(capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--from", "nosuch", "--check"])
    assert e.value.code == 2 and "nosuch" in capsys.readouterr().err


def test_settings_converted_to_the_notebooks_types():
    s = load_settings("mini")
    s["fr"], s["names"], s["n"] = "0.25, 0.5", "var, rar", "64"
    assert _convert(s["fr"], "[0.1]", "fr", s) == [0.25, 0.5]
    assert _convert("var", "'x'", "var_models", s) == "var"
    assert _convert(s["names"], "['var']", "names", s) == ["var", "rar"]
    assert _convert(s["n"], "16", "n", s) == 64


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
    (tmp_path / "memloc" / "other.py").write_text("y = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'fake'\n")
    (tmp_path / "settings.ini").write_text(f"[mini]\nscale = 2.5\nruns_dir = {tmp_path}/runs\nfigures_dir = {tmp_path}/figs\n"
                                           f"inp_path = {tmp_path}/input.txt\n")
    (tmp_path / "input.txt").write_text("a")
    return tmp_path


def test_parameters_and_staleness(fake_repo):
    _write_nb(fake_repo / "nbs" / "s.ipynb", "import memloc.m\nprint(scale)")
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
    assert stage_key(st, params, s, fake_repo, upstream=["other"]) != k2       # an earlier stage reran
    (fake_repo / "memloc" / "other.py").write_text("y = 2\n")                  # a module the stage does not import
    assert stage_key(st, params, s, fake_repo) == k2
    (fake_repo / "memloc" / "m.py").write_text("x = 2\n")                      # one it imports
    assert stage_key(st, params, s, fake_repo) != k2


def test_unread_settings_are_named(fake_repo):
    from memloc.reproduce import unread_settings
    _write_nb(fake_repo / "nbs" / "s.ipynb", "import memloc.m\nprint(scale)")
    (fake_repo / "memloc" / "m.py").write_text("def out(s): return s.path('runs_dir'), s.path(\"figures_dir\")\n")
    with open(fake_repo / "settings.ini", "a") as f: f.write("unused_knob = 3\n")
    s = load_settings("mini", fake_repo / "settings.ini")
    assert unread_settings(s, [Stage("s", "s.ipynb", "t")], fake_repo) == ["inp_path", "unused_knob"]   # scale: a parameter
    _write_nb(fake_repo / "nbs" / "s.ipynb", "print(scale, settings.path('inp_path'))")
    assert unread_settings(s, [Stage("s", "s.ipynb", "t")], fake_repo) == ["unused_knob"]


def test_module_names_parse_imports():
    from memloc.reproduce import _module_names
    every = {"a", "b", "c", "d", "e", "f"}
    src = ("%matplotlib inline\n!ls\nimport memloc.a\nfrom memloc import b, c as cc\nfrom memloc.d import x\n"
           "if True:\n    from .e import y\nREG = {'k': 'memloc.f'}\n# memloc.zzz is only a comment\n")
    assert _module_names(src, every) == {"a", "b", "c", "d", "e", "f"}
    assert _module_names("name = 'x'\nimportlib.import_module(f'memloc.{name}')", every) == every   # dynamic: all of them
    assert _module_names("x = 1  # see memloc.a", every) == set()
    assert _module_names("%%time\nimport memloc.a", every) == {"a"}                                 # under a cell magic


def test_stage_modules_follow_imports():
    mods = {p.stem for p in stage_modules(STAGES[0], ROOT)}   # the testbed: its models, data and config
    assert {"config", "data", "var", "rar", "checkpoints"} <= mods and "robustness" not in mods and "_modidx" not in mods


def test_failing_stage_names_notebook_and_cell(fake_repo):
    _write_nb(fake_repo / "nbs" / "bad.ipynb", "raise ValueError('broken input')")
    s = load_settings("mini", fake_repo / "settings.ini")
    with pytest.raises(StageFailed) as e:
        run_stage(Stage("bad", "bad.ipynb", "t"), {"profile": "mini"}, s, fake_repo, progress=False)
    msg = str(e.value)
    assert "bad.ipynb" in msg and "ValueError" in msg and "broken input" in msg and "cell" in msg
    assert not (fake_repo / "runs" / "bad.ipynb").exists()   # a failed notebook never takes a good one's place


def test_notebook_without_profile_parameter_is_refused(fake_repo):
    _write_nb(fake_repo / "nbs" / "np.ipynb", "1", params="scale = 1.0")
    s = load_settings("mini", fake_repo / "settings.ini")
    with pytest.raises(SettingsError, match="profile"):
        stage_parameters(Stage("np", "np.ipynb", "t"), s, fake_repo)


def test_check_stops_on_missing_full_paths():
    with pytest.raises(SettingsError) as e:
        check_profile(load_settings("full"), [])
    msg = str(e.value)
    assert "var_d30_path" in msg and "data_root" in msg
    assert "figures_dir" not in msg and "runs_dir" not in msg   # outputs are created by the run, not missing inputs


def test_executed_notebook_names_no_machine_path(fake_repo):
    _write_nb(fake_repo / "nbs" / "cwd.ipynb", "import os; print(os.getcwd())")
    s = load_settings("mini", fake_repo / "settings.ini")
    run_stage(Stage("cwd", "cwd.ipynb", "t"), {"profile": "mini"}, s, fake_repo, progress=False)
    text = (fake_repo / "runs" / "cwd.ipynb").read_text()
    assert str(fake_repo) not in text and "runs" in text


# --- --check: one list of every problem --------------------------------------------------------------

def test_check_lists_every_problem(fake_repo):
    _write_nb(fake_repo / "nbs" / "s.ipynb", "1", params="profile = 'mini'\nbatch_size = 64\nsubset_fractions = [0.5]")
    (fake_repo / "afile").write_text("")
    (fake_repo / "settings.ini").write_text(
        f"[mini]\nbatch_size = abc\nsubset_fractions = 0, 1.5, nan\nruns_dir = {fake_repo}/afile/runs\nfigures_dir = {fake_repo}/figs\n"
        f"inp_path = {fake_repo}/absent.txt\n")
    s = load_settings("mini", fake_repo / "settings.ini")
    with pytest.raises(SettingsError) as e:
        check_profile(s, [Stage("s", "s.ipynb", "t")], fake_repo)
    msg = str(e.value)
    for want in ("batch_size = 'abc'", "subset_fractions", "'nan'", "inp_path", "absent.txt", "runs_dir", "is a file, not a folder"):
        assert want in msg, (want, msg)
    assert "figures_dir" not in msg
    r = _run(fake_repo, "--check")                                 # the command: the same list, exit 2
    assert r.returncode == 2 and "batch_size = 'abc'" in r.stderr and "absent.txt" in r.stderr, r.stderr


def test_check_finds_a_read_only_output_folder(fake_repo):
    ro = fake_repo / "ro"; ro.mkdir(); ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK): pytest.skip("running as a user who can write a read-only folder")
        (fake_repo / "settings.ini").write_text((fake_repo / "settings.ini").read_text().replace(f"{fake_repo}/runs", f"{ro}/runs"))
        with pytest.raises(SettingsError, match="not writable"):
            check_profile(load_settings("mini", fake_repo / "settings.ini"), [], fake_repo)
    finally: ro.chmod(0o755)


def test_check_catches_testbed_checksum_and_family(fake_repo):
    from safetensors.torch import save_file
    import torch
    from memloc.testbed import sha256_file
    d = fake_repo / "data" / "mini" / "long"; d.mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, str(d / "var.safetensors"), metadata={"family": "var"})
    save_file({"w": torch.zeros(3)}, str(d / "rar.safetensors"), metadata={"family": "rar"})
    mp = d / "manifest.json"
    mp.write_text(json.dumps({"var": {"file": "var.safetensors", "sha256": "0" * 64},
                              "rar": {"file": "var.safetensors", "sha256": sha256_file(d / "var.safetensors")}}))
    with open(fake_repo / "settings.ini", "a") as f: f.write("testbed = long\n")
    s = load_settings("mini", fake_repo / "settings.ini")
    with pytest.raises(SettingsError) as e:
        check_profile(s, [], fake_repo)
    msg = str(e.value)
    assert "sha256" in msg and "'var'" in msg and "holds a 'var' model" in msg
    mp.write_text('{"var": {"file": "var.saf')     # truncated
    with pytest.raises(SettingsError, match=r"manifest.json is not valid JSON"):
        check_profile(s, [], fake_repo)


def test_missing_setting_other_profiles_give_is_an_error(fake_repo):
    _write_nb(fake_repo / "nbs" / "s.ipynb", "1", params="profile = 'mini'\nscale = 1.0")
    with open(fake_repo / "settings.ini", "a") as f: f.write("[full]\nscale = 3\n")
    txt = (fake_repo / "settings.ini").read_text().replace("scale = 2.5\n", "")
    (fake_repo / "settings.ini").write_text(txt)
    with pytest.raises(SettingsError, match=r"\[mini\] scale: missing"):
        stage_parameters(Stage("s", "s.ipynb", "t"), load_settings("mini", fake_repo / "settings.ini"), fake_repo)


# --- the run: atomic stages, interrupts, kills, locks --------------------------------------------------

STAGE_BODY = """
import json, os, time
from pathlib import Path
from memloc.config import out_dir
d = out_dir(profile, "{name}")
(d / "result.txt").write_text(f"scale={{scale}}\\n")
marker = Path(os.environ["MEMLOC_ROOT"]) / "{name}.started"
marker.write_text(str(os.getpid()))
wait = Path(os.environ["MEMLOC_ROOT"]) / "{name}.wait"
while wait.exists(): time.sleep(0.05)
(d / "done.txt").write_text("ok\\n")
"""


@pytest.fixture
def run_repo(fake_repo):
    "A repository with two tiny stages, `a` and `b`; `<name>.wait` makes a stage wait until the file is gone."
    for n in ("a", "b"): _write_nb(fake_repo / "nbs" / f"{n}.ipynb", STAGE_BODY.format(name=n))
    (fake_repo / "memloc").rename(fake_repo / "memloc_unused")   # the stages import the real memloc
    return fake_repo


def _cmd(repo, *args):
    code = ("import sys; from memloc.reproduce import main, Stage; "
            "main(sys.argv[1:], stages=[Stage('a', 'a.ipynb', 't', ('{inp_path}',)), Stage('b', 'b.ipynb', 't', folders=(('fig_dir', 'figures'),))])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MEMLOC_ROOT": str(repo)}
    return [sys.executable, "-c", code, "reproduce", "--no-progress", *args], env


def _run(repo, *args, timeout=120):
    cmd, env = _cmd(repo, *args)
    return subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=timeout)


def _start(repo, *args):
    cmd, env = _cmd(repo, *args)
    return subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=180):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def _kernel_ends(marker, timeout=15):
    "The stage's kernel ends with the driver (shut down on Ctrl-C; on SIGKILL its parent poller ends it within a second or so)."
    pid, t0 = int(marker.read_text()), time.time()
    while time.time() - t0 < timeout:
        try: os.kill(pid, 0)
        except ProcessLookupError: return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)                                   # the test's own orphan: do not leave it running
    return False


def _outputs(repo):
    return {p.relative_to(repo).as_posix(): p.read_text() for p in sorted((repo / "figs").rglob("*.txt")) if ".partial" not in p.parts}


@pytest.mark.timeout(240)
def test_run_then_kept(run_repo):
    r = _run(run_repo)
    assert r.returncode == 0, r.stderr
    assert _outputs(run_repo) == {"figs/a/done.txt": "ok\n", "figs/a/result.txt": "scale=2.5\n",
                                  "figs/b/done.txt": "ok\n", "figs/b/result.txt": "scale=2.5\n"}
    assert not (run_repo / "figs" / ".partial").exists() and not (run_repo / "runs" / ".partial").exists()
    src = "".join("".join(c["source"]) for c in json.loads((run_repo / "runs" / "b.ipynb").read_text())["cells"])
    assert 'fig_dir = "figs/b"' in src and ".partial" not in src   # a folder parameter names where the outputs are
    r = _run(run_repo)
    assert r.returncode == 0 and r.stdout.count("unchanged, kept") == 2, r.stdout
    (run_repo / "input.txt").write_text("changed")            # a's input: a reruns, and b after it
    r = _run(run_repo)
    assert "unchanged" not in r.stdout and r.stdout.count("done in") == 2, r.stdout


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_stage_is_redone(run_repo, sig):
    assert _run(run_repo, "--only", "a").returncode == 0          # one stage keeps the test short
    good = _outputs(run_repo)
    good_nb = (run_repo / "runs" / "a.ipynb").read_text()
    (run_repo / "settings.ini").write_text((run_repo / "settings.ini").read_text().replace("scale = 2.5", "scale = 4.0"))
    (run_repo / "a.wait").write_text("")
    (run_repo / "a.started").unlink()
    p = _start(run_repo, "--only", "a", "--force")
    _wait_for(run_repo / "a.started", p)
    p.send_signal(sig)
    out, err = p.communicate(timeout=180)
    if sig == signal.SIGINT:                                      # the driver's message alone: no traceback from the kernel
        assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err and "ZMQ" not in err, (p.returncode, err)
    else: assert p.returncode == -signal.SIGKILL
    assert _kernel_ends(run_repo / "a.started"), "the stage's kernel outlived the driver"
    assert _outputs(run_repo) == good                             # the last good outputs, untouched
    assert (run_repo / "runs" / "a.ipynb").read_text() == good_nb
    (run_repo / "a.wait").unlink()
    r = _run(run_repo, "--only", "a")
    assert r.returncode == 0, r.stderr
    assert "a: resuming" in r.stdout and "unchanged" not in r.stdout, r.stdout
    if sig == signal.SIGKILL: assert "stale" in r.stdout
    assert _outputs(run_repo) == {k: v.replace("2.5", "4.0") for k, v in good.items()}
    # equal to an uninterrupted run of the same settings
    ref = run_repo.with_name(run_repo.name + "_ref")
    ref.mkdir()
    for f in ("nbs/a.ipynb", "nbs/b.ipynb", "input.txt", "pyproject.toml"):
        (ref / f).parent.mkdir(exist_ok=True); (ref / f).write_text((run_repo / f).read_text())
    (ref / "settings.ini").write_text((run_repo / "settings.ini").read_text().replace(str(run_repo), str(ref)))
    assert _run(ref, "--only", "a").returncode == 0
    assert _outputs(ref) == _outputs(run_repo)


@pytest.mark.timeout(240)
def test_failed_stage_keeps_good_outputs_and_is_rerun_when_fixed(run_repo):
    assert _run(run_repo, "--only", "a").returncode == 0
    good = _outputs(run_repo)
    nb = run_repo / "nbs" / "a.ipynb"
    ok = nb.read_text()
    _write_nb(nb, "from memloc.config import out_dir\n(out_dir(profile, 'a') / 'result.txt').write_text('half')\nraise RuntimeError('bad input')")
    r = _run(run_repo, "--only", "a")
    assert r.returncode == 1 and "bad input" in r.stderr and ".partial" in r.stderr
    assert _outputs(run_repo) == good
    nb.write_text(ok)                                              # the input restored: the good run is still the record
    r = _run(run_repo, "--only", "a")
    assert r.returncode == 0 and r.stdout.count("unchanged, kept") == 1, r.stdout


@pytest.mark.timeout(240)
def test_two_runs_at_once(run_repo):
    (run_repo / "a.wait").write_text("")
    p = _start(run_repo)
    try:
        _wait_for(run_repo / "a.started", p)
        r = _run(run_repo)
        assert r.returncode == 1 and "another `memloc reproduce` is running" in r.stderr and f"pid {p.pid}" in r.stderr
    finally:
        (run_repo / "a.wait").unlink()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    state = json.loads((run_repo / "runs" / "state.json").read_text())
    assert set(state) == {"a", "b"}


def test_lock_in_process(fake_repo):
    s = load_settings("mini", fake_repo / "settings.ini")
    with run_lock(s):
        with pytest.raises(RunLocked):
            with run_lock(s): pass
    with run_lock(s): pass                                         # released


def test_clean_state_lists_then_removes_under_the_lock(fake_repo):
    "Saved parts are listed with their sizes and removed only when asked, and never while a run holds the lock."
    s = load_settings("mini", fake_repo / "settings.ini")
    tmp = fake_repo / "runs" / "tmp"
    assert clean_state(s) == []
    scan = tmp / "extraction" / "m1"; scan.mkdir(parents=True); (scan / "part-0.safetensors").write_bytes(b"x" * 10)
    (tmp / "quality").mkdir(); (tmp / "quality" / "run.json").write_text("{}")
    listed = [(p.relative_to(tmp).as_posix(), n) for p, n in clean_state(s)]
    assert listed == [("extraction/m1", 10), ("quality/run.json", 2)] and scan.is_dir()
    with run_lock(s):
        with pytest.raises(RunLocked): clean_state(s, remove=True)
    assert scan.is_dir()
    clean_state(s, remove=True)
    assert not scan.exists() and clean_state(s) == []
    staged = [fake_repo / "runs" / ".partial" / "a", fake_repo / "figs" / ".partial" / "a"]   # an interrupted stage's staging folders
    for d in staged: d.mkdir(parents=True); (d / "key").write_text("k")
    assert sorted(clean_state(s)) == sorted((d, 1) for d in staged)
    clean_state(s, remove=True)
    assert not any(d.exists() for d in staged)


def test_truncated_manifest_is_named(tmp_path):
    "A truncated testbed manifest: an error that names the file, not a bare JSONDecodeError."
    from memloc.testbed import read_manifest
    p = tmp_path / "manifest.json"
    p.write_text('{"var": {"file": "var.safetensors", "sha')
    with pytest.raises(SettingsError, match=f"{p} is not valid JSON"): read_manifest(p)


def test_refuses_outside_a_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MEMLOC_ROOT"}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-c", "from memloc.reproduce import main; main()", "reproduce", "--check"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 2 and "not inside a memloc repository" in r.stderr, r.stderr


def test_set_refuses_a_setting_that_does_not_exist(capsys, monkeypatch):
    from memloc.reproduce import main
    monkeypatch.setenv("MEMLOC_SET", "")          # restored after the test: main() exports the run's values
    with pytest.raises(SystemExit) as e: main(["reproduce", "--profile", "mini", "--set", "dtpye=bfloat16", "--check"])
    assert e.value.code == 2 and "dtpye" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: main(["reproduce", "--profile", "mini", "--set", "dtype", "--check"])
    assert e.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err
