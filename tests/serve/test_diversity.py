"""``recommend(..., diversity=lam)``: maximal marginal relevance over item vectors; 0 keeps today's order."""

import numpy as np
import pytest

from mmrec.serve.diversity import POOL_FACTOR, intra_list_diversity

USERS = [str(u) for u in range(1, 151, 3)]


def _ild(rec, items):
    return intra_list_diversity(rec.item_vectors[rec._rows(items)])


def test_diversity_trades_relevance_for_spread(trained):
    _, _, rec, _ = trained
    spread, kept = {}, {}
    for lam in (0.0, 0.3, 0.7, 1.0):
        lists = [rec.recommend(u, k=10, diversity=lam) for u in USERS]
        spread[lam] = np.mean([_ild(rec, [i for i, _ in top]) for top in lists])
        plain = [rec.recommend(u, k=10) for u in USERS]
        kept[lam] = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(lists, plain)])
        if lam == 0:
            assert lists == plain  # exactly today's order
        for user, top in zip(USERS, lists):
            pool = [i for i, _ in rec.recommend(user, k=POOL_FACTOR * 10)]
            assert len(top) == 10 and {i for i, _ in top} <= set(pool) and top[0][0] == pool[0]
    assert spread[0.0] < spread[0.3] < spread[0.7] <= spread[1.0] + 1e-9
    assert kept[0.0] == 1.0 and kept[1.0] < kept[0.3] < 1.0


def test_diversity_is_validated(trained):
    _, _, rec, _ = trained
    for bad in (-0.1, 1.5, "high", float("nan")):
        with pytest.raises(ValueError, match="diversity"):
            rec.recommend("1", diversity=bad)
