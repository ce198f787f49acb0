"""Beyond-accuracy metrics (mmrec.beyond) on hand-made lists, and the top lists evaluate() keeps for them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec.baselines import Popularity
from mmrec.beyond import (
    BEYOND_METRICS, beyond_accuracy, catalogue_coverage, content_vectors, exposure_counts, gini_index,
    intra_list_diversities, item_popularity, novelties,
)
from mmrec.data import ItemIndex, build_behaviour, leave_one_out, load_interactions
from mmrec.evaluation import LIST_LENGTH, evaluate, top_items
from mmrec.features import ItemFeatures

# two lists over a catalogue of 5; -1 is a place past the user's rankable items
LISTS = np.array([[0, 1, 2], [0, 3, -1]])
# item 3 has no vector (a zero row): it is left out of intra-list diversity
VECTORS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
POPULARITY = np.array([1 / 2, 1 / 4, 1 / 8, 1.0, 1 / 16])


def test_coverage_and_gini_of_hand_made_lists():
    np.testing.assert_array_equal(exposure_counts(LISTS, 5), [2, 1, 1, 1, 0])
    assert catalogue_coverage(LISTS, 5) == pytest.approx(4 / 5)
    # counts sorted [0, 1, 1, 1, 2], weights 2i - n - 1 = [-4, -2, 0, 2, 4]: (0 - 2 + 0 + 2 + 8) / (5 * 5)
    assert gini_index(exposure_counts(LISTS, 5)) == pytest.approx(8 / 25)
    assert gini_index([3, 3, 3]) == 0.0  # equal exposure
    assert gini_index([0, 0, 0, 7]) == pytest.approx(3 / 4)  # one item takes every place: (N - 1) / N
    assert math.isnan(gini_index([0, 0]))
    with pytest.raises(ValueError, match="outside a catalogue of 3"):
        exposure_counts(LISTS, 3)


def test_intra_list_diversity_of_hand_made_lists():
    ild = intra_list_diversities(LISTS, VECTORS)
    # list 0: cos(0, 1) = 0, cos(0, 2) = cos(1, 2) = 1/sqrt(2); list 1: one item with a vector, no pair
    assert ild[0] == pytest.approx((1 + 2 * (1 - 1 / math.sqrt(2))) / 3)
    assert math.isnan(ild[1])
    # the same direction, another length: distance 0
    assert intra_list_diversities(np.array([[0, 4]]), VECTORS)[0] == pytest.approx(0.0, abs=1e-7)


def test_novelty_of_hand_made_lists():
    # list 0: -log2 of 1/2, 1/4, 1/8 = 1, 2, 3; list 1: 1/2 and 1 -> 1, 0
    np.testing.assert_allclose(novelties(LISTS, POPULARITY), [2.0, 0.5])
    assert math.isnan(novelties(np.array([[-1, -1]]), POPULARITY)[0])
    with pytest.raises(ValueError, match="popularity"):
        novelties(LISTS, np.array([0.5, 0.0, 1.0, 1.0, 1.0]))


ITEMS = ItemIndex(tuple(str(i) for i in range(12)))
# one user per sequence, oldest first: last = test, second last = valid
SEQUENCES = [[0, 1, 2, 3, 4], [0, 1, 5, 6, 7], [0, 2, 5, 8, 9]]


def _split():
    rows = [(str(u), str(item), t) for u, seq in enumerate(SEQUENCES) for t, item in enumerate(seq)]
    return leave_one_out(load_interactions(pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]), ITEMS))


def test_item_popularity_is_the_share_of_users_who_trained_on_the_item():
    split = _split()
    # training parts: [0, 1, 2], [0, 1, 5], [0, 2, 5]; items no one trained on count as one user of three
    expected = np.full(12, 1 / 3)
    expected[0], expected[[1, 2, 5]] = 1.0, 2 / 3
    np.testing.assert_allclose(item_popularity(split), expected)


def test_evaluate_keeps_each_users_top_list_and_the_metrics_read_it():
    split = _split()
    pop = Popularity(split.n_items)
    pop.prepare(split)  # counts 0: 3; 1, 2, 5: 2; the rest 0
    result = evaluate(pop, build_behaviour(split), "test", batch_size=2)
    assert result.top_items.shape == (3, LIST_LENGTH) == (3, 10)
    # 12 items less a history of 4 (train + valid) leave 8 to rank, the target among them: 2 places stay -1
    history = [set(seq[:4]) for seq in SEQUENCES]
    for user, row in enumerate(result.top_items):
        assert set(row[:8].tolist()) == set(range(12)) - history[user] and row[8:].tolist() == [-1, -1]
        assert SEQUENCES[user][-1] in row  # each target is in its list: recall@10 = 1
    assert result.top_items[:, 0].tolist() == [5, 2, 1]  # each user's most popular unseen item
    assert result.metrics["recall@10"] == 1.0
    # exposure: item 0 never (everyone's history); 1, 2, 5 once; 3, 6, 8 twice; 4, 7, 9, 10, 11 three times
    np.testing.assert_array_equal(exposure_counts(result.top_items, 12), [0, 1, 1, 2, 3, 1, 2, 3, 2, 3, 3, 3])
    # vectors by parity: cos 1 within even or odd items, 0 across. Lists of 8 with 4 + 4, 4 + 4, 3 + 5 of each
    # parity: 32 / 56, 32 / 56, 30 / 56 ordered pairs across
    parity = torch.tensor([[1.0, 0.0] if i % 2 == 0 else [0.0, 1.0] for i in range(12)])
    beyond = beyond_accuracy(result.top_items, split, parity)
    assert list(beyond) == list(BEYOND_METRICS)
    assert beyond["coverage@10"] == pytest.approx(11 / 12)
    # counts sorted [0, 1, 1, 1, 2, 2, 2, 3 x 5] with weights 2i - 13: (-21 - 6 + 105) / (12 * 24)
    assert beyond["gini@10"] == pytest.approx(78 / 288)
    assert beyond["ild@10"] == pytest.approx((32 + 32 + 30) / 56 / 3)
    # every list holds one item two users of three trained on, and seven no one trained on
    assert beyond["novelty@10"] == pytest.approx((math.log2(3 / 2) + 7 * math.log2(3)) / 8)


def test_top_items_pads_past_the_rankable_items():
    scores = torch.tensor([[0.1, 0.9, 0.5, float("-inf")], [0.3, 0.2, 0.1, 0.0]])
    exclude = torch.tensor([[False, False, True, False], [False, False, False, False]])
    np.testing.assert_array_equal(top_items(scores, exclude, k=5), [[1, 0, -1, -1, -1], [0, 1, 2, 3, -1]])


def test_content_vectors_are_the_text_features_or_the_images_of_a_store_without_text():
    text, image = torch.randn(3, 4), torch.randn(3, 2)
    flags = torch.ones(3, 2, dtype=torch.bool)
    index, known = torch.arange(3), torch.ones(3, dtype=torch.bool)
    assert content_vectors(ItemFeatures(text, image, flags, index, known)) is text
    assert content_vectors(ItemFeatures(torch.zeros(3, 0), image, flags, index, known)) is image
