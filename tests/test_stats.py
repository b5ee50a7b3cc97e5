"The one top-p rule (memloc.stats.top_count) gives every count the stages used before it replaced their own roundings."
import pytest

from memloc.stats import top_count

STAGE_PS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20)      # the percentages the stages and settings use


def _miniature_sizes():
    "Unit counts the stages rank on the miniatures: one block, all blocks, and (block, unit) cells over the generation steps."
    from memloc.intervention import unit_grid
    from memloc.llamagen import build_model as llamagen
    from memloc.rar import build_model as rar
    from memloc.var import build_model as var, mini_config
    sizes = set()
    for m in (var(mini_config()), rar("mini"), llamagen("mini")):
        nb, h = unit_grid(m)
        sizes |= {h, nb * h, len(m.unit_groups()) * nb * h}
    return sorted(sizes)


def test_miniature_sizes():
    assert {256, 1536, 6 * 1536} <= set(_miniature_sizes())    # 6 blocks x 256 units; VAR's cells over its 6 scales


@pytest.mark.parametrize("n", _miniature_sizes())
def test_counts_unchanged(n):
    for p in STAGE_PS:
        k = top_count(p, n)
        assert k == max(1, int(round(p / 100 * n))), (p, n)              # var_scales.top_mask before (banker's rounding)
        assert k == max(1, int(round(p / 100 * n))) == top_count(100 * (p / 100), n), (p, n)   # unitmem.canary_share (a fraction)
        assert k == max(1, round(p * n / 100)), (p, n)                   # the localization stage's Recall@k budgets


def test_rule():
    assert [top_count(p, 1536) for p in STAGE_PS] == [2, 4, 8, 15, 31, 77, 154, 307]
    assert top_count(50, 5) == 3 and round(2.5) == 2                     # half up, where Python's round would go to even
    assert top_count(0, 10) == 0 and top_count(0.001, 10) == 1 and top_count(100, 10) == 10
    for bad in (-1, 100.5):
        with pytest.raises(ValueError, match="percentage"): top_count(bad, 10)
