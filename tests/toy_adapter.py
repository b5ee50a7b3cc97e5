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


def toy_data(n=20, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


def shift_aug(img, ids, view):
    "Deterministic per (point, view): flip on odd views, roll by (id + view) % 3 - 1 pixels."
    out = img.flip(-1) if view % 2 else img
    return torch.stack([o.roll(int((i + view) % 3) - 1, -1) for o, i in zip(out, ids.tolist())])
