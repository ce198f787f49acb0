"""Reading interaction tables (mmrec.io.tables through load_interactions): CSV, Parquet and JSON-lines agree, and a
malformed or empty file is an error that names the file and line."""

from __future__ import annotations

import pandas as pd
import pytest

from mmrec.data import ItemIndex, load_interactions

from ..conftest import interaction_frame as _frame

CATALOG = ItemIndex(("1", "2", "9", "10", "100", "55"))


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


def test_missing_column_is_named():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['timestamp'\]"):
        load_interactions(pd.DataFrame({"user_id": ["1"], "item_id": ["1"]}), CATALOG)


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


def test_empty_interaction_files_name_the_file(tmp_path):
    (tmp_path / "none.csv").write_text("")
    with pytest.raises(ValueError, match="none.csv: the file is empty"):
        load_interactions(tmp_path / "none.csv", CATALOG)
    (tmp_path / "none.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="none.jsonl: the file holds no JSON objects"):
        load_interactions(tmp_path / "none.jsonl", CATALOG)
