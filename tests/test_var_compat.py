"Compatibility of memloc.var with the official VAR code, via the fixtures in $MEMLOC_FIXTURES."
import json

import pytest
from fixture_json import edited
import torch

from memloc.fixtures import fixture_call, fixtures_dir
from memloc.var import (VAR, VQVAE, CheckpointError, VARConfig, VQVAEConfig, build_model, fixture_model, read_state_dict, load_strict,
                        phi_index, preset_config)

ATOL = 2e-5
FIX = fixtures_dir()
needs_fixtures = pytest.mark.skipif(not (FIX / "var_tiny.safetensors").is_file(), reason=f"no VAR fixtures in {FIX}")


def _spec():
    p = FIX / "var_state_dict_spec.json"
    return json.loads(p.read_text())["models"] if p.is_file() else {}


def _build_meta(name, m):
    "Our model for a spec entry, built on the meta device from its constructor arguments."
    a = m["constructor_args"]
    if name == "vqvae":
        d = m["derived"]
        cfg = VQVAEConfig(vocab_size=a["vocab_size"], z_channels=a["z_channels"], ch=a["ch"], ch_mult=tuple(d["ch_mult"]),
                          num_res_blocks=d["num_res_blocks"], quant_resi=a["quant_resi"], share_quant_resi=a["share_quant_resi"],
                          patch_nums=tuple(a["v_patch_nums"]))
        with torch.device("meta"): return VQVAE(cfg)
    d = m["derived"]
    cfg = VARConfig(vocab_size=d["V"], Cvae=d["Cvae"], num_classes=a["num_classes"], depth=a["depth"], embed_dim=a["embed_dim"],
                    num_heads=a["num_heads"], mlp_ratio=a["mlp_ratio"], norm_eps=a["norm_eps"], attn_l2_norm=a["attn_l2_norm"],
                    patch_nums=tuple(a["patch_nums"]), drop_path_rate=a["drop_path_rate"], cond_drop_rate=a["cond_drop_rate"])
    with torch.device("meta"): return VAR(cfg)


@needs_fixtures
@pytest.mark.parametrize("name", sorted(_spec()) or ["missing"])
def test_state_dict_matches_spec(name):
    m = _spec()[name]
    model = _build_meta(name, m)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(r[0], r[1]) for r in m["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == m["total_parameters"]
    params = {n for n, _ in model.named_parameters()}
    assert {r[0] for r in m["state_dict"] if r[3] == "parameter"} == params
    if name == "vqvae":
        a = m["constructor_args"]; S = len(a["v_patch_nums"])
        assert [phi_index(si, S, a["share_quant_resi"]) for si in range(S)] == m["derived"]["phi_index_per_scale"]


@needs_fixtures
def test_presets_match_released_counts():
    counts = {name[4:]: m["total_parameters"] for name, m in _spec().items() if name.startswith("var_")}
    assert counts
    for name, n in counts.items():
        cfg = preset_config(name)
        with torch.device("meta"): v = VAR(VARConfig(**{**cfg["var"], "patch_nums": tuple(cfg["var"]["patch_nums"])}))
        assert sum(p.numel() for p in v.parameters()) == n


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return fixture_model("var_tiny")


@needs_fixtures
def test_tiny_latent_and_adapter_tokens(tiny):
    "The encoder's latent, and the adapter's [0, 1] entry point (01_var asserts the per-scale ids and f_hat)."
    model, fx, _ = tiny
    with torch.no_grad():
        f = model.tokenizer.img_to_f(fx["input.img_B3HW"])
        tok = model.tokenize(fx["input.img_B3HW"].add(1).div(2))
    assert torch.allclose(f, fx["enc.f_BChw"], atol=ATOL)
    assert torch.equal(tok, fx["enc.idx_BL"])


@needs_fixtures
def test_tiny_teacher_forcing_and_hooks(tiny):
    "Block inputs and outputs and the head norm (01_var asserts the teacher-forcing input, fc1, act and the logits)."
    model, fx, _ = tiny
    tok, lab = fx["enc.idx_BL"], fx["input.label_B"]
    got = {}
    hooks = [mod.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o))
             for n, mod in model.generator.named_modules() if n.endswith(("ffn.fc1", "ffn.act", "head_nm")) or n.count(".") == 1 and n.startswith("blocks.")]
    hooks.append(model.generator.blocks[0].register_forward_pre_hook(lambda m, a: got.__setitem__("in", a[0])))
    with torch.no_grad(): model.logits(tok, lab)
    for h in hooks: h.remove()
    assert torch.allclose(got["in"], fx["tf.x_BLC_in"], atol=ATOL)
    n_blocks = len(model.generator.blocks)
    assert len(model.mlp_blocks()) == n_blocks
    for i in range(n_blocks): assert torch.allclose(got[f"blocks.{i}"], fx[f"tf.blocks.{i}.out"], atol=ATOL)
    assert torch.allclose(got["head_nm"], fx["tf.head_nm_out"], atol=ATOL)
    # the tanh form matters: exact GELU would be off by more than the tolerance
    assert (torch.nn.functional.gelu(got["blocks.0.ffn.fc1"]) - fx["tf.blocks.0.ffn.act_out"]).abs().max() > ATOL


@needs_fixtures
def test_tiny_official_sampling_call(tiny):
    "The official sampling call (its cfg, top-k, top-p and seed) gives the official tokens (01_var asserts the greedy path's "
    "tokens, guided logits and images)."
    model, fx, meta = tiny
    ar = fixture_call(meta, "autoregressive_infer_cfg")                 # the official call that made ar.*
    if ar["top_k"] != 1 or ar.get("more_smooth"): pytest.skip(f"the fixture samples ({ar}): its tokens follow the official RNG stream")
    with torch.no_grad():
        ids_k1 = model.generate(fx["input.label_B"], cfg=ar["cfg"], top_k=ar["top_k"], top_p=ar["top_p"],
                                generator=torch.Generator().manual_seed(ar["g_seed"]))
    assert torch.equal(ids_k1, fx["ar.idx_BL"])


@needs_fixtures
def test_kv_cache_equals_masked_forward_and_prefix(tiny):
    model, fx, meta = tiny
    be = meta["var"]["begin_ends"]                                      # the fixture's scale layout
    lab, tok = fx["input.label_B"], fx["enc.idx_BL"]
    with torch.no_grad():
        ids, glog = model.generate(lab, cfg=0.0, greedy=True, return_logits=True)
        tf = model.logits(ids, lab)
        assert torch.allclose(glog, tf, atol=ATOL)          # cached step-by-step == one masked pass
        for n in model.prefix_lengths()[1:]:
            out, lg = model.generate(lab, prefix_BL=tok, n_prefix=n, greedy=True, return_logits=True)
            assert torch.equal(out[:, :n], tok[:, :n])
            b = n                                            # logits after the prefix are the teacher-forced ones of `out`
            assert torch.allclose(lg[:, b:], model.logits(out, lab)[:, b:], atol=ATOL)
    with pytest.raises(ValueError, match="scale boundary"): model.generate(lab, prefix_BL=tok, n_prefix=be[-1][0] + 1)
    assert model.prefix_lengths() == [0] + [e for _, e in be[:4]] and model.score_range() == tuple(be[-1])


def test_mini_preset_generic_sizes():
    torch.manual_seed(0)
    m = build_model(preset_config("mini")).eval()
    m2 = build_model(m.config)
    assert m2.config == m.config and m.seq_len == sum(p * p for p in m.patch_nums)
    assert build_model(json.loads(json.dumps(m.config))).config == m.config       # survives a JSON manifest
    img = torch.rand(2, 3, m.image_size, m.image_size)
    with torch.no_grad():
        t = m.tokenize(img)
        assert t.shape == (2, m.seq_len) and t.max() < m.vocab_size
        assert m.decode(t).shape == img.shape
        lab = torch.tensor([1, 7])
        ids, lg = m.generate(lab, cfg=2.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(0), return_logits=True)
        ids2 = m.generate(lab, cfg=2.0, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(0))
        assert torch.equal(ids, ids2) and lg.shape == (2, m.seq_len, m.vocab_size)
        # guidance ramp: first scale unguided, so its logits equal the teacher-forced ones
        assert torch.allclose(lg[:, :1], m.logits(ids, lab)[:, :1], atol=ATOL)
    loss = m.loss(t, lab, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and m.generator.blocks[0].ffn.fc1.weight.grad is not None


# ---- loading errors -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_var_pth(tiny, tmp_path_factory):
    p = tmp_path_factory.mktemp("ck") / "var.pth"
    torch.save(tiny[0].generator.state_dict(), p)
    return p


@needs_fixtures
def test_load_roundtrip_pth_and_safetensors(tiny, tiny_var_pth, tmp_path):
    from safetensors.torch import save_file
    model = build_model(tiny[0].config)
    model.load_checkpoints(var_path=tiny_var_pth)
    st = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in tiny[0].tokenizer.state_dict().items()}, str(st))
    model.load_checkpoints(vae_path=st)
    for a, b in zip(model.state_dict().values(), tiny[0].state_dict().values()): assert torch.equal(a, b)


@needs_fixtures
def test_load_truncated(tiny_var_pth, tmp_path):
    bad = tmp_path / "trunc.pth"
    bad.write_bytes(tiny_var_pth.read_bytes()[: tiny_var_pth.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"): read_state_dict(bad)
    bad_st = tmp_path / "trunc.safetensors"
    bad_st.write_bytes((FIX / "var_tiny.safetensors").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="safetensors"): read_state_dict(bad_st)


def test_load_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.pth"; p.write_text("hello, not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint"): read_state_dict(p)
    q = tmp_path / "list.pth"; torch.save([1, 2, 3], q)
    with pytest.raises(CheckpointError, match="not a checkpoint"): read_state_dict(q)


@needs_fixtures
def test_load_wrong_family(tiny, tmp_path):
    from safetensors.torch import load_file
    rar = {k[4:]: v for k, v in load_file(str(FIX / "rar_tiny.safetensors")).items() if k.startswith("rar.")}
    p = tmp_path / "rar.pth"; torch.save(rar, p)
    model = build_model(tiny[0].config)
    with pytest.raises(CheckpointError, match="RAR generator checkpoint"): model.load_checkpoints(var_path=p)
    with pytest.raises(CheckpointError, match=r"VAR tokenizer \(VQVAE\) checkpoint"):
        load_strict(model.generator, tiny[0].tokenizer.state_dict(), "var")


@needs_fixtures
def test_load_missing_and_misshaped(tiny):
    model = build_model(tiny[0].config)
    sd = dict(tiny[0].generator.state_dict())
    sd.pop("blocks.1.ffn.fc1.bias"); sd["head.weight"] = sd["head.weight"][:-1]; sd["extra.weight"] = torch.zeros(1)
    before = model.generator.head.bias.clone()
    with pytest.raises(CheckpointError) as e: load_strict(model.generator, sd, "var")
    msg = str(e.value)
    assert "missing: blocks.1.ffn.fc1.bias" in msg and "unexpected: extra.weight" in msg and "mis-shaped: head.weight" in msg
    assert torch.equal(model.generator.head.bias, before)           # nothing copied


@needs_fixtures
def test_load_pretrained_meta_build(tiny, tmp_path):
    from memloc.var import load_pretrained
    model, fx, _ = tiny
    torch.save(model.tokenizer.state_dict(), tmp_path / "vae.pth"); torch.save(model.generator.state_dict(), tmp_path / "var.pth")
    m = load_pretrained({"tokenizer": tmp_path / "vae.pth", "generator": tmp_path / "var.pth"}, model.config)
    with torch.no_grad(): lg = m.logits(fx["enc.idx_BL"], fx["input.label_B"])
    assert torch.allclose(lg, fx["tf.logits_BLV"], atol=ATOL)
    with pytest.raises(CheckpointError, match=r"VAR tokenizer \(VQVAE\) checkpoint"): load_pretrained({"tokenizer": tmp_path / "vae.pth", "generator": tmp_path / "vae.pth"}, model.config)


@needs_fixtures
def test_bad_inputs_are_named(tiny):
    model, fx, _ = tiny
    with pytest.raises(ValueError, match=r"\[0, 1\]"): model.tokenize(fx["input.img_B3HW"] * 255)
    with pytest.raises(ValueError, match="tokens must be"): model.logits(fx["enc.idx_BL"][:, :10], fx["input.label_B"])
    with pytest.raises(ValueError, match="token ids"): model.logits(fx["enc.idx_BL"] + 1000, fx["input.label_B"])
    with pytest.raises(ValueError, match="labels must be in"): model.generate(torch.tensor([0, 99]))


def test_tokenizer_is_exact_under_bf16_autocast():
    "The VQ-VAE runs in float32 even inside a bf16 autocast region, so tokens and decodes do not change."
    torch.manual_seed(0)
    model = build_model(preset_config("mini")).eval()
    img = torch.rand(2, 3, model.image_size, model.image_size)
    with torch.no_grad():
        tok = model.tokenize(img)
        x = model.var_input(tok)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            tok_bf = model.tokenize(img)
            x_bf = model.var_input(tok_bf)
            dec_bf = model.decode(tok_bf)
    assert torch.equal(tok, tok_bf)
    assert x_bf.dtype == torch.float32 and torch.equal(x, x_bf)
    assert dec_bf.dtype == torch.float32


@needs_fixtures
def test_sampling_check_follows_the_json(tiny):
    "The check runs the call the JSON records: another seed (the outputs do not depend on it) passes; a JSON that records "
    "another guidance scale than its outputs were made with fails."
    model, fx, meta = tiny
    ar = fixture_call(meta, "autoregressive_infer_cfg")
    test_tiny_official_sampling_call((model, fx, edited(meta, f"g_seed={ar['g_seed']},", f"g_seed={ar['g_seed'] + 11},")))
    wrong = edited(meta, f"cfg={ar['cfg']!r},", f"cfg={ar['cfg'] + 2.0!r},")
    with pytest.raises(AssertionError): test_tiny_official_sampling_call((model, fx, wrong))
