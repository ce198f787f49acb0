"""Catalogue cells that are not strings (Parquet lists and floats, JSON arrays and numbers, nulls) become the text a
CSV user would have written: lists joined with "|", 1995.0 as "1995", missing as ""."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrec.io.catalog import _as_text, read_catalog, read_catalog_table


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": ["1", "2", "3"],
        "title": [3.5, 1995.0, None],
        "genres": [["Animation", "Comedy"], ["Drama"], None],
        "year": [1995.0, float("nan"), 2001.0],
        "nested": [[["a", "b"], ["c"]], [], [["d"]]],
    })


EXPECTED = {
    "item_id": ["1", "2", "3"],
    "title": ["3.5", "1995", ""],
    "genres": ["Animation|Comedy", "Drama", ""],
    "year": ["1995", "", "2001"],
    "nested": ["a|b|c", "", "d"],
}


@pytest.mark.parametrize("writer", ["pandas", "pyarrow"])
def test_parquet_lists_floats_and_nulls_become_csv_text(tmp_path, writer):
    path = tmp_path / "items.parquet"
    if writer == "pandas":
        _frame().to_parquet(path)
    else:
        table = pa.table({
            "item_id": pa.array(["1", "2", "3"]),
            "title": pa.array([3.5, 1995.0, None], pa.float32()),  # float32 reads back as numpy, not Python, floats
            "genres": pa.array([["Animation", "Comedy"], ["Drama"], None], pa.list_(pa.string())),
            "year": pa.array([1995, None, 2001], pa.int64()),
            "nested": pa.array([[["a", "b"], ["c"]], [], [["d"]]], pa.list_(pa.list_(pa.string()))),
        })
        pq.write_table(table, path)
    frame = read_catalog_table(path)
    assert {c: list(frame[c]) for c in frame.columns} == EXPECTED
    rows = read_catalog(path, text_columns=["title", "genres", "year"])
    assert rows[0].text == "3.5. genres: Animation, Comedy. year: 1995"
    assert rows[1].text == "1995. genres: Drama"
    assert rows[2].text == "year: 2001"
    assert "[" not in " ".join(r.text for r in rows) and "'" not in " ".join(r.text for r in rows)


def test_jsonl_arrays_numbers_and_nulls_become_csv_text(tmp_path):
    path = tmp_path / "items.jsonl"
    _frame().to_json(path, orient="records", lines=True)
    frame = read_catalog_table(path)
    assert {c: list(frame[c]) for c in frame.columns} == EXPECTED


@pytest.mark.parametrize("value, text", [
    (None, ""), (float("nan"), ""), (np.float32("nan"), ""), (np.float64(1995.0), "1995"), (np.float32(3.5), "3.5"),
    (np.float32(0.1), "0.1"), (0.1, "0.1"), (1e20, "100000000000000000000"), (1.5e-7, "1.5e-07"),
    (math.inf, "inf"), (np.int64(42), "42"), (True, "True"), (np.bool_(False), "False"), (pd.NA, ""),
    (pd.NaT, ""), (np.array(["A", "B"]), "A|B"), (("x", 2.0), "x|2"), ([["a", None], "b"], "a||b"),
    (np.array([1.0, 2.5]), "1|2.5"), ("  text ", "  text "), (b"bytes", "bytes"),
])
def test_cell_values(value, text):
    assert _as_text(value) == text
