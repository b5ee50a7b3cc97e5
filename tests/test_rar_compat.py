"RAR and MaskGIT VQGAN against the official code's fixtures (MEMLOC_FIXTURES, default ../shared/fixtures)."
import json

import pytest
from fixture_json import edited
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from memloc.rar import (RAR, RARConfig, MaskGITVQGAN, VQGANConfig, CheckpointError, build_model, cfg_schedule, load_rar,
                        load_strict, rar_config, rar_generate, read_state_dict)
from memloc.fixtures import fixture_call, fixtures_dir, load_fixture

torch.set_num_threads(1)
FX = fixtures_dir()
ATOL = 2e-5

def _need(name):
    p = FX / name
    if not p.exists(): pytest.skip(f"fixture {p} not found (set MEMLOC_FIXTURES)")
    return p

def _strip(sd, prefix): return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

@pytest.fixture(scope="module")
def rar_fx():
    _need("rar_tiny.safetensors"); S, J = load_fixture("rar_tiny", FX)
    g = J["config"]["model"]["generator"]
    cfg = RARConfig(hidden_size=g["hidden_size"], num_hidden_layers=g["num_hidden_layers"], num_attention_heads=g["num_attention_heads"],
                    intermediate_size=g["intermediate_size"], image_seq_len=g["image_seq_len"],
                    condition_num_classes=g["condition_num_classes"], codebook_size=J["config"]["model"]["vq_model"]["codebook_size"])
    model = load_strict(RAR(cfg), _strip(S, "rar."), "rar").eval()
    return model, S, J

def _gen_call(J, case):
    "The official generate() call that made gen.{case}.*: guidance scale and power, temperature (greedy when one-hot)."
    kw = fixture_call(J, "generate", f"gen.{case}.ids_BN")
    if not J["checks"].get("gen_probs_exactly_one_hot"): pytest.skip(f"the fixture samples ({kw}): its ids follow the official RNG stream")
    return kw

def _tok_cfg(c, q):
    return VQGANConfig(c["hidden_channels"], tuple(c["channel_mult"]), c["num_res_blocks"], c["z_channels"], q["num_embeddings"],
                       c["num_channels"], c["resolution"])

@pytest.fixture(scope="module")
def tok_fx():
    _need("maskgit_tiny.safetensors"); T, J = load_fixture("maskgit_tiny", FX)
    tok = MaskGITVQGAN(_tok_cfg(J["construction"]["conf"], J["construction"]["quantizer"]))
    return load_strict(tok, _strip(T, "tokenizer."), "maskgit").eval(), T

# ---------------------------------------------------------------- full-size key specs
def _spec_models():
    p = FX / "rar_state_dict_spec.json"
    return json.loads(p.read_text())["models"] if p.exists() else {}

@pytest.mark.parametrize("name", sorted(_spec_models()) or ["missing"])
def test_state_dict_spec(name):
    spec = json.loads(_need("rar_state_dict_spec.json").read_text())["models"][name]
    with torch.device("meta"):
        if "hard_coded_config" in spec:
            h = spec["hard_coded_config"]; model = MaskGITVQGAN(_tok_cfg(h, h))
        else:
            c = spec["config"]
            model = RAR(RARConfig(**{k: c[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                                     "image_seq_len", "condition_num_classes", "codebook_size")}))
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(r[0], r[1]) for r in spec["state_dict"]]
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == spec["total_parameters"]

def test_released_presets_match_spec():
    models = json.loads(_need("rar_state_dict_spec.json").read_text())["models"]
    names = [n for n in models if n.startswith("rar_")]
    assert names
    for name in names:
        with torch.device("meta"): m = build_model(name)
        assert sum(p.numel() for p in m.generator.parameters()) == models[name]["total_parameters"]
        assert sum(p.numel() for p in m.tokenizer.parameters()) == models["maskgit_vqgan"]["total_parameters"]
        assert m.generator.cfg.guidance_scale_pow == models[name]["config"]["guidance_scale_pow"]

# ---------------------------------------------------------------- MaskGIT VQGAN
def test_maskgit_codes_and_images(tok_fx):
    tok, T = tok_fx
    with torch.no_grad():
        z = tok.encoder(T["input.img_B3HW"])
        torch.testing.assert_close(z, T["enc.encoder_out_BChw"], atol=ATOL, rtol=0)
        assert torch.equal(tok.encode(T["input.img_B3HW"]), T["enc.codes_BN"])
        zq = tok.quantize.lookup(T["enc.codes_BN"])
        torch.testing.assert_close(zq, T["dec.zq_BChw"], atol=ATOL, rtol=0)
        torch.testing.assert_close(tok.decoder(zq), T["dec.decoder_raw_B3HW"], atol=ATOL, rtol=0)
        torch.testing.assert_close(tok.decode(T["enc.codes_BN"]), T["dec.decoded_B3HW"], atol=ATOL, rtol=0)

# ---------------------------------------------------------------- RAR teacher forcing
@pytest.mark.parametrize("case", ["raster", "perm"])
def test_rar_teacher_forced(rar_fx, case):
    model, S, J = rar_fx
    ids, cond, orders = S["input.input_ids_BN"], S["input.condition_B"], S[f"{case}.orders_BN"]
    assert torch.equal(cond, S["input.labels_B"] + model.cond_offset)
    got = {}
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, a: got.__setitem__("x_in", a[0].clone()))]
    for i, b in enumerate(model.blocks):
        hooks += [b.mlp.fc1.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(f"blocks.{i}.mlp.fc1_out", o.clone())),
                  b.mlp.act.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(f"blocks.{i}.mlp.act_out", o.clone())),
                  b.register_forward_hook(lambda m, a, o, i=i: got.__setitem__(f"blocks.{i}.out", o[0].clone()))]
    with torch.no_grad(): logits, seq = model.forward_tf(ids, cond, orders)
    for h in hooks: h.remove()
    assert torch.equal(seq, S[f"{case}.labels_BN"])
    torch.testing.assert_close(logits, S[f"{case}.logits_BTV"], atol=ATOL, rtol=0)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), seq.reshape(-1))
    torch.testing.assert_close(loss, S[f"{case}.loss"], atol=ATOL, rtol=0)
    x, c = model.embed(seq, cond, orders)
    torch.testing.assert_close(x, S[f"{case}.x_in"], atol=ATOL, rtol=0)
    torch.testing.assert_close(c, S[f"{case}.adaln_cond"].expand_as(c), atol=ATOL, rtol=0)
    keys = [k for k in S if k.startswith(f"{case}.blocks.")]
    assert len(keys) == 3 * len(model.blocks)
    for k in keys + [f"{case}.x_in"]:
        torch.testing.assert_close(got[k[len(case) + 1:]], S[k], atol=ATOL, rtol=0, msg=k)

# ---------------------------------------------------------------- RAR generation
@pytest.mark.parametrize("case", ["cfg", "nocfg"])
def test_rar_generation(rar_fx, case):
    model, S, J = rar_fx
    kw = _gen_call(J, case)
    gs, pw = kw["guidance_scale"], kw["guidance_scale_pow"]
    labels, N = S["input.labels_B"], model.cfg.image_seq_len
    ids, raw = rar_generate(model, labels, guidance_scale=gs, guidance_scale_pow=pw, greedy=True, return_logits=True)
    assert torch.equal(ids, S[f"gen.{case}.ids_BN"])
    ref_raw = S[f"gen.{case}.raw_last_logits_2BNV" if gs else f"gen.{case}.raw_last_logits_BNV"]
    torch.testing.assert_close(raw, ref_raw, atol=ATOL, rtol=0)
    # the official sampling path (its temperature: one-hot probabilities), the other cache setting, the fixture's seed
    ids2 = rar_generate(model, labels, guidance_scale=gs, guidance_scale_pow=pw, temperature=kw["randomize_temperature"],
                        kv_cache=not kw["kv_cache"], generator=torch.Generator().manual_seed(J["seeds"]["gen_seed"]))
    assert torch.equal(ids2, ids)
    if f"gen.{case}.cfg_scale_N" in S:
        sched = torch.cat([cfg_schedule(s, N, gs, pw) for s in range(N)])
        torch.testing.assert_close(sched, S[f"gen.{case}.cfg_scale_N"], atol=1e-6, rtol=0)

@pytest.mark.parametrize("k", [1, 5, -1])
def test_rar_prefix_forced(rar_fx, k):
    "Greedy continuation of the first k greedy tokens is the greedy sequence itself."
    model, S, J = rar_fx
    kw = _gen_call(J, "cfg")
    gs, pw = kw["guidance_scale"], kw["guidance_scale_pow"]
    ref = S["gen.cfg.ids_BN"]; k = k % model.cfg.image_seq_len
    out = rar_generate(model, S["input.labels_B"], guidance_scale=gs, guidance_scale_pow=pw, greedy=True, prefix_Bn=ref[:, :k])
    assert torch.equal(out, ref)
    wrong = (ref[:, :k] + 1) % model.cfg.codebook_size
    out2 = rar_generate(model, S["input.labels_B"], guidance_scale=gs, guidance_scale_pow=pw, greedy=True, prefix_Bn=wrong)
    assert torch.equal(out2[:, :k], wrong)

def test_decoded_generation(rar_fx, tok_fx):
    _, S, _ = rar_fx; tok, _ = tok_fx
    if tok.quantize.embedding.num_embeddings != rar_fx[0].cfg.codebook_size: pytest.skip("fixture tokenizer and generator differ")
    with torch.no_grad(): img = tok.decode(S["gen.cfg.ids_BN"])
    torch.testing.assert_close(img, S["gen.cfg.decoded_img_B3HW"], atol=ATOL, rtol=0)

# ---------------------------------------------------------------- loading errors
def test_loading_errors(tmp_path, rar_fx):
    model = rar_fx[0]
    sd = dict(model.state_dict())
    good = tmp_path / "g.pth"; torch.save(sd, good)
    fresh = load_strict(RAR(model.cfg), read_state_dict(good), "rar")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values()))
    trunc = tmp_path / "t.pth"; trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"): read_state_dict(trunc)
    st = tmp_path / "g.safetensors"; save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    trunc2 = tmp_path / "t.safetensors"; trunc2.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"): read_state_dict(trunc2)
    txt = tmp_path / "notes.bin"; txt.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint"): read_state_dict(txt)
    lst = tmp_path / "list.pth"; torch.save([1, 2, 3], lst)
    with pytest.raises(CheckpointError, match="not a checkpoint"): read_state_dict(lst)
    with pytest.raises(FileNotFoundError): read_state_dict(tmp_path / "nope.bin")
    bad = dict(sd); bad.pop("lm_head.bias"); bad["extra.weight"] = torch.zeros(1); bad["cls_token"] = torch.zeros(1, 1, 3)
    with pytest.raises(CheckpointError) as e: load_strict(RAR(model.cfg), bad, "rar")
    assert "lm_head.bias" in str(e.value) and "extra.weight" in str(e.value) and "cls_token" in str(e.value)

def test_other_family_rejected():
    var = read_state_dict(_need("var_tiny.safetensors"), prefix="var.")
    cfg = RARConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_seq_len=16, condition_num_classes=10, codebook_size=64)
    with pytest.raises(CheckpointError, match="VAR"): load_strict(RAR(cfg), var, "rar")
    tok = read_state_dict(_need("maskgit_tiny.safetensors"), prefix="tokenizer.")
    with pytest.raises(CheckpointError, match="tokenizer"): load_strict(RAR(cfg), tok, "rar")
    small = VQGANConfig(hidden_channels=32, channel_mult=(1, 2), num_res_blocks=1, z_channels=8, num_embeddings=16, image_size=16)
    vqvae = read_state_dict(_need("var_tiny.safetensors"), prefix="vqvae.")
    with pytest.raises(CheckpointError, match="VAR"): load_strict(MaskGITVQGAN(small), vqvae, "maskgit")
    gen = read_state_dict(_need("rar_tiny.safetensors"), prefix="rar.")
    with pytest.raises(CheckpointError, match="generator"): load_strict(MaskGITVQGAN(small), gen, "maskgit")

def test_load_rar_roundtrip(tmp_path):
    m = build_model("mini")
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    torch.save(m.generator.state_dict(), tmp_path / "gen.bin")
    save_file({k: v.contiguous() for k, v in m.tokenizer.state_dict().items()}, str(tmp_path / "tok.safetensors"))
    m2 = load_rar(tmp_path / "gen.bin", tmp_path / "tok.safetensors", m.config)
    tokens = torch.randint(0, m.vocab_size, (2, m.seq_len), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.logits(tokens, torch.tensor([0, 9])), m2.logits(tokens, torch.tensor([0, 9])))
    with pytest.raises(CheckpointError, match="tokenizer"): load_rar(tmp_path / "tok.safetensors", tmp_path / "tok.safetensors", m.config)

# ---------------------------------------------------------------- adapter
def test_adapter_mini():
    m = build_model("mini")
    assert m.family == "rar" and (m.seq_len, m.vocab_size, m.image_size, m.num_classes) == (64, 256, 16, 10)
    m2 = build_model(json.loads(json.dumps(m.config)))            # the config survives JSON
    m2.load_state_dict(m.state_dict())
    img = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    tokens, labels = m.tokenize(img), torch.tensor([0, 4, 9])
    assert tokens.shape == (3, 64) and tokens.dtype == torch.long and torch.equal(tokens, m2.tokenize(img))
    rec = m.reconstruct(img); assert rec.shape == img.shape and rec.min() >= 0 and rec.max() <= 1
    with torch.no_grad():
        for p in m.generator.parameters(): p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.05)
    lg = m.logits(tokens, labels); assert lg.shape == (3, 64, 256)
    loss0 = m.loss(tokens, labels, random_ratio=0.0)
    torch.testing.assert_close(loss0, F.cross_entropy(lg.reshape(-1, 256), tokens.reshape(-1)), atol=1e-5, rtol=0)
    l1 = m.loss(tokens, labels, random_ratio=1.0, generator=torch.Generator().manual_seed(3))
    l2 = m.loss(tokens, labels, random_ratio=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(l1, l2) and not torch.equal(l1, loss0)
    # hooks on act see GELU(fc1) at every block position
    fc1, act, fc2 = m.mlp_blocks()[2]; seen = {}
    h1 = fc1.register_forward_hook(lambda mod, a, o: seen.__setitem__("fc1", o)); h2 = act.register_forward_hook(lambda mod, a, o: seen.__setitem__("act", o))
    m.logits(tokens, labels); h1.remove(); h2.remove()
    assert seen["act"].shape == (3, 66, 256) and torch.allclose(seen["act"], F.gelu(seen["fc1"]))
    assert len(m.mlp_blocks()) == 6 and m.unit_groups() == [(2, 66)]
    assert m.prefix_lengths()[0] == 0 and m.prefix_lengths() == sorted(set(m.prefix_lengths())) and max(m.prefix_lengths()) < 64
    b, e = m.score_range(); assert 0 < b < e == 64
    # generation: seeded, prefix forced, greedy equals argmax of teacher forcing
    g1 = m.generate(labels, prefix_BL=tokens, n_prefix=5, cfg=2.0, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(0))
    g2 = m.generate(labels, prefix_BL=tokens, n_prefix=5, cfg=2.0, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g1, g2) and torch.equal(g1[:, :5], tokens[:, :5])
    gg = m.generate(labels, greedy=True)
    assert torch.equal(m.logits(gg, labels).argmax(-1), gg)
    gp = m.generate(labels, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(0)); assert gp.shape == (3, 64)
    with pytest.raises(ValueError): m.generate(labels, n_prefix=3)
    with pytest.raises(ValueError): m.logits(tokens, torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError): m.tokenize(torch.rand(1, 3, 32, 32))

def test_unknown_preset():
    with pytest.raises(ValueError, match="preset"): rar_config("rar_huge")

def test_generation_check_follows_the_json(rar_fx):
    "The check runs the call the JSON records: another seed and cache setting (the ids do not depend on them) pass; a JSON "
    "that records another guidance scale or power than its outputs were made with fails."
    model, S, J = rar_fx
    seed = J["seeds"]["gen_seed"]
    other = edited(edited(J, '"gen_seed": %d' % seed, '"gen_seed": %d' % (seed + 8)), "kv_cache=True", "kv_cache=False")
    test_rar_generation((model, S, other), "cfg"); test_rar_generation((model, S, other), "nocfg")
    kw = fixture_call(J, "generate", "gen.cfg.ids_BN")
    for k in ("guidance_scale", "guidance_scale_pow"):
        old, new = f"{k}={kw[k]!r},", f"{k}={kw[k] + 1.5!r},"
        wrong = edited(J, old, new)
        with pytest.raises(AssertionError): test_rar_generation((model, S, wrong), "cfg")
