"Profile [smoke]: its files are written offline, in the released formats, and `memloc reproduce --check` accepts them."
import configparser
import json
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memloc.config import SettingsError, load_settings
from memloc.reproduce import available_stages, check_profile
from memloc.smoke import SMOKE_MODELS, SMOKE_SYNSETS, make_smoke_assets, smoke_settings
from memloc.family import released_models

ROOT = Path(__file__).resolve().parent.parent


class NetworkBlocked(RuntimeError):
    "A test tried to reach the network."


def _no_network(*args, **kwargs):
    raise NetworkBlocked(f"network access attempted: {args[1:] if len(args) > 1 else args}")


@pytest.fixture(scope="module")
def offline():
    "No connection can be opened while the assets are made and read."
    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", _no_network)
    mp.setattr(socket, "create_connection", _no_network)
    mp.setattr(socket, "getaddrinfo", _no_network)
    yield
    mp.undo()


@pytest.fixture(scope="module")
def assets(tmp_path_factory, offline):
    root = tmp_path_factory.mktemp("smoke") / "assets"
    return make_smoke_assets(root, verbose=False)


@pytest.fixture(scope="module")
def smoke_ini(assets, tmp_path_factory):
    "A settings file whose [smoke] is the repository's, with every path pointing at the test's assets."
    d = tmp_path_factory.mktemp("settings")
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(ROOT / "settings.ini")
    for k, v in assets.items(): cp["smoke"][k] = v
    cp["smoke"]["figures_dir"], cp["smoke"]["runs_dir"] = str(d / "figures"), str(d / "runs")
    with open(d / "settings.ini", "w") as f: cp.write(f)
    (d / "pyproject.toml").write_text("")
    return d / "settings.ini"


def test_network_is_blocked(offline):
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("example.com", 80), timeout=1)


def test_settings_name_the_files_smoke_assets_writes():
    s = load_settings("smoke", ROOT / "settings.ini")
    want = smoke_settings(ROOT / "runs" / "smoke" / "assets")
    assert {k: str(s.path(k)) for k in want} == want
    full = load_settings("full", ROOT / "settings.ini")
    assert set(full) - set(s) == {"var_d16_path", "var_d30_path", "rar_b_path", "rar_xxl_path", "llamagen_b_path", "llamagen_l_path"}   # the released models' files
    assert s["device"] == "cpu" and s["dtype"] == "float32" and s["testbed"] == full["testbed"] == ""


def test_imagenet_folder(assets):
    from memloc.data import ImageFolder, class_subset
    train = Path(assets["data_root"])
    assert sorted(p.name for p in train.iterdir()) == list(SMOKE_SYNSETS)
    files = sorted(train.rglob("*"))
    files = [f for f in files if f.is_file()]
    assert all(re.fullmatch(r"n\d{8}_\d+\.JPEG", f.name) and f.name.startswith(f.parent.name) for f in files)
    modes = [Image.open(f).mode for f in files]
    assert Image.open(files[0]).format == "JPEG"
    assert modes.count("L") == 1 and modes.count("CMYK") == 1 and modes.count("RGB") == len(files) - 2
    sizes = {Image.open(f).size for f in files}
    assert len(sizes) >= 4 and any(min(s) < 256 for s in sizes) and any(min(s) > 256 for s in sizes)
    ds = ImageFolder(train, size=256)
    assert all(tuple(ds[i][0].shape) == (3, 256, 256) for i in range(len(ds)))
    s = load_settings("smoke", ROOT / "settings.ini")
    for f in s.floats("subset_fractions") + [s.float("subset_fraction")]:   # every stage's subset keeps each class
        assert len(torch.unique(ds.targets[class_subset(ds.targets, f)])) == len(SMOKE_SYNSETS)
    class_subset(ds.targets, min(s.floats("subset_fractions")), min_per_class=2)   # stage 5's smallest subset: two per class


def _spec(fixtures_dir, family, model):
    return [k for k, *_ in json.loads((fixtures_dir / f"{family}_state_dict_spec.json").read_text())["models"][model]["state_dict"]]


def _per_block(keys):
    return sorted({re.sub(r"^(blocks|layers)\.\d+\.", r"\1.#.", k) for k in keys})


@pytest.mark.parametrize("name,family,tokenizer,generator", [
    ("VAR-smoke", "var", "vqvae", "var_d16"),
    ("RAR-smoke", "rar", "maskgit_vqgan", "rar_b"),
    ("LlamaGen-smoke", "llamagen", "vq_ds16_c2i", "gpt_b")])
def test_checkpoints_have_the_released_keys(assets, fixtures_dir, name, family, tokenizer, generator):
    r = released_models()[name]; tok_key, gen_key = r.tokenizer_key, r.generator_key
    raw = {k: torch.load(assets[k], map_location="cpu", weights_only=True) for k in (tok_key, gen_key)}
    if family == "llamagen":   # train_c2i.py's wrapping
        assert all(list(v) == ["model"] for v in raw.values())
        raw = {k: v["model"] for k, v in raw.items()}
    assert all(all(torch.is_tensor(t) for t in v.values()) for v in raw.values())   # flat state dicts
    assert list(raw[tok_key]) == _spec(fixtures_dir, family, tokenizer)           # the tokenizer: the very same keys, in order
    assert _per_block(raw[gen_key]) == _per_block(_spec(fixtures_dir, family, generator))


def test_sscd_stand_in_keeps_sscd_contract(assets):
    from memloc.extraction import IMAGENET_MEAN, IMAGENET_STD, make_backend
    net = torch.jit.load(assets["sscd_path"])
    assert isinstance(net, torch.jit.ScriptModule)
    x = (torch.rand(2, 3, 288, 320) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    e = net(x)
    assert e.shape == (2, 512) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    sim = make_backend("sscd", path=assets["sscd_path"])
    a = torch.rand(3, 3, 256, 256)
    e = sim.embed(a)                                       # the full profile's backend: resize to 320, normalise, embed
    assert e.shape == (3, 512) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert sim.threshold == 0.75


def test_fid_statistics_and_inception_offline(assets):
    from torch_fidelity.utils import create_feature_extractor
    from memloc.quality import fid_reference_stats, fidelity_metrics
    from memloc.data import ImageFolder
    fe = create_feature_extractor("inception-v3-compat", ["2048"], cuda=False,
                                  feature_extractor_weights_path=assets["inception_path"], verbose=False)
    ds = ImageFolder(assets["data_root"], size=256)
    imgs = torch.stack([ds[i][0] for i in range(len(ds))])
    f = fe((imgs * 255).round().to(torch.uint8))[0].double()
    assert f.std(0).mean() > 0.1 * f.abs().mean()              # random weights, but the features still tell images apart
    st = np.load(assets["fid_stats_path"])
    rec = json.loads(str(st["record"]))
    assert rec["n_images"] == len(ds) and rec["image_size"] == 256 and rec["feature_extractor"] == "inception-v3-compat"
    np.testing.assert_allclose(st["mu"], f.mean(0).numpy(), rtol=1e-4, atol=1e-6)   # mu of the folder's own features
    mtime = Path(assets["fid_stats_path"]).stat().st_mtime_ns
    fid_reference_stats(assets["data_root"], assets["fid_stats_path"], assets["inception_path"], 256)
    assert Path(assets["fid_stats_path"]).stat().st_mtime_ns == mtime                # cached: same inputs
    r = fidelity_metrics(imgs[:10], None, "inception-v3-compat", assets["inception_path"], fid_stats_path=assets["fid_stats_path"],
                         metrics=("fid",))
    assert np.isfinite(r["fid"]) and r["fid"] >= 0
    both = fidelity_metrics(imgs[:10], None, "inception-v3-compat", assets["inception_path"], fid_stats_path=assets["fid_stats_path"],
                            metrics=("fid", "isc"), seed=3)           # one pass of the extractor gives both
    import torch_fidelity
    from memloc.quality import _Images, to_uint8
    isc = torch_fidelity.calculate_metrics(input1=_Images(to_uint8(imgs[:10])), isc=True, feature_extractor="inception-v3-compat",
                                           feature_extractor_weights_path=assets["inception_path"], cuda=False, batch_size=64,
                                           verbose=False, rng_seed=3, samples_shuffle=True, cache=False, save_cpu_ram=True)
    assert both["fid"] == r["fid"] and both["is_mean"] == isc["inception_score_mean"] and both["is_std"] == isc["inception_score_std"]


def test_models_load_through_the_registry(assets, smoke_ini, monkeypatch):
    from memloc.study import load_model
    monkeypatch.setenv("MEMLOC_ROOT", str(smoke_ini.parent))
    x = torch.rand(1, 3, 256, 256)
    for name in SMOKE_MODELS:
        m = load_model(name, "smoke")
        assert m.image_size == 256 and next(m.parameters()).device.type == "cpu"
        tok = m.tokenize(x)
        assert tok.shape == (1, m.seq_len)
        assert torch.isfinite(m.logits(tok, torch.tensor([3]))).all()


def test_check_accepts_the_assets_and_names_a_wrong_file(assets, smoke_ini):
    stages = available_stages(ROOT)
    checked = check_profile(load_settings("smoke", smoke_ini), stages, ROOT)
    assert any("keys match the generator of VAR smoke" in c for c in checked)
    assert any("keys match the tokenizer of RAR rar_smoke" in c for c in checked)
    cp = configparser.ConfigParser(interpolation=None); cp.read(smoke_ini)
    cp["smoke"]["var_smoke_path"] = assets["rar_smoke_path"]   # a RAR generator where VAR's should be
    bad = smoke_ini.with_name("bad.ini")
    with open(bad, "w") as f: cp.write(f)
    with pytest.raises(SettingsError, match="var_smoke_path"):
        check_profile(load_settings("smoke", bad), stages, ROOT)


def test_reproduce_check_skips_the_miniature_stages(assets, smoke_ini, capsys):
    from memloc.reproduce import reproduce
    root = smoke_ini.parent
    if not (root / "nbs").exists(): (root / "nbs").symlink_to(ROOT / "nbs")
    assert reproduce("smoke", check=True, progress=False, root=root) == {}
    out = capsys.readouterr().out
    assert "skipped (the miniature's own; profile [smoke] names no testbed): testbed, implant, ground_truth" in out
    assert "ok extraction: parameters" in out and "ok ground_truth: parameters" not in out
    assert "ok llamagen_smoke_path: 18 keys match the generator of LLAMAGEN llamagen_smoke" in out


def test_fid_stats_command_reuses_the_cached_statistics(assets, smoke_ini, monkeypatch, capsys, tmp_path):
    from memloc.reproduce import main
    monkeypatch.setenv("MEMLOC_ROOT", str(smoke_ini.parent))
    before = Path(assets["fid_stats_path"]).stat().st_mtime_ns
    main(["fid-stats", "--profile", "smoke"])
    assert assets["fid_stats_path"] in capsys.readouterr().out
    assert Path(assets["fid_stats_path"]).stat().st_mtime_ns == before        # same folder, extractor and size: not recomputed
    bad = tmp_path / "bad"; bad.mkdir()
    cp = configparser.ConfigParser(interpolation=None); cp.read(smoke_ini)
    cp["smoke"]["data_root"] = str(bad / "no-such-folder")
    with open(bad / "settings.ini", "w") as f: cp.write(f)
    (bad / "pyproject.toml").write_text("")
    monkeypatch.setenv("MEMLOC_ROOT", str(bad))
    with pytest.raises(SystemExit) as e: main(["fid-stats", "--profile", "smoke"])
    assert e.value.code == 2 and "data_root" in capsys.readouterr().err


def test_offline_blocker_refuses_the_network_and_logs_it(tmp_path):
    "tests/offline (on PYTHONPATH in `make smoke`): names, connections and datagrams off the machine are refused and logged; loopback works."
    import subprocess, sys
    log = tmp_path / "network.log"
    code = ("import socket, urllib.request\n"
            "for f in (lambda: urllib.request.urlopen('http://localhost.example.com', timeout=1),\n"
            "          lambda: socket.socket().connect_ex(('93.184.216.34', 80)),\n"
            "          lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))):\n"
            "    try: f(); print('through')\n"
            "    except OSError as e: print('blocked')\n"
            "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
            "socket.create_connection(srv.getsockname(), timeout=2).close(); print('loopback')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "offline"), "MEMLOC_OFFLINE_LOG": str(log)}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["blocked"] * 3 + ["loopback"], r.stdout + r.stderr
    assert len(log.read_text().splitlines()) == 3
