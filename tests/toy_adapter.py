"A tiny stand-in with the family adapter interface, so the UnitMem tests need no real model."
import torch
from torch import nn


class ToyAdapter(nn.Module):
    "Three MLP blocks (fc1, tanh-GELU, fc2); tokens are quantized 1x1, 2x2, 3x3 average pools (14 tokens, 3 groups)."
    def __init__(self, n_blocks=3, d=8, hidden=12, V=8, num_classes=10, seed=0, groups=((0, 1), (1, 5), (5, 14))):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.family, self.num_classes, self.vocab_size, self.seq_len, self.image_size = "toy", num_classes, V, 14, 8
        self.tok, self.cls = nn.Embedding(V, d), nn.Embedding(num_classes, d)
        self.fc1 = nn.ModuleList(nn.Linear(d, hidden) for _ in range(n_blocks))
        self.act = nn.ModuleList(nn.GELU(approximate="tanh") for _ in range(n_blocks))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, d) for _ in range(n_blocks))
        self.head = nn.Linear(d, V)
        with torch.no_grad():
            for p in self.parameters(): p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.pos = nn.Parameter(torch.randn(14, d, generator=g) * 0.5)
        self.groups = [tuple(x) for x in groups]
        self.config = dict(n_blocks=n_blocks, d=d, hidden=hidden, V=V, num_classes=num_classes, seed=seed, groups=self.groups)

    @property
    def device(self): return self.head.weight.device

    def mlp_blocks(self): return list(zip(self.fc1, self.act, self.fc2))
    def unit_groups(self): return self.groups

    def tokenize(self, img_B3HW):
        gr = img_B3HW.mean(1, keepdim=True)
        t = [nn.functional.adaptive_avg_pool2d(gr, s).flatten(1) for s in (1, 2, 3)]
        return (torch.cat(t, 1) * self.vocab_size).long().clamp(0, self.vocab_size - 1)

    def logits(self, tokens_BL, labels_B):
        x = self.tok(tokens_BL) + self.pos + self.cls(labels_B)[:, None]
        for fc1, act, fc2 in self.mlp_blocks(): x = x + fc2(act(fc1(x)))
        return self.head(x)

    def decode(self, tokens_BL):
        "The 3x3 tokens as grey levels, upsampled to the image size."
        g = (tokens_BL[:, 5:14].float() + 0.5) / self.vocab_size
        return nn.functional.interpolate(g.view(-1, 1, 3, 3), size=self.image_size, mode="nearest").expand(-1, 3, -1, -1)

    def loss(self, tokens_BL, labels_B, **_):
        return nn.functional.cross_entropy(self.logits(tokens_BL, labels_B).flatten(0, 1), tokens_BL.flatten())

    @torch.no_grad()
    def generate(self, labels_B, prefix_BL=None, n_prefix=0, cfg=0.0, temperature=1.0, top_k=0, top_p=0.0,
                 greedy=False, generator=None):
        "One group per step from teacher-forced logits (no guidance, top-k or top-p: a stand-in)."
        out = torch.zeros(len(labels_B), self.seq_len, dtype=torch.long, device=labels_B.device)
        if n_prefix: out[:, :n_prefix] = prefix_BL[:, :n_prefix]
        for b, e in self.generation_steps():
            if e <= n_prefix: continue
            lg = self.logits(out, labels_B)[:, b:e]
            out[:, b:e] = lg.argmax(-1) if greedy else torch.multinomial(
                (lg / temperature).softmax(-1).flatten(0, 1), 1, generator=generator).view(len(labels_B), e - b)
        return out

    def prefix_lengths(self): return [0] + [e for _, e in self.groups[:-1]]
    def score_range(self): return tuple(self.groups[-1])
    def generation_steps(self): return self.groups
    def headline_prefix(self): return max(self.prefix_lengths())


def toy_data(n=20, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def shift_aug(img, ids, view):
    "Deterministic per (point, view): flip on odd views, roll by (id + view) % 3 - 1 pixels."
    out = img.flip(-1) if view % 2 else img
    return torch.stack([o.roll(int((i + view) % 3) - 1, -1) for o, i in zip(out, ids.tolist())])
