"""The evaluation protocol on hand-made scores whose metrics are known by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.data import ItemIndex, build_behaviour, leave_one_out, load_interactions
from mmrec.evaluation import METRICS, evaluate, metrics_from_ranks, paired_bootstrap, target_ranks, tie_counts

N_ITEMS = 30
ITEMS = ItemIndex(tuple(str(i) for i in range(N_ITEMS)))


def _split(sequences: list[list[int]]):
    """One user per sequence (item indices, oldest first): last = test, second last = valid."""
    rows = [(str(u), str(item), t) for u, seq in enumerate(sequences) for t, item in enumerate(seq)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return leave_one_out(load_interactions(df, ITEMS))


# user 0: history 0..3, test 4; user 1: history 5..8, test 9; user 2: history 10..13, test 14
SPLIT = _split([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])


def _scores_with_rank(split, ranks: list[int], stage: str = "test") -> torch.Tensor:
    """(U, N) scores where each user's history scores highest and the target has exactly rank - 1 others above."""
    history = split.history(stage)
    targets = split.target(stage)
    scores = torch.zeros(split.n_users, N_ITEMS)
    for u, rank in enumerate(ranks):
        others = [i for i in range(N_ITEMS) if i != targets[u] and i not in set(history.row(u)[0].tolist())]
        scores[u, others] = -torch.arange(1, len(others) + 1, dtype=torch.float32)  # distinct, descending
        scores[u, targets[u]] = -(rank - 1) - 0.5  # between the (rank-1)-th and the rank-th other item
        scores[u, history.row(u)[0]] = 100.0  # excluded: must never count
    return scores


class _Ranker:
    """The least a model needs for evaluate(): ``max_len``, ``scores(batch, exclude)`` and ``eval()``; it scores
    with ``score_fn(batch, users)``."""

    def __init__(self, score_fn, max_len: int | None = None) -> None:
        self.score_fn, self.max_len = score_fn, max_len

    def scores(self, batch, exclude=None) -> torch.Tensor:
        return self.score_fn(batch, batch.users)

    def eval(self):
        return self


def _fixed(scores: torch.Tensor) -> _Ranker:
    return _Ranker(lambda batch, user_index: scores[user_index])


def _flat(batch, users) -> torch.Tensor:
    return torch.zeros(len(users), N_ITEMS)


BEHAVIOUR = build_behaviour(SPLIT)


def test_rank_1_3_11_metrics_by_hand():
    result = evaluate(_fixed(_scores_with_rank(SPLIT, [1, 3, 11])), BEHAVIOUR, "test", batch_size=2)
    assert result.per_user["rank"].tolist() == [1.0, 3.0, 11.0]
    per_user = {
        "recall@10": [1, 1, 0],
        "recall@20": [1, 1, 1],
        "ndcg@10": [1, 0.5, 0],  # 1/log2(1+1), 1/log2(3+1)
        "ndcg@20": [1, 0.5, 1 / math.log2(12)],
        "mrr@10": [1, 1 / 3, 0],
    }
    assert list(result.metrics) == list(METRICS)
    for name, values in per_user.items():
        np.testing.assert_allclose(result.per_user[name], values)
        assert result.metrics[name] == pytest.approx(np.mean(values))
    assert result.n_users == 3


def test_valid_stage_masks_only_train():
    # at the valid stage the test item is not history, so it counts when it scores above the valid target
    scores = _scores_with_rank(SPLIT, [1, 1, 1], stage="valid")
    scores[0, 4] = 1000.0  # user 0's test item
    result = evaluate(_fixed(scores), BEHAVIOUR, "valid")
    assert result.per_user["rank"].tolist() == [2.0, 1.0, 1.0]
    # at the test stage user 0's valid item 3 is history: a huge score there changes nothing
    test_scores = _scores_with_rank(SPLIT, [2, 2, 2])
    test_scores[0, 3] = 1e9
    assert evaluate(_fixed(test_scores), BEHAVIOUR, "test").per_user["rank"].tolist() == [2.0, 2.0, 2.0]


def test_ties_never_favour_the_target():
    scores = torch.zeros(1, 6)
    scores[0] = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0, 9.0])
    exclude = torch.tensor([[False, False, False, False, False, True]])  # item 5 is history
    target = torch.tensor([2])  # tied with items 1 and 3, one item (0) above
    assert target_ranks(scores, target, exclude, "expected").item() == 3.0  # 1 + 1 + 2/2
    assert target_ranks(scores, target, exclude, "pessimistic").item() == 4.0  # 1 + 1 + 2
    # a constant scorer puts the target in the middle of everything that is not history
    flat = evaluate(_Ranker(_flat), BEHAVIOUR, "test")
    assert flat.per_user["rank"].tolist() == [1 + (N_ITEMS - 5) / 2] * 3


def test_tied_target_scores_the_expected_metric_not_the_metric_of_its_mean_rank():
    # 7 items above the target and 4 tied with it: a random order puts it at rank 8, 9, 10, 11 or 12
    scores = torch.tensor([[9.0] * 7 + [5.0] * 5 + [1.0] * 18])
    target = torch.tensor([7])
    assert tie_counts(scores, target) == (7.0, 4.0)
    mean_rank = target_ranks(scores, target).item()
    assert mean_rank == 10.0
    expected = metrics_from_ranks(np.array([mean_rank]), tied=np.array([4.0]))
    positions = np.arange(8, 13)
    assert expected["recall@10"][0] == pytest.approx(3 / 5)  # not 1.0, the recall of rank 10
    assert expected["ndcg@10"][0] == pytest.approx(np.sum(1 / np.log2(positions[:3] + 1)) / 5)
    assert expected["ndcg@20"][0] == pytest.approx(np.mean(1 / np.log2(positions + 1)))
    assert expected["mrr@10"][0] == pytest.approx((1 / 8 + 1 / 9 + 1 / 10) / 5)
    # evaluate() applies it: a constant scorer ties the target with the 25 other items outside the history
    flat = evaluate(_Ranker(_flat), BEHAVIOUR, "test")
    assert flat.per_user["rank"].tolist() == [13.5] * 3
    assert flat.metrics["recall@10"] == pytest.approx(10 / 26) and flat.metrics["recall@20"] == pytest.approx(20 / 26)
    assert flat.metrics["ndcg@10"] == pytest.approx(np.sum(1 / np.log2(np.arange(2, 12))) / 26)
    pessimistic = evaluate(_Ranker(_flat), BEHAVIOUR, "test", tie_rule="pessimistic")
    assert pessimistic.per_user["rank"].tolist() == [26.0] * 3 and pessimistic.metrics["recall@20"] == 0.0
    with pytest.raises(ValueError, match="whole-number tie groups"):
        metrics_from_ranks(np.array([10.25]), tied=np.array([4.0]))


def test_target_in_history_is_still_ranked():
    scores = torch.tensor([[3.0, 2.0, 1.0]])
    exclude = torch.tensor([[True, True, False]])
    assert target_ranks(scores, torch.tensor([1]), exclude).item() == 1.0


def test_bad_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        evaluate(_Ranker(lambda b, u: torch.full((len(u), N_ITEMS), float("nan"))), BEHAVIOUR, "test")
    with pytest.raises(ValueError, match=r"scores: returned shape \(3, 29\), expected \(3, 30\)"):
        evaluate(_Ranker(lambda b, u: torch.zeros(len(u), N_ITEMS - 1)), BEHAVIOUR, "test")
    with pytest.raises(ValueError, match="stage"):
        evaluate(_Ranker(_flat), BEHAVIOUR, "train")


def test_cold_users_and_subsets():
    # user 1's test item 20 never occurs in training; user 0's test item 1 does (in user 1's train part)
    split = _split([[0, 2, 3, 4, 1], [1, 5, 6, 7, 20]])
    scores = _scores_with_rank(split, [1, 3])
    result = evaluate(_fixed(scores), build_behaviour(split), "test")
    assert split.cold_test_users().tolist() == [1]
    assert result.n_cold_users == 1 and result.is_cold.tolist() == [False, True]
    assert {k: v for k, v in result.cold_metrics.items() if not k.startswith("cold_new_")} == \
        {f"cold_{m}": result.per_user[m][1] for m in METRICS}
    # among new items only: the items ranked above user 1's target, less those seen in training or in the history
    above = set(np.flatnonzero(scores[1].numpy() > scores[1, 20].item())) - set(np.flatnonzero(split.train_item_mask()))
    above -= {1, 5, 6, 7}
    assert result.cold_metrics["cold_new_ndcg@10"] == pytest.approx(1 / np.log2(len(above) + 2))
    assert result.cold_metrics["cold_new_recall@20"] == 1.0
    sub = evaluate(_fixed(scores), build_behaviour(split), "test", users=np.array([0]))
    assert sub.n_users == 1 and sub.n_cold_users == 0 and math.isnan(sub.cold_metrics["cold_ndcg@10"])
    assert sub.to_dict()["cold_ndcg@10"] is None
    # the batch handed to the model is the users' last max_len events, as wide as the longest, right-padded
    # with n_items
    seen = []
    evaluate(_Ranker(lambda b, u: (seen.append(b), scores[u])[1], max_len=5), build_behaviour(split), "test")
    assert seen[0].items.tolist() == [[0, 2, 3, 4], [1, 5, 6, 7]]
    seen.clear()
    uneven = _split([[0, 2, 3, 4, 1], [1, 5, 6, 7, 8, 9, 20]])  # test contexts of 4 and 6 events
    evaluate(_Ranker(lambda b, u: (seen.append(b), _flat(b, u))[1], max_len=5), build_behaviour(uneven), "test")
    assert seen[0].items.tolist() == [[0, 2, 3, 4, N_ITEMS], [5, 6, 7, 8, 9]]
    assert seen[0].lengths.tolist() == [4, 5]


def test_paired_bootstrap():
    rng = np.random.default_rng(1)
    b = rng.random(500)
    same = paired_bootstrap(b, b, n_resamples=2000)
    assert same == (0.0, 0.0, 0.0, 0.5)
    better = paired_bootstrap(b + 0.1, b, n_resamples=2000)
    assert better.mean_diff == pytest.approx(0.1) and better.p_better == 1.0
    noisy = paired_bootstrap(b + rng.normal(0.02, 0.2, 500), b, n_resamples=4000, seed=3)
    assert noisy.ci_low < noisy.mean_diff < noisy.ci_high
    assert paired_bootstrap(b + rng.normal(0.02, 0.2, 500), b, n_resamples=4000, seed=3) != noisy
    a = b + rng.normal(0.02, 0.2, 500)
    assert paired_bootstrap(a, b, n_resamples=500, seed=7) == paired_bootstrap(a, b, n_resamples=500, seed=7)
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap(b, b[:-1])
