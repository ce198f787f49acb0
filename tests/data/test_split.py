"""The leave-one-out split: small cases and the reference split of ml-latest-small."""

from __future__ import annotations

import pandas as pd
import pytest

from mmrec.data import ItemIndex, leave_one_out, load_interactions

from ..conftest import REFERENCE_SPLIT
from ..conftest import interaction_frame as _frame

CATALOG = ItemIndex(("1", "2", "9", "10", "100", "55"))


def _five_each(users: list[str]) -> pd.DataFrame:
    """Five interactions per user over items 1, 2, 9, 10, 100 at increasing timestamps."""
    rows = [(u, item, 100 + t) for u in users for t, item in enumerate(["1", "2", "9", "10", "100"])]
    return _frame(rows)


def test_no_user_long_enough_is_a_clear_error():
    inter = load_interactions(_frame([("1", "1", 1), ("1", "2", 2), ("2", "9", 3)]), CATALOG)
    with pytest.raises(ValueError, match=r"no user has 5 or more interactions \(2 users, the longest history has 2\)"):
        leave_one_out(inter)


def test_leave_one_out_on_small_data():
    df = pd.concat([_five_each(["1", "2"]), _frame([("3", "1", 1), ("3", "2", 2)])])
    split = leave_one_out(load_interactions(df, CATALOG))
    assert split.user_ids == ("1", "2")  # user 3 has fewer than 5 interactions
    assert CATALOG.ids_of(split.valid_item) == ("10", "10")
    assert CATALOG.ids_of(split.test_item) == ("100", "100")
    assert split.train.lengths.tolist() == [3, 3]
    assert split.history("test").lengths.tolist() == [4, 4]
    assert CATALOG.ids_of(split.context("test").row(0)[0]) == ("1", "2", "9", "10")
    # nobody trains on "10" or "100": every user is cold at both stages
    assert split.cold_test_users().tolist() == [0, 1]
    assert split.train_item_mask().tolist() == [True, True, True, False, False, False]
    with pytest.raises(ValueError, match="min_interactions"):
        leave_one_out(load_interactions(df, CATALOG), min_interactions=2)


def test_split_equals_reference_file(real_split):
    ref = pd.read_csv(REFERENCE_SPLIT, dtype=str)
    assert real_split.n_users == len(ref) == 610
    assert list(real_split.user_ids) == ref["user_id"].tolist()
    assert real_split.train.lengths.tolist() == ref["n_train"].astype(int).tolist()
    assert list(real_split.items.ids_of(real_split.valid_item)) == ref["valid_item_id"].tolist()
    assert list(real_split.items.ids_of(real_split.test_item)) == ref["test_item_id"].tolist()
    assert len(real_split.items) == 9742
