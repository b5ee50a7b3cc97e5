"Every family adapter keeps the contract of `memloc.family.FamilyAdapter`, and no module outside a family's own names a family."
import re
from pathlib import Path

import pytest
import torch

from memloc.family import FAMILIES, FamilyAdapter, family_module, model_family, released_models
from toy_adapter import ToyAdapter


def _mini(family):
    mod = family_module(family)
    torch.manual_seed(0)
    return mod.build_model(mod.mini_config()).eval()


def _lookup():
    from memloc.extraction import LookupModel
    g = torch.Generator().manual_seed(0)
    return LookupModel(torch.rand(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 2, 3]), num_classes=4)


ADAPTERS = {**{f: (lambda f=f: _mini(f)) for f in FAMILIES}, "toy": ToyAdapter, "lookup": _lookup}


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_adapter_contract(name):
    torch.manual_seed(0)
    m = ADAPTERS[name]()
    assert isinstance(m, FamilyAdapter), [k for k in dir(FamilyAdapter) if not k.startswith("_") and not hasattr(m, k)]
    assert isinstance(m.config, dict) and isinstance(m.family, str)
    assert m.device == torch.device("cpu")
    B, L, V, g = 2, m.seq_len, m.vocab_size, torch.Generator().manual_seed(0)
    img = torch.rand(B, 3, m.image_size, m.image_size, generator=g)
    labels = torch.tensor([0, 1])
    tok = m.tokenize(img)
    assert tok.shape == (B, L) and tok.dtype == torch.long and 0 <= tok.min() and tok.max() < V
    rec = m.decode(tok)
    assert rec.shape == img.shape and 0 <= rec.min() and rec.max() <= 1
    with torch.no_grad(): lg = m.logits(tok, labels)
    assert lg.shape == (B, L, V)
    loss = m.loss(tok, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    if any(p.requires_grad for p in m.parameters()):        # the lookup has no weights to train
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    steps = m.generation_steps()
    assert steps[0][0] == 0 and steps[-1][1] == L and all(a[1] == b[0] for a, b in zip(steps, steps[1:]))
    pre = m.prefix_lengths()
    assert pre[0] == 0 and pre == sorted(set(pre)) and pre[-1] < L
    assert m.headline_prefix() in pre
    n = max(p for p in pre if any(e == p for _, e in steps))   # a prefix that ends a generation step
    for kw in (dict(greedy=True), dict(greedy=True, prefix_BL=tok, n_prefix=n),
               dict(temperature=1.0, top_k=0, top_p=0.0, cfg=0.0, generator=torch.Generator().manual_seed(1))):
        out = m.generate(labels, **kw)
        assert out.shape == (B, L) and 0 <= out.min() and out.max() < V
        if kw.get("n_prefix"): assert torch.equal(out[:, :n].cpu(), tok[:, :n].cpu())
    assert torch.equal(m.generate(labels, greedy=True), m.generate(labels, greedy=True))   # greedy is deterministic
    b, e = m.score_range()
    assert 0 <= b < e <= L
    for fc1, unit, fc2 in m.mlp_blocks():
        assert isinstance(fc1, torch.nn.Linear) and isinstance(fc2, torch.nn.Linear) and isinstance(unit, torch.nn.Module)
        assert fc1.out_features == fc2.in_features
    groups = m.unit_groups()
    assert groups and all(0 <= gb < ge for gb, ge in groups)
    span = max(ge for _, ge in groups) - min(gb for gb, _ in groups)
    assert span == L   # the groups cover the L image tokens (offset by the family's lead tokens)


def test_released_models_name_their_family_and_presets():
    for name, r in released_models().items():
        assert model_family(name) == r.family
        mod = family_module(r.family)
        assert mod.preset_config(r.preset)["family"] == r.family
    with pytest.raises(ValueError, match="unknown model"): model_family("VAR-d99")


FAMILY_MODULES = {Path(p.replace("memloc.", "") + ".py") for p in FAMILIES.values()} | {Path("family.py"), Path("_modidx.py")}
BRANCH = re.compile(r"""[!=]=\s*["'](?:var|rar|llamagen)["']|["'](?:var|rar|llamagen)["']\s*[!=]=|\.family\s*[!=]=\s*["']"""
                    r"""|\bfamily\s*(?:not\s+)?in\s*\(\s*["']""")


def test_no_family_branches_outside_the_family_modules():
    root = Path(__file__).resolve().parents[1] / "memloc"
    hits = [f"{p.name}:{i}: {line.strip()}" for p in sorted(root.glob("*.py")) if p.relative_to(root) not in FAMILY_MODULES
            for i, line in enumerate(p.read_text().splitlines(), 1) if BRANCH.search(line)]
    assert not hits, "family-name branches outside the family modules:\n" + "\n".join(hits)


def test_the_branch_pattern_finds_branches():
    for line in ('if model.family == "var":', "x = 1 if fam != 'rar' else 2", 'if "llamagen" == f:', 'if family in ("var", "rar"):'):
        assert BRANCH.search(line), line
    assert not BRANCH.search('FAMILIES = {"var": "memloc.var"}')
