"The compatibility tests read the official calls' parameters from the fixtures' JSON instead of restating them."
import ast, json, re
from pathlib import Path

import pytest

from memloc.fixtures import fixture_call, fixtures_dir

FIX, HERE = fixtures_dir(), Path(__file__).parent
OURS = {"cfg_scale": "cfg", "randomize_temperature": "temperature"}      # the official keyword -> memloc's name for it
TESTS = {  # fixture -> (test file, the pytest fixture that hands it to a test, the recorded calls: (function, tensor))
    "var_tiny": ("test_var_compat.py", "tiny", [("autoregressive_infer_cfg", None)]),
    "rar_tiny": ("test_rar_compat.py", "rar_fx", [("generate", "gen.cfg.ids_BN"), ("generate", "gen.nocfg.ids_BN")]),
    "llamagen_tiny": ("test_llamagen_compat.py", "fx", [("generate", f"gen.{c}.ids_BN") for c in ("nocfg", "cfg", "cfgint")]),
}

def _number(v):
    "A regex for the ways a test could write the number v (4.0, 4., 1e-06, 1e-6, 0.000001)."
    forms = {repr(v), str(v), f"{v:g}", re.sub(r"e-0*(\d)", r"e-\1", f"{v:g}")}
    if float(v).is_integer(): forms |= {str(int(v)), f"{int(v)}.", f"{int(v)}.0"}
    return "(?:" + "|".join(sorted(map(re.escape, forms), key=len, reverse=True)) + r")(?![\w.])"

def test_number_forms():
    assert re.fullmatch(_number(1e-6), "1e-6") and re.fullmatch(_number(1e-6), "1e-06") and re.fullmatch(_number(4.0), "4.")
    assert not re.match(_number(4.0), "4.5") and not re.match(_number(1), "12")

@pytest.mark.parametrize("name", sorted(TESTS))
def test_fixture_checks_restate_no_call_parameter(name):
    "In every test that receives the fixture, no recorded keyword (or memloc's name for it) is set to the recorded value, "
    "and no recorded seed is written as a literal."
    p = FIX / f"{name}.json"
    if not p.exists(): pytest.skip(f"fixture {p} not found (set MEMLOC_FIXTURES)")
    meta = json.loads(p.read_text())
    file, arg, calls = TESTS[name]
    kws = [(k, v) for fn, t in calls for k, v in fixture_call(meta, fn, t).items() if not isinstance(v, bool)]
    assert kws
    seeds = [v for k, v in meta["seeds"].items() if isinstance(v, int) and "seed" in k]
    src = (HERE / file).read_text()
    funcs = [f for f in ast.parse(src).body if isinstance(f, ast.FunctionDef) and arg in [a.arg for a in f.args.args]]
    assert len(funcs) >= 3
    for f in funcs:
        if ast.get_docstring(f): f.body = f.body[1:]
        body = ast.unparse(f)                                             # the code, without comments or docstring
        for k, v in kws:
            for key in {k, OURS.get(k, k)}:
                assert not re.search(rf"\b{key}\s*=\s*-?{_number(abs(v))}", body), f"{f.name} restates {key}={v} of {name}"
        for s in seeds: assert not re.search(rf"manual_seed\(\s*{s}\s*\)", body), f"{f.name} restates the seed {s} of {name}"
