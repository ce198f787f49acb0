"""Loading interactions: row order, events, unknown and repeated rows, the item index."""

from __future__ import annotations

import pytest

from mmrec.data import DEFAULT_EVENT, ItemIndex, load_interactions

from ..conftest import interaction_frame as _frame

CATALOG = ItemIndex(("1", "2", "9", "10", "100", "55"))


def test_rows_sorted_by_timestamp_then_numeric_item_id():
    df = _frame([("10", "100", 5), ("10", "9", 5), ("10", "10", 5), ("10", "2", 1), ("2", "55", 3)])
    inter = load_interactions(df, CATALOG)
    assert inter.user_ids == ("2", "10")  # numeric user order, not "10" < "2"
    assert CATALOG.ids_of(inter.item) == ("55", "2", "9", "10", "100")
    assert inter.timestamp.tolist() == [3, 1, 5, 5, 5]
    assert inter.offsets.tolist() == [0, 1, 5]


def test_events_on_one_item_in_the_same_second_sort_by_event():
    # file order cannot be kept: serving reads events back from its log sorted, so both sort by event
    df = _frame([("u", "2", 5), ("u", "2", 5), ("u", "1", 5)]).assign(event=["view", "buy", "view"])
    inter = load_interactions(df, CATALOG)
    assert [(CATALOG.ids_of(inter.item[i : i + 1])[0], inter.event_names[e]) for i, e in enumerate(inter.event)] == [
        ("1", "view"), ("2", "buy"), ("2", "view")]


def test_missing_event_column_means_interaction():
    inter = load_interactions(_frame([("1", "1", 1)]), CATALOG)
    assert inter.event_names == (DEFAULT_EVENT,)
    assert inter.event.tolist() == [0]
    with pytest.raises(ValueError, match="event_vocab.*'interaction'"):
        load_interactions(_frame([("1", "1", 1)]), CATALOG, event_vocab=["click", "buy"])


def test_event_vocabulary():
    df = _frame([("1", "1", 1), ("1", "2", 2)]).assign(event=["buy", "click"])
    inter = load_interactions(df, CATALOG, event_vocab=["click", "buy"])
    assert inter.event_names == ("click", "buy")
    assert inter.event.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"unknown event name\(s\) \['buy'\].*known events: \['click', 'view'\]"):
        load_interactions(df, CATALOG, event_vocab=["click", "view"])


def test_unknown_item_names_row_and_id():
    df = _frame([("1", "1", 1), ("1", "2", 2), ("1", "999", 3)])
    with pytest.raises(ValueError, match=r"data row 3 \(item_id '999'\)"):
        load_interactions(df, CATALOG)
    inter = load_interactions(df, CATALOG, unknown_items="drop")
    assert len(inter) == 2 and inter.n_dropped == 1


def test_a_repeated_row_is_one_event():
    rows = [("1", "1", 1), ("1", "2", 2), ("1", "2", 2), ("1", "2", 3), ("2", "1", 1), ("1", "2", 2)]
    inter = load_interactions(_frame(rows), CATALOG)
    assert inter.n_repeated == 2
    assert inter.timestamp.tolist() == [1, 2, 3, 1] and inter.lengths.tolist() == [3, 1]
    # the same item at the same second under another event is another event
    with_events = _frame(rows[:3]).assign(event=["view", "view", "cart"])
    assert load_interactions(with_events, CATALOG).n_repeated == 0


def test_item_index_errors():
    with pytest.raises(KeyError, match="'404'"):
        CATALOG.index(["1", "404"])
    with pytest.raises(ValueError, match="'2' appears more than once"):
        ItemIndex(("1", "2", "2"))
    assert CATALOG.index(["10", "1"]).tolist() == [3, 0]
