"""Loading interactions, the leave-one-out split (checked against the reference split) and padded batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmrec.data import (
    DEFAULT_EVENT,
    ItemIndex,
    context_batch,
    leave_one_out,
    load_interactions,
    training_windows,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data" / "ml-latest-small"
REFERENCE_SPLIT = SHARED / "baselines" / "ml-latest-small.split.csv"


def _need_shared() -> None:
    if not (DATA / "interactions.csv").is_file() or not REFERENCE_SPLIT.is_file():
        pytest.skip(f"the shared ml-latest-small data is not at {SHARED} (it lives beside the repository)")


@pytest.fixture(scope="module")
def real_split():
    _need_shared()
    items = ItemIndex.from_catalog(DATA / "items.csv")
    return leave_one_out(load_interactions(DATA / "interactions.csv", items))


CATALOG = ItemIndex(("1", "2", "9", "10", "100", "55"))


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def _five_each(users: list[str]) -> pd.DataFrame:
    """Five interactions per user over items 1, 2, 9, 10, 100 at increasing timestamps."""
    rows = [(u, item, 100 + t) for u in users for t, item in enumerate(["1", "2", "9", "10", "100"])]
    return _frame(rows)


def test_rows_sorted_by_timestamp_then_numeric_item_id():
    df = _frame([("10", "100", 5), ("10", "9", 5), ("10", "10", 5), ("10", "2", 1), ("2", "55", 3)])
    inter = load_interactions(df, CATALOG)
    assert inter.user_ids == ("2", "10")  # numeric user order, not "10" < "2"
    assert CATALOG.ids_of(inter.item) == ("55", "2", "9", "10", "100")
    assert inter.timestamp.tolist() == [3, 1, 5, 5, 5]
    assert inter.offsets.tolist() == [0, 1, 5]


def test_numeric_ids_sort_first_as_numbers_and_the_rest_as_strings():
    items = ItemIndex(("a9", "a10", "70", "8"))
    inter = load_interactions(_frame([("u", "a9", 1), ("u", "70", 1), ("u", "a10", 1), ("u", "8", 1)]), items)
    assert items.ids_of(inter.item) == ("8", "70", "a10", "a9")
    # two ids compare the same whatever else the catalogue holds: a new id never reorders the others
    assert ItemIndex(("70", "8")).sort_rank.tolist() == [1, 0]


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


def test_extra_field_in_first_row_is_an_error_not_a_shifted_table(tmp_path):
    # pandas would read the extra field as an index and shift every column: user "1" would become item "1"
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,10,EXTRA\n1,9,11\n")
    with pytest.raises(ValueError, match=r"line 2 has 4 fields but the header has 3"):
        ItemIndex.from_catalog(path, id_column="user_id")
    with pytest.raises(ValueError, match=r"line 2 has 4 fields but the header has 3"):
        load_interactions(path, CATALOG)
    path.write_text("user_id,item_id,timestamp\n1,2,10\n1,9,11,EXTRA\n")
    with pytest.raises(ValueError, match=r"interactions.csv: .*line 3"):
        load_interactions(path, CATALOG)


def test_no_user_long_enough_is_a_clear_error():
    inter = load_interactions(_frame([("1", "1", 1), ("1", "2", 2), ("2", "9", 3)]), CATALOG)
    with pytest.raises(ValueError, match=r"no user has 5 or more interactions \(2 users, the longest history has 2\)"):
        leave_one_out(inter)


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


def test_missing_column_is_named():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['timestamp'\]"):
        load_interactions(pd.DataFrame({"user_id": ["1"], "item_id": ["1"]}), CATALOG)


def test_item_index_errors():
    with pytest.raises(KeyError, match="'404'"):
        CATALOG.index(["1", "404"])
    with pytest.raises(ValueError, match="'2' appears more than once"):
        ItemIndex(("1", "2", "2"))
    assert CATALOG.index(["10", "1"]).tolist() == [3, 0]


def test_file_formats_agree(tmp_path):
    df = _frame([("1", "10", 5), ("1", "9", 5), ("2", "1", 7)]).assign(event=["a", "b", "a"])
    df.to_csv(tmp_path / "x.csv", index=False)
    df.to_parquet(tmp_path / "x.parquet", index=False)
    df.to_json(tmp_path / "x.jsonl", orient="records", lines=True)
    loaded = [load_interactions(tmp_path / f"x.{ext}", CATALOG) for ext in ("csv", "parquet", "jsonl")]
    for inter in loaded:
        assert inter.item.tolist() == loaded[0].item.tolist() == CATALOG.index(["9", "10", "1"]).tolist()
        assert inter.event_names == ("a", "b") and inter.user_ids == ("1", "2")


def test_jsonl_integers_beyond_64_bits_are_bad_rows_not_a_parser_crash(tmp_path):
    path = tmp_path / "x.jsonl"
    # pandas' own JSON reader stops at such a number with "Value is too big!" and no row
    path.write_text('{"user_id": 1, "item_id": 1, "timestamp": 5}\n\n'
                    '{"user_id": 1, "item_id": 2, "timestamp": 99999999999999999999999}\n')
    with pytest.raises(ValueError, match=r"timestamp: .*first data rows \[2\]"):
        load_interactions(path, CATALOG)
    path.write_text('{"user_id": 1, "item_id": 99999999999999999999999, "timestamp": 5}\n')
    with pytest.raises(ValueError, match="unknown"):
        load_interactions(path, CATALOG)


def test_json_file_that_is_not_one_object_per_row_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"user_id": 1, "item_id": 1, "timestamp": 5}\n[1, 2, 3]\n')
    with pytest.raises(ValueError, match="x.jsonl: line 2 is list, not a JSON object"):
        load_interactions(path, CATALOG)
    path.write_text('{"user_id": 1, "item_id": 1, "timestamp": 5}\n{"user_id": 1,\n')
    with pytest.raises(ValueError, match="x.jsonl: line 2 is not valid JSON"):
        load_interactions(path, CATALOG)
    array = tmp_path / "x.json"  # a JSON array of records reads like JSON lines
    array.write_text('[{"user_id": 1, "item_id": 10, "timestamp": 5}, {"user_id": 1, "item_id": 9, "timestamp": 5}]')
    assert load_interactions(array, CATALOG).item.tolist() == CATALOG.index(["9", "10"]).tolist()


def test_date_string_timestamps():
    inter = load_interactions(_frame([("1", "1", "2020-01-02"), ("1", "2", "2020-01-01T00:00:00Z")]), CATALOG)
    assert inter.timestamp.tolist() == [1577836800, 1577923200]


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


def test_windows_make_every_training_position_a_target_once(real_split):
    train, pad = real_split.train, real_split.n_items
    first = np.zeros(len(train.item), dtype=bool)
    first[train.offsets[:-1]] = True  # a user's first event has no context, so it is never a target
    expected = np.stack([train.row_of[~first], train.item[~first], train.timestamp[~first]], axis=1)
    for stride in (None, 20):
        w = training_windows(real_split, max_len=50, stride=stride)
        assert w.items.shape == (len(w), 50)
        row, col = np.nonzero(w.targets != pad)
        got = np.stack([w.users[row], w.targets[row, col], w.target_timestamps[row, col]], axis=1)
        by = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731 - sort rows
        assert np.array_equal(by(got), by(expected))
        assert (w.target_timestamps[row, col] >= w.timestamps[row, col]).all()
        real = np.arange(50)[None, :] < w.lengths[:, None]
        assert (w.items[~real] == pad).all() and (w.items[real] != pad).all()


def test_windows_exact_layout():
    df = _frame([("1", item, t) for t, item in enumerate(["1", "2", "9", "10", "100", "55", "1", "2"])])
    split = leave_one_out(load_interactions(df, CATALOG))  # train: 1 2 9 10 100 55
    w = training_windows(split, max_len=3)
    pad = split.n_items
    idx = CATALOG.index
    assert w.items.tolist() == [idx(["9", "10", "100"]).tolist(), idx(["1", "2"]).tolist() + [pad]]
    assert w.targets.tolist() == [idx(["10", "100", "55"]).tolist(), idx(["2", "9"]).tolist() + [pad]]
    assert w.lengths.tolist() == [3, 2]
    overlap = training_windows(split, max_len=3, stride=2)  # windows end at 5, 3, 1; last 2 columns are targets
    assert overlap.targets.tolist() == [
        [pad] + idx(["100", "55"]).tolist(),
        [pad] + idx(["9", "10"]).tolist(),
        idx(["2"]).tolist() + [pad, pad],
    ]
    batch = w.batch(np.array([1]))
    assert batch.events.tolist() == [[0, 0, split.n_events]]
    assert batch.target_mask.tolist() == [[True, True, False]]


def test_context_batch_is_the_tail_of_the_context(real_split):
    users = np.array([0, 1, 2])
    for stage, extra in (("valid", 0), ("test", 1)):
        batch = context_batch(real_split, stage, users, max_len=50)
        lengths = np.minimum(real_split.train.lengths[users] + extra, 50)
        assert batch.lengths.tolist() == lengths.tolist()
        last = batch.items[np.arange(3), batch.lengths - 1].numpy()
        expected = real_split.train.item[real_split.train.offsets[users + 1] - 1] if extra == 0 else (
            real_split.valid_item[users]
        )
        assert last.tolist() == expected.tolist()
        assert (batch.items[~batch.mask] == real_split.n_items).all()
    whole = context_batch(real_split, "test", users, max_len=None)
    assert whole.lengths.tolist() == (real_split.train.lengths[users] + 1).tolist()


def test_empty_interaction_files_name_the_file(tmp_path):
    (tmp_path / "none.csv").write_text("")
    with pytest.raises(ValueError, match="none.csv: the file is empty"):
        load_interactions(tmp_path / "none.csv", CATALOG)
    (tmp_path / "none.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="none.jsonl: the file holds no JSON objects"):
        load_interactions(tmp_path / "none.jsonl", CATALOG)
