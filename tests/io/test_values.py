"""Id and timestamp columns (mmrec.io.values through load_interactions): numeric-aware id order, bad values named
by their data rows, date strings as timestamps."""

from __future__ import annotations

import pytest

from mmrec.data import ItemIndex, load_interactions
from mmrec.io.values import sort_ids

from ..conftest import interaction_frame as _frame

CATALOG = ItemIndex(("1", "2", "9", "10", "100", "55"))


def test_numeric_ids_sort_first_as_numbers_and_the_rest_as_strings():
    items = ItemIndex(("a9", "a10", "70", "8"))
    inter = load_interactions(_frame([("u", "a9", 1), ("u", "70", 1), ("u", "a10", 1), ("u", "8", 1)]), items)
    assert items.ids_of(inter.item) == ("8", "70", "a10", "a9")
    # two ids compare the same whatever else the catalogue holds: a new id never reorders the others
    assert ItemIndex(("70", "8")).sort_rank.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("1", "1", 1), (None, "2", 2)], r"user_id: missing value in 1 row\(s\), first data rows \[2\]"),
        ([("1", "1", 1), ("1", "2", "soon")], r"timestamp: .*first data rows \[2\]"),
        ([("1", "1", 1), ("1", "2", None), ("1", "9", 3)], r"timestamp: .*first data rows \[2\]"),
        # would wrap to a negative int64 time if cast unchecked
        ([("1", "1", 1), ("1", "2", 1e30), ("1", "9", float("inf"))], r"timestamp: 2 row.*first data rows \[2, 3\]"),
    ],
)
def test_bad_rows_are_named(rows, message):
    with pytest.raises(ValueError, match=message):
        load_interactions(_frame(rows), CATALOG)


def test_date_string_timestamps():
    inter = load_interactions(_frame([("1", "1", "2020-01-02"), ("1", "2", "2020-01-01T00:00:00Z")]), CATALOG)
    assert inter.timestamp.tolist() == [1577836800, 1577923200]


def test_ids_sort_numbers_first_then_strings_whatever_else_is_stored():
    assert sort_ids(["110", "32", "2"]) == ["2", "32", "110"]
    assert sort_ids(["110", "32", "sku-x1", "2", "b"]) == ["2", "32", "110", "b", "sku-x1"]
