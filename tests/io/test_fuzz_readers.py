"""Property-based fuzzing of the readers of user files and values (hypothesis).

Whatever the input (files written from random frames in every format, random bytes under every suffix, random
columns of ids and timestamps, random API values), a reader returns a result or raises ``ValueError``, ``KeyError``
or ``FileNotFoundError`` with a message, which names the file when there is one. Any other exception is a bug.

Each property is a plain function over one drawn value, registered in :data:`PROPERTIES`; the tests below run each
with a few dozen derandomized examples, and ``scripts/fuzz_readers.py`` runs the same properties with many more.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmrec.data import ItemIndex, load_interactions
from mmrec.io.events import read_events
from mmrec.io.tables import read_table
from mmrec.io.values import id_string, id_strings, ids_or_empty, readable_timestamps, timestamps

ALLOWED = (ValueError, KeyError, FileNotFoundError)
FORMATS = (".csv", ".tsv", ".jsonl", ".json", ".parquet", ".csv.gz", ".txt")
CATALOG = ItemIndex(("1", "2", "10", "a", "NA", "0042"))

PROPERTIES: dict[str, tuple[Callable, st.SearchStrategy]] = {}


def prop(strategy: st.SearchStrategy):
    """Register ``body(value)`` as a property over ``strategy``."""
    def register(body: Callable) -> Callable:
        PROPERTIES[body.__name__] = (body, strategy)
        return body
    return register


def property_test(name: str, config: settings) -> Callable[[], None]:
    """The hypothesis test of property ``name`` under ``config`` (call it to run it)."""
    body, strategy = PROPERTIES[name]
    return config(given(strategy)(body))


def outcome(call: Callable, names: str | None = None):
    """``call()``'s result, or ``None`` after an allowed error, whose message must be non-empty and, when ``names``
    is given (a file name), name it."""
    try:
        return call()
    except ALLOWED as error:
        message = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
        assert message.strip(), f"{type(error).__name__} without a message"
        if names is not None:
            assert names in message, f"the error does not name the file {names}: {message}"
        return None


# -- strategies -------------------------------------------------------------------------------------------------
ODD_STRINGS = ["", " ", "  1 ", "1", "01", "NA", "nan", "None", "null", "inf", "-inf", "1e300", "1e-300", "-1",
               "12.0", "0x10", "2020-01-01", "2020-01-01T12:00:00Z", "2020-13-45", "1/2/2020", "yesterday", "a,b",
               "1000-01-01", "0M", "12h",  # dates beyond pandas' nanoseconds (12h: year 1) once crashed timestamps
               'say "hi"', "tab\there", "line\nbreak", "cr\rhere", "\x00", "\ufeff1", "é", "💥", "\\", "{", "[1]"]
cells = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=2_000_000_000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=8),
    st.lists(st.integers(min_value=-5, max_value=5), max_size=2),  # nested values: JSON files can hold them
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(min_value=0, max_value=3), max_size=1),
)
homogeneous = st.one_of(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.lists(st.floats(allow_nan=True, allow_infinity=True)),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))),
    st.lists(st.text(max_size=8)),
    st.lists(st.one_of(st.none(), st.sampled_from(ODD_STRINGS))),
    st.lists(st.datetimes(min_value=pd.Timestamp("1700-01-01").to_pydatetime(),
                          max_value=pd.Timestamp("2250-01-01").to_pydatetime())),
    st.lists(st.booleans()),
)
columns = st.one_of(homogeneous, st.lists(cells))
COLUMN_NAMES = ["user_id", "item_id", "timestamp", "event", "text", "tag", "review", "rating"]


@st.composite
def frames(draw) -> pd.DataFrame:
    """A frame with some of the readers' columns (often all three required ones) and odd values in each."""
    names = draw(st.lists(st.one_of(st.sampled_from(COLUMN_NAMES), st.text(max_size=5)), max_size=6, unique=True))
    if draw(st.booleans()):
        names = ["user_id", "item_id", "timestamp"] + [n for n in names if n not in ("user_id", "item_id", "timestamp")]
    n = draw(st.integers(min_value=0, max_value=6))
    data = {}
    for name in names:
        values = draw(columns)
        values = (values + [None] * n)[:n]
        data[name] = pd.Series(values, dtype=object if not values or draw(st.booleans()) else None)
    return pd.DataFrame(data) if data else pd.DataFrame(index=range(n))


def write_frame(frame: pd.DataFrame, path: Path) -> bool:
    """Write ``frame`` in the format of ``path``'s suffix; ``False`` when that format cannot hold it (pyarrow
    refuses a mixed column: that is no reader's input)."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        elif name.endswith(".jsonl"):
            lines = [json.dumps({k: _jsonable(v) for k, v in row.items()}) for row in frame.to_dict("records")]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif name.endswith(".json"):
            path.write_text(json.dumps([{k: _jsonable(v) for k, v in row.items()}
                                        for row in frame.to_dict("records")]), encoding="utf-8")
        else:
            frame.to_csv(path, sep="\t" if name.endswith(".tsv") else ",", index=False)
    except (ValueError, TypeError, OverflowError, ImportError) + _arrow_errors():
        return False
    return True


def _arrow_errors() -> tuple:
    import pyarrow

    return (pyarrow.ArrowException,)


def _jsonable(value):
    if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "isoformat"):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


BYTE_PIECES = [b"user_id,item_id,timestamp\n", b"user_id\titem_id\ttimestamp\n", b"1,2,3\n", b"1,2\n", b"1,2,3,4\n",
               b'"1,2",3\n', b'"unterminated\n', b"\xff\xfe", b"\xe9", b"\x00", b"\r\n", b"\n", b",", b"\t",
               b'{"user_id": 1, "item_id": 2, "timestamp": 3}\n', b"{", b"[", b"]", b"[1, 2]\n", b"null\n",
               b'{"user_id": {"a": 1}}\n', b"PAR1", b"\xef\xbb\xbf", b"\x1f\x8b"]
raw_bytes = st.one_of(st.binary(max_size=120), st.lists(st.sampled_from(BYTE_PIECES), max_size=8).map(b"".join))


# -- properties -------------------------------------------------------------------------------------------------
@prop(st.tuples(frames(), st.sampled_from(FORMATS)))
def read_table_of_a_written_frame(drawn) -> None:
    frame, suffix = drawn
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        if not write_frame(frame, path):
            return
        result = outcome(lambda: read_table(path), names=path.name)
        if result is not None:
            assert isinstance(result, pd.DataFrame)


@prop(st.tuples(raw_bytes, st.sampled_from(FORMATS + (".xlsx", ".jsonl.gz", ".ndjson"))))
def read_table_of_random_bytes(drawn) -> None:
    data, suffix = drawn
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"input{suffix}"
        path.write_bytes(data)
        outcome(lambda: read_table(path), names=path.name)


@prop(st.tuples(st.one_of(frames(), raw_bytes), st.sampled_from(FORMATS), st.booleans()))
def read_events_of_a_file(drawn) -> None:
    content, suffix, need_text = drawn
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"events{suffix}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif not write_frame(content, path):
            return
        table = outcome(lambda: read_events(path, need_text=need_text), names=path.name)
        if table is not None:
            n = len(table)
            assert table.timestamp.dtype == np.int64 and table.readable.dtype == bool and len(table.text) == n
            assert all(isinstance(v, str) and v == v.strip() for v in (*table.user_id, *table.item_id))


@prop(frames())
def read_events_of_a_frame(frame) -> None:
    outcome(lambda: read_events(frame))


@prop(st.tuples(st.one_of(frames(), raw_bytes), st.sampled_from(FORMATS), st.sampled_from(["error", "drop"])))
def load_interactions_of_a_file(drawn) -> None:
    content, suffix, unknown_items = drawn
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"interactions{suffix}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif not write_frame(content, path):
            return
        inter = outcome(lambda: load_interactions(path, CATALOG, unknown_items=unknown_items), names=path.name)
        if inter is not None:
            assert inter.offsets[-1] == len(inter) and inter.timestamp.dtype == np.int64
            assert all(u and u == u.strip() for u in inter.user_ids)


@prop(frames())
def load_interactions_of_a_frame(frame) -> None:
    outcome(lambda: load_interactions(frame, CATALOG))


@prop(columns)
def timestamps_of_a_column(values) -> None:
    for column in (pd.Series(values, dtype=object), _inferred(values)):
        if column is None:
            continue
        seconds, readable = readable_timestamps(column)  # the lenient reader never raises
        assert seconds.dtype == np.int64 and readable.dtype == bool and len(seconds) == len(column)
        strict = outcome(lambda: timestamps(column))
        if strict is not None:
            assert strict.dtype == np.int64 and len(strict) == len(column)
            assert readable.all() and (strict == seconds).all()
        else:
            assert len(column) and not readable.all()


@prop(columns)
def ids_of_a_column(values) -> None:
    for column in (pd.Series(values, dtype=object), _inferred(values)):
        if column is None:
            continue
        lenient = ids_or_empty(column, "user_id")  # never raises
        assert len(lenient) == len(column)
        assert all(isinstance(v, str) and v == v.strip() for v in lenient)
        strict = outcome(lambda: id_strings(column, "user_id"))
        if strict is None:
            assert (lenient == "").any()
        else:
            assert strict.tolist() == lenient.tolist() and "" not in strict.tolist()


@prop(st.one_of(cells, st.lists(cells, max_size=2), st.dictionaries(st.text(max_size=2), cells, max_size=1)))
def one_id_from_the_api(value) -> None:
    """``id_string`` (the API) and the file readers agree on every id they both accept."""
    api = outcome(lambda: id_string(value, "user_id"))
    if api is None:
        return
    assert isinstance(api, str) and api and api == api.strip()
    assert ids_or_empty(pd.Series([value], dtype=object), "user_id").tolist() == [api]


def _inferred(values) -> pd.Series | None:
    try:
        return pd.Series(values)
    except (ValueError, TypeError, OverflowError):
        return None


# -- the tests --------------------------------------------------------------------------------------------------
CI = settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.mark.parametrize("name", list(PROPERTIES))
def test_reader_property(name):
    property_test(name, CI)()
