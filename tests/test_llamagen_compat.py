"LlamaGen (c2i GPT and VQ tokenizer) against the official code's fixtures (MEMLOC_FIXTURES, default ../shared/fixtures)."
import argparse, inspect, json, re
from dataclasses import asdict

import pytest
from fixture_json import edited
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from memloc.checkpoints import CheckpointError, checkpoint_family, load_strict, read_state_dict
from memloc.llamagen import (GPTConfig, LlamaGen, LlamaGenModel, VQConfig, VQModel, build_model, guided_at, llamagen_config,
                             llamagen_generate, load_llamagen, precompute_freqs_cis_2d, read_released)
from memloc.fixtures import fixture_call, fixtures_dir, load_fixture

torch.set_num_threads(1)
FX = fixtures_dir()
ATOL = 2e-5          # the fixtures README: float tensors (GPT outputs, VQ latents)
ATOL_IMG = 5e-5      # the fixtures README: decoded images (|x| up to about 5, conv paths)

def _need(name):
    p = FX / name
    if not p.exists(): pytest.skip(f"fixture {p} not found (set MEMLOC_FIXTURES)")
    return p

def _strip(sd, prefix): return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
def _close(a, b, atol=ATOL, msg=None): torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=msg)

def _vq_cfg(J):
    a, ov = J["vq"]["constructor_args"], J["vq"]["encoder_decoder_override"]
    return VQConfig(ch=ov["ch"], ch_mult=tuple(a["encoder_ch_mult"]), num_res_blocks=ov["num_res_blocks"], z_channels=a["z_channels"],
                    codebook_size=a["codebook_size"], codebook_embed_dim=a["codebook_embed_dim"],
                    show_usage=a["codebook_show_usage"], image_size=J["vq"]["image_size"][0])

def _gpt_cfg(args): return GPTConfig(**{k: args[k] for k in GPTConfig.__dataclass_fields__ if k in args})

@pytest.fixture(scope="module")
def fx():
    "(adapter holding the fixture's VQ and GPT, the fixture tensors, the JSON)."
    _need("llamagen_tiny.safetensors"); S, J = load_fixture("llamagen_tiny", FX)
    cfg = dict(llamagen_config("mini"), name="llamagen_tiny", tokenizer=asdict(_vq_cfg(J)), generator=asdict(_gpt_cfg(J["gpt"]["constructor_args"])))
    m = LlamaGenModel(cfg)
    load_strict(m.tokenizer, _strip(S, "vq."), "llamagen_vq"); load_strict(m.generator, _strip(S, "gpt."), "llamagen")
    return m.eval(), S, J

def _gen_cases():
    "The fixture's generation runs (gen.{case}.*), read at collection."
    p = FX / "llamagen_tiny.json"
    if not p.exists(): return ["missing"]
    return sorted({t["name"].split(".")[1] for t in json.loads(p.read_text())["tensors"] if t["name"].startswith("gen.")})

def _gen_call(J, case):
    "The official generate() call that made gen.{case}.*: ((cfg_scale, cfg_interval), sampling keywords, new tokens)."
    kw = fixture_call(J, "generate", f"gen.{case}.ids_BN")
    if kw["top_k"] != 1 or not kw["sample_logits"]: pytest.skip(f"the fixture samples ({kw}): its ids follow the official RNG stream")
    line = next(s for s in J["call_sequence"] if "generate(gpt" in s)
    n_new = int(re.search(r"generate\(gpt, labels, (\d+)", line).group(1))
    return (kw["cfg_scale"], kw["cfg_interval"]), {k: kw[k] for k in ("temperature", "top_k", "top_p")}, n_new

# ---------------------------------------------------------------- full-size key specs
def _spec_models():
    p = FX / "llamagen_state_dict_spec.json"
    return json.loads(p.read_text())["models"] if p.exists() else {}

def _hard_coded(spec, key):
    return int(re.search(rf"\b{key}=(\d+)", spec["hard_coded"]["encoder"]).group(1))

@pytest.mark.parametrize("name", sorted(_spec_models()) or ["missing"])
def test_state_dict_spec(name):
    spec = json.loads(_need("llamagen_state_dict_spec.json").read_text())["models"][name]
    a = spec["constructor_args"]
    with torch.device("meta"):
        if spec["class_name"] == "VQModel":
            model = VQModel(VQConfig(ch=_hard_coded(spec, "ch"), ch_mult=tuple(a["encoder_ch_mult"]), num_res_blocks=_hard_coded(spec, "num_res_blocks"),
                                     z_channels=a["z_channels"], codebook_size=a["codebook_size"], codebook_embed_dim=a["codebook_embed_dim"],
                                     show_usage=a["codebook_show_usage"]))
        else:
            model = LlamaGen(_gpt_cfg(a))
            d = spec["derived"]
            assert (model.cfg.head_dim, model.cfg.ffn_hidden) == (d["head_dim"], d["ffn_hidden"])
            assert model.cls_embedding.embedding_table.num_embeddings == d["cls_embedding_rows"]
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(r[0], r[1]) for r in spec["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == spec["total_parameters"]
    assert sum(b.numel() for b in model.buffers()) == spec["buffer_elements_in_state_dict"]

def test_released_presets_match_spec():
    models = json.loads(_need("llamagen_state_dict_spec.json").read_text())["models"]
    for name, spec in models.items():
        if not name.startswith("gpt"): continue
        for rel in spec["released_checkpoints"]:
            cfg = llamagen_config("llamagen_" + name[4:], image_size=rel["image_size"])
            with torch.device("meta"): m = build_model(cfg)
            a = spec["constructor_args"]
            assert all(cfg["generator"][k] == a[k] for k in ("dim", "n_layer", "n_head", "vocab_size", "num_classes", "class_dropout_prob"))
            assert m.seq_len == rel["block_size"] == rel["token_grid"][0] * rel["token_grid"][1]
            assert sum(p.numel() for p in m.generator.parameters()) == spec["total_parameters"]
            assert sum(p.numel() for p in m.tokenizer.parameters()) == models["vq_ds16_c2i"]["total_parameters"]
            assert m.tokenizer.state_dict().keys() == {r[0] for r in models["vq_ds16_c2i"]["state_dict"]}

# ---------------------------------------------------------------- VQ tokenizer
def test_vq_codes_and_images(fx):
    m, S, _ = fx
    vq, img = m.tokenizer, S["input.img_B3HW"]
    with torch.no_grad():
        _close(vq.encoder(img), S["enc.encoder_out_BZhw"])
        _close(vq.latent(img), S["enc.h_BChw"])
        quant, codes = vq.quantize(vq.latent(img))
        assert torch.equal(codes, S["enc.codes_BN"]) and torch.equal(vq.encode(img), codes)
        _close(quant, S["enc.quant_BChw"])
        _close(vq.quantize.lookup(codes), S["dec.zq_BChw"])
        _close(vq.decode_code(codes), S["dec.img_from_codes_B3HW"], ATOL_IMG)
        _close(vq.decode(S["enc.quant_BChw"]), S["dec.img_from_quant_B3HW"], ATOL_IMG)
    assert torch.equal(m.tokenize((img + 1) / 2), S["enc.codes_BN"])          # the adapter takes [0, 1]
    _close(m.decode(codes), (S["dec.img_from_codes_B3HW"].clamp(-1, 1) + 1) / 2, ATOL_IMG)

# ---------------------------------------------------------------- GPT teacher forcing
def test_rope(fx):
    m, S, J = fx
    g = m.generator
    fc = precompute_freqs_cis_2d(J["gpt"]["derived"]["grid_size"], g.cfg.head_dim, g.cfg.rope_base, g.cfg.cls_token_num)
    assert list(fc.shape) == J["gpt"]["derived"]["freqs_cis_shape"]
    torch.testing.assert_close(fc, S["rope.freqs_cis_TD2"], atol=0, rtol=0)
    torch.testing.assert_close(g.rope("cpu"), S["rope.freqs_cis_TD2"], atol=0, rtol=0)

def test_teacher_forced(fx):
    m, S, _ = fx
    g, got = m.generator, {}
    put = lambda k: (lambda mod, a, o: got.__setitem__(k, (o[0] if isinstance(o, tuple) else o).clone()))
    hooks = [g.layers[0].register_forward_pre_hook(lambda mod, a: got.__setitem__("h_in_BTC", a[0].clone())),
             g.norm.register_forward_hook(put("norm_out_BTC"))]
    for i, l in enumerate(g.layers):
        ff = l.feed_forward
        hooks += [l.attention.register_forward_hook(put(f"layers.{i}.attention_out_BTC")),
                  ff.w1.register_forward_hook(put(f"layers.{i}.feed_forward.w1_out_BTF")),
                  ff.w3.register_forward_hook(put(f"layers.{i}.feed_forward.w3_out_BTF")),
                  ff.act.register_forward_hook(put(f"layers.{i}.feed_forward.w2_in_BTF")),   # the unit h
                  ff.register_forward_hook(put(f"layers.{i}.feed_forward.out_BTC")),
                  l.register_forward_hook(put(f"layers.{i}.out_BTC"))]
    with torch.no_grad(): logits, _ = g(S["enc.codes_BN"], S["input.labels_B"])
    for h in hooks: h.remove()
    _close(logits, S["tf.logits_BTV"])
    keys = [k for k in S if k.startswith("tf.") and k != "tf.logits_BTV"]
    assert len(keys) == 2 + 6 * len(g.layers)
    for k in keys: _close(got[k[3:]], S[k], msg=k)
    _close(m.logits(S["enc.codes_BN"], S["input.labels_B"]), S["tf.logits_BTV"][:, :m.seq_len])

def test_training_path(fx):
    m, S, _ = fx
    codes, labels = S["enc.codes_BN"], S["input.labels_B"]
    with torch.no_grad(): logits, _ = m.generator(codes[:, :-1], labels)
    _close(logits, S["tf_train.logits_BNV"])
    _close(m.loss(codes, labels), S["tf_train.loss"])

# ---------------------------------------------------------------- generation
@pytest.mark.parametrize("case", _gen_cases())
def test_generation(fx, case):
    m, S, J = fx
    (scale, interval), kw, n_new = _gen_call(J, case)
    labels, g = S["input.labels_B"], m.generator
    assert n_new == m.seq_len
    ids, raw, used = llamagen_generate(g, labels, scale, interval, greedy=True, return_logits=True)
    assert torch.equal(ids, S[f"gen.{case}.ids_BN"])
    ref_raw = S[f"gen.{case}.raw_logits_BNV"] if f"gen.{case}.raw_logits_BNV" in S else S[f"gen.{case}.raw_logits_2BNV"]
    _close(raw, ref_raw)
    _close(used, S.get(f"gen.{case}.guided_logits_BNV", ref_raw))    # unguided: the sampler's input is the raw logits
    applied = J["extra"].get(f"gen_{case}_cfg_applied_per_token")
    if applied is not None: assert [guided_at(t, scale, interval) for t in range(m.seq_len)] == applied
    for seed in (J["seeds"]["gen_seed"], J["seeds"]["alt_gen_seed_for_independence_check"]):   # the official sampling path
        for cache in (True, False):
            got = llamagen_generate(g, labels, scale, interval, generator=torch.Generator().manual_seed(seed), kv_cache=cache, **kw)
            assert torch.equal(got, ids)
    assert torch.equal(m.generate(labels, cfg=scale, cfg_interval=interval, greedy=True), ids)
    if f"gen.{case}.img_B3HW" in S:
        with torch.no_grad(): _close(m.tokenizer.decode_code(ids), S[f"gen.{case}.img_B3HW"], ATOL_IMG)

@pytest.mark.parametrize("k", [1, 5, -1])
def test_prefix_forced(fx, k):
    "Greedy continuation of the first k greedy tokens is the greedy sequence itself; a wrong prefix stays forced."
    m, S, J = fx
    (scale, interval) = _gen_call(J, "cfg")[0]
    ref, labels = S["gen.cfg.ids_BN"], S["input.labels_B"]; k = k % m.seq_len
    assert torch.equal(m.generate(labels, prefix_BL=ref, n_prefix=k, cfg=scale, cfg_interval=interval, greedy=True), ref)
    wrong = (ref + 1) % m.vocab_size
    out = m.generate(labels, prefix_BL=wrong, n_prefix=k, cfg=scale, greedy=True)
    assert torch.equal(out[:, :k], wrong[:, :k])
    assert torch.equal(m.generate(labels, prefix_BL=wrong, n_prefix=k, greedy=True),
                       m.generate(labels, prefix_BL=wrong, n_prefix=k, greedy=True, kv_cache=False))

# ---------------------------------------------------------------- released files and loading errors
def test_released_file_layouts(tmp_path, fx):
    m = fx[0]
    sd = {k: v.clone() for k, v in m.generator.state_dict().items()}
    ema = {k: v + 1 for k, v in sd.items()}
    torch.save({"model": sd, "ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95)}]},
                "steps": 7, "args": argparse.Namespace(gpt_model="GPT-B", image_size=256)}, tmp_path / "ddp.pt")
    torch.save({**sd, "freqs_cis": m.generator.rope("cpu")}, tmp_path / "fsdp.pth")
    torch.save({"module": {k: v.bfloat16() for k, v in sd.items()}}, tmp_path / "bf16.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "st.safetensors"))
    for f in ("ddp.pt", "fsdp.pth", "bf16.pt", "st.safetensors"):
        got = read_released(tmp_path / f)
        assert sorted(got) == sorted(sd) and all(torch.equal(got[k].float(), sd[k].bfloat16().float() if f == "bf16.pt" else sd[k]) for k in sd)
    assert all(torch.equal(read_released(tmp_path / "ddp.pt", ema=True)[k], ema[k]) for k in sd)
    fresh = load_strict(LlamaGen(m.generator.cfg), read_released(tmp_path / "fsdp.pth"), "llamagen")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), sd.values()))
    trunc = tmp_path / "t.pt"; trunc.write_bytes((tmp_path / "ddp.pt").read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated"): read_released(trunc)
    txt = tmp_path / "notes.pt"; txt.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint"): read_released(txt)
    torch.save({"model": [1, 2], "steps": 3}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint"): read_released(tmp_path / "odd.pt")
    with pytest.raises(FileNotFoundError): read_released(tmp_path / "nope.pt")
    bad = dict(sd); bad.pop("norm.weight"); bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e: load_strict(LlamaGen(m.generator.cfg), bad, "llamagen")
    assert "norm.weight" in str(e.value) and "extra.weight" in str(e.value)

def test_family_detection(fx):
    m, S, _ = fx
    gpt, vq = read_state_dict(_need("llamagen_tiny.safetensors"), "gpt."), read_state_dict(_need("llamagen_tiny.safetensors"), "vq.")
    assert (checkpoint_family(gpt), checkpoint_family(vq)) == ("llamagen", "llamagen_vq")
    assert checkpoint_family(build_model("mini").tokenizer.state_dict()) == "llamagen_vq"    # no usage buffer in the mini
    with pytest.raises(CheckpointError, match="LlamaGen generator"): load_strict(VQModel(m.tokenizer.cfg), gpt, "llamagen_vq")
    with pytest.raises(CheckpointError, match="LlamaGen tokenizer"): load_strict(LlamaGen(m.generator.cfg), vq, "llamagen")
    vqvae = read_state_dict(_need("var_tiny.safetensors"), prefix="vqvae.")
    with pytest.raises(CheckpointError, match="VAR"): load_strict(VQModel(m.tokenizer.cfg), vqvae, "llamagen_vq")
    with pytest.raises(CheckpointError, match="LlamaGen"): load_strict(torch.nn.Linear(1, 1), vq, "vqvae")
    rar = read_state_dict(_need("rar_tiny.safetensors"), prefix="rar.")
    with pytest.raises(CheckpointError, match="RAR"): load_strict(LlamaGen(m.generator.cfg), rar, "llamagen")

def test_load_llamagen_roundtrip(tmp_path):
    m = build_model("mini")
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    torch.save({"model": m.generator.state_dict(), "steps": 1, "args": argparse.Namespace(x=1)}, tmp_path / "gpt.pt")
    save_file({k: v.contiguous() for k, v in m.tokenizer.state_dict().items()}, str(tmp_path / "vq.safetensors"))
    m2 = load_llamagen(tmp_path / "gpt.pt", tmp_path / "vq.safetensors", m.config)
    tokens = torch.randint(0, m.vocab_size, (2, m.seq_len), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.logits(tokens, torch.tensor([0, 9])), m2.logits(tokens, torch.tensor([0, 9])))
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.tokenize(img), m2.tokenize(img))
    with pytest.raises(CheckpointError, match="tokenizer"): load_llamagen(tmp_path / "vq.safetensors", tmp_path / "vq.safetensors", m.config)

# ---------------------------------------------------------------- adapter
def test_adapter_matches_rar_interface():
    "The methods every stage calls take RAR's arguments, in RAR's order, with RAR's defaults."
    from memloc.rar import RARModel
    for name in ("tokenize", "decode", "reconstruct", "logits", "loss", "generate", "mlp_blocks", "unit_groups", "prefix_lengths", "score_range"):
        ours, theirs = inspect.signature(getattr(LlamaGenModel, name)).parameters, inspect.signature(getattr(RARModel, name)).parameters
        own = {"generate": {"cfg_interval"}}.get(name, set())
        rar_only = {"generate": {"cfg_pow"}}.get(name, set())
        assert [(p.name, p.default) for p in ours.values() if p.name not in own] == \
               [(p.name, p.default) for p in theirs.values() if p.name not in rar_only], name
    m = build_model("mini")
    assert all(hasattr(m, a) for a in ("family", "num_classes", "vocab_size", "seq_len", "image_size", "device", "config"))

def test_adapter_mini():
    m = build_model("mini")
    assert m.family == "llamagen" and (m.seq_len, m.vocab_size, m.image_size, m.num_classes) == (64, 256, 16, 10)
    m2 = build_model(json.loads(json.dumps(m.config)))            # the config survives JSON
    m2.load_state_dict(m.state_dict())
    img = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    tokens, labels = m.tokenize(img), torch.tensor([0, 4, 9])
    assert tokens.shape == (3, 64) and tokens.dtype == torch.long and torch.equal(tokens, m2.tokenize(img))
    rec = m.reconstruct(img); assert rec.shape == img.shape and rec.min() >= 0 and rec.max() <= 1
    with torch.no_grad():
        for p in m.generator.parameters(): p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.05)
    lg = m.logits(tokens, labels); assert lg.shape == (3, 64, 256)
    torch.testing.assert_close(m.loss(tokens, labels), F.cross_entropy(lg.reshape(-1, 256), tokens.reshape(-1)), atol=1e-5, rtol=0)
    l1 = m.loss(tokens, labels, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    l2 = m.loss(tokens, labels, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(l1, l2)
    with pytest.raises(ValueError, match="raster"): m.loss(tokens, labels, random_ratio=0.5)
    assert len(m.mlp_blocks()) == 6 and m.unit_groups() == [(1, 65)]
    from memloc.rar import build_model as rar_model
    r = rar_model("mini")
    assert (m.prefix_lengths(), m.score_range()) == (r.prefix_lengths(), r.score_range())
    g1 = m.generate(labels, prefix_BL=tokens, n_prefix=5, cfg=2.0, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(0))
    g2 = m.generate(labels, prefix_BL=tokens, n_prefix=5, cfg=2.0, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g1, g2) and torch.equal(g1[:, :5], tokens[:, :5])
    gg = m.generate(labels, greedy=True)
    assert torch.equal(m.logits(gg, labels).argmax(-1), gg)
    gp = m.generate(labels, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(0)); assert gp.shape == (3, 64)
    with pytest.raises(ValueError): m.generate(labels, n_prefix=3)
    with pytest.raises(ValueError): m.logits(tokens, torch.tensor([0, 4, 10]))
    with pytest.raises(ValueError): m.logits(tokens[:, :10], labels)
    with pytest.raises(ValueError): m.tokenize(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="preset"): llamagen_config("llamagen_huge")
    with pytest.raises(ValueError, match="not a LlamaGen"): build_model({"family": "rar"})

def test_unit_and_intervention():
    "The unit UnitMem reads is |h| = |silu(w1 x) * w3 x|; scaling its w3 row (the default) halves h exactly; w1 is an option."
    from memloc.intervention import scale_units
    from memloc.unitmem import UnitCapture
    m = build_model("mini")
    with torch.no_grad():
        for p in m.generator.parameters(): p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    tokens, labels = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2])
    ff, seen = m.generator.layers[3].feed_forward, {}
    hs = [ff.w1.register_forward_hook(lambda mod, a, o: seen.__setitem__("w1", o)), ff.w3.register_forward_hook(lambda mod, a, o: seen.__setitem__("w3", o))]
    cap = UnitCapture(m)
    with cap: m.logits(tokens, labels)
    for h in hs: h.remove()
    v = cap.values()
    _close(v[:, 0, 3], (F.silu(seen["w1"]) * seen["w3"])[:, 1:65].abs().mean(1), 1e-6)
    units = [[3, 5], [3, 9], [0, 0]]
    before = {k: p.clone() for k, p in m.state_dict().items()}
    with scale_units(m, units, 0.5):
        with cap: m.logits(tokens, labels)
        w3 = cap.values()
        lg_w3 = m.logits(tokens, labels)
    assert all(torch.equal(p, before[k]) for k, p in m.state_dict().items())        # restored bit for bit
    assert torch.equal(w3[:, 0, 0, 0], v[:, 0, 0, 0] * 0.5) and torch.equal(w3[:, 0, 0, 1:], v[:, 0, 0, 1:])
    with scale_units(m, units, 0.5, target="fc2"): lg_w2 = m.logits(tokens, labels)
    _close(lg_w2, lg_w3, 1e-5)                                                         # w2 columns: the same effect
    m.unit_row = "w1"
    assert m.mlp_blocks()[0][0] is m.generator.layers[0].feed_forward.w1
    with scale_units(m, units, 0.5):
        with cap: m.logits(tokens, labels)
        w1 = cap.values()
    assert not torch.allclose(w1[:, 0, 0, 0], v[:, 0, 0, 0] * 0.5)
    with pytest.raises(ValueError, match="unit_row"): m.unit_row = "w2"

def test_family_module_registered():
    import memloc.llamagen
    from memloc.testbed import family_module
    assert family_module("llamagen") is memloc.llamagen

def test_stages_run_unchanged():
    "Extraction's cached and uncached greedy generation agree at every prefix length, and UnitMem measures every unit."
    from memloc.extraction import greedy_from_prefix
    from memloc.unitmem import measure
    torch.manual_seed(0)
    m = build_model("mini")
    with torch.no_grad():
        for p in m.parameters(): p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    img, lab = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 2])
    tok = m.tokenize(img)
    for pre in m.prefix_lengths():
        assert torch.equal(greedy_from_prefix(m, tok, lab, pre), greedy_from_prefix(m, tok, lab, pre, cached=False)), pre
    st = measure(m, (img, lab), augmentations=1, progress=False)
    assert st.shape == (1, 6, 256) and st.count == 4

def test_generation_check_follows_the_json(fx):
    "The check runs the calls the JSON records: another seed (the ids do not depend on it) passes; a JSON that records another "
    "guidance scale or interval than its outputs were made with fails."
    m, S, J = fx
    seed = J["seeds"]["gen_seed"]
    test_generation((m, S, edited(J, '"gen_seed": %d' % seed, '"gen_seed": %d' % (seed + 8))), "cfg")
    (scale, _), _, _ = _gen_call(J, "cfg")
    (_, interval), _, _ = _gen_call(J, "cfgint")
    for case, old, new in (("cfg", f"same with cfg_scale={scale!r}", f"same with cfg_scale={scale + 2.0!r}"),
                           ("cfgint", f"cfg_interval={interval!r}", f"cfg_interval={interval + 4!r}")):
        wrong = edited(J, old, new)
        with pytest.raises(AssertionError): test_generation((m, S, wrong), case)
