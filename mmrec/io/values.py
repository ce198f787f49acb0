"""Reading values: ids as strings, timestamps as int64 unix seconds, and the project's id order.

Ids are strings everywhere in the public surface. Ordering rule: ids that are numbers come first, in numeric order,
then the others as strings (:func:`sort_ranks`); training, evaluation and serving break equal-time ties by it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["INT64_LIMIT", "MAX_LISTED", "ORDER_COLUMN", "first_rows", "with_time_column", "row_numbers", "id_string", "id_strings", "ids_or_empty",
           "timestamps", "readable_timestamps", "unix_seconds", "sort_ranks", "sort_ids"]

MAX_LISTED = 10
"""How many offending ids/rows an error message lists."""
INT64_LIMIT = 2.0**63
"""Timestamps are int64 unix seconds; a float beyond this range would wrap to int64 min when cast."""


ORDER_COLUMN = "seq_index"
"""An events file without a ``timestamp`` column may order each user's events by this one instead: integers whose
order is all that is read (no time passes between events: models leave out time-gap features)."""


def with_time_column(frame: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """``frame`` with its ``timestamp`` column, and whether that column holds time: its own ``timestamp``
    (``True``), or its :data:`ORDER_COLUMN` renamed ``timestamp`` (``False``: an order, not time)."""
    if "timestamp" in frame.columns or ORDER_COLUMN not in frame.columns:
        return frame, True
    return frame.rename(columns={ORDER_COLUMN: "timestamp"}), False


def first_rows(mask: np.ndarray) -> list[int]:
    """Positions (0-based) of the first offending rows; messages show them as data rows counted from 1."""
    return np.flatnonzero(mask)[:MAX_LISTED].tolist()


def row_numbers(rows: list[int]) -> list[int]:
    """Data-row numbers as a user counts them (the header is not a row), matching the catalogue's messages."""
    return [r + 1 for r in rows]


def _stripped_strings(column: pd.Series) -> np.ndarray:
    """Non-missing ids as an object array of stripped ``str``; integral floats (``12.0``, from a NaN-widened
    column) become ``"12"``."""
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)) and np.all(np.abs(values) < INT64_LIMIT):
            column = pd.Series(values.astype(np.int64), index=column.index)
    strings = column.astype(str).str.strip()
    return np.asarray(strings.to_numpy(dtype=object), dtype=object)


def id_strings(column: pd.Series, name: str) -> np.ndarray:
    """Ids as an object array of ``str``, by the one id rule of files and API alike (:func:`id_string`): surrounding
    whitespace is stripped and integral floats (``12.0``, from a NaN-widened column) become ``"12"``.

    Raises ``ValueError`` naming the rows with a missing id (empty or blank after stripping).
    """
    present = column.notna().to_numpy()
    ids = np.full(len(column), "", dtype=object)
    if present.any():
        ids[present] = _stripped_strings(column[present])
    missing = ids == ""
    if missing.any():
        rows = first_rows(missing)
        raise ValueError(
            f"{name}: missing value in {int(missing.sum())} row(s), first data rows {row_numbers(rows)}")
    return ids


def ids_or_empty(column: pd.Series, name: str) -> pd.Series:
    """Stripped id strings, ``""`` where the id is missing or blank (the lenient form of :func:`id_strings`, for
    readers that reject such rows one by one). A missing value in a JSON-lines file widens the whole column to
    floats; ``1210.0`` is read back as ``"1210"``."""
    present = column.notna().to_numpy()
    ids = pd.Series("", index=column.index, dtype=object)
    if present.any():
        ids[present] = _stripped_strings(column[present])
    return ids


def _dates(column: pd.Series) -> pd.Series:
    """``column`` parsed as UTC datetimes, ``NaT`` where a value is no date. pandas' ``errors="coerce"`` still raises
    on some strings (``"12h"`` parses as a time on 1 January of year 1, out of the nanosecond range): then each value
    is parsed on its own."""
    try:
        return pd.Series(pd.to_datetime(column, utc=True, errors="coerce", format="mixed"), index=column.index)
    except (ValueError, OverflowError, TypeError):
        pass

    def one(value):
        try:
            return pd.to_datetime(value, utc=True, errors="coerce", format="mixed")
        except (ValueError, OverflowError, TypeError):
            return pd.NaT

    return pd.Series(pd.to_datetime([one(v) for v in column], utc=True), index=column.index)


def _unix_seconds_of_dates(parsed: pd.Series) -> np.ndarray:
    """UTC datetimes as int64 unix seconds, floored, in the datetimes' own unit (a date such as year 1 is beyond
    the nanosecond range pandas would otherwise convert to)."""
    values = parsed.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    unit, _ = np.datetime_data(values.dtype)
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    return values.astype(np.int64) // per_second


def timestamps(column: pd.Series) -> np.ndarray:
    """Timestamps as ``int64`` unix seconds.

    A column with any numeric value is read as numbers (floats lose their fractions of a second); otherwise as
    datetimes or date strings (UTC). Raises ``ValueError`` naming the rows that cannot be read.
    """
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        numeric = None
    else:
        numeric = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(numeric).any() and not pd.api.types.is_numeric_dtype(column.dtype):
            numeric = None
    if numeric is None:
        parsed = _dates(column)
        bad = parsed.isna().to_numpy()
    else:
        bad = ~(np.abs(numeric) < INT64_LIMIT)
    if bad.any():
        rows = first_rows(bad)
        kind = "dates" if numeric is None else "finite numbers within the int64 range"
        raise ValueError(
            f"timestamp: {int(bad.sum())} row(s) are missing or not {kind}, first data rows {row_numbers(rows)} "
            f"(values {[column.iloc[r] for r in rows[:3]]})"
        )
    if numeric is None:
        return _unix_seconds_of_dates(parsed)
    if pd.api.types.is_integer_dtype(column.dtype):
        return column.to_numpy(dtype=np.int64).copy()
    return np.floor(numeric).astype(np.int64)


def readable_timestamps(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(seconds (N,) int64, readable (N,) bool)``, read as :func:`timestamps` reads interactions (numbers,
    datetimes or date strings) but marking unreadable rows instead of raising: context events skip them."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        readable = column.notna().to_numpy()
    else:
        numeric = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isfinite(numeric).any() or pd.api.types.is_numeric_dtype(column.dtype):
            readable = np.isfinite(numeric) & (np.abs(numeric) < INT64_LIMIT)
        else:
            readable = _dates(column).notna().to_numpy()
    seconds = np.zeros(len(column), np.int64)
    seconds[readable] = timestamps(column[readable])
    return seconds, readable


def sort_ranks(ids: Sequence[str]) -> np.ndarray:
    """``(n,) int64`` rank of every id under the project order.

    Ids that parse as numbers come first, in numeric order (ties such as ``"01"``/``"1"`` broken as strings), then
    the others as strings. Two ids compare the same whatever other ids exist, so an item added after training
    does not reorder the ones the model was trained on (serving breaks equal-time ties in this order too).
    """
    n = len(ids)
    strings = np.asarray(ids, dtype=str) if n else np.empty(0, dtype=str)
    # only an id starting with a digit, a sign or a point can be a finite number: parsing the others one by one is
    # most of the time on a catalogue of string ids
    first = strings.astype("<U1")
    maybe = ((first >= "0") & (first <= "9")) | np.isin(first, ["+", "-", "."])
    numbers = np.full(n, np.nan)
    if maybe.any():
        numbers[maybe] = pd.to_numeric(pd.Series(strings[maybe], dtype=object), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
    is_number = np.isfinite(numbers)
    order = np.lexsort((strings, np.where(is_number, numbers, 0.0), ~is_number))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64)
    return ranks



def sort_ids(ids: Iterable[str]) -> list[str]:
    """``ids`` in the project's order (:func:`sort_ranks`): the order training and evaluation break equal-time ties
    in, whatever other ids the store holds."""
    ids = list(ids)
    return [ids[i] for i in np.argsort(sort_ranks(ids))]


def id_string(value, name: str) -> str:
    """An id as the store spells it, by the file readers' rule (:func:`ids_or_empty`): strings are stripped of
    surrounding whitespace (``" 18 "`` is ``"18"``), integers (``1210``, ``np.int64(1210)``) become ``"1210"``.

    Raises ``ValueError`` naming ``name`` for a string that is empty after stripping, or any other type."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped:
            return stripped
        raise ValueError(f"{name} must be a non-empty string or an integer, got {value!r} (empty after stripping "
                         "surrounding whitespace)")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    raise ValueError(f"{name} must be a non-empty string or an integer, got {value!r}")


def unix_seconds(value, name: str) -> int:
    """``value`` as int64 unix seconds; fractions of a second are floored, as training reads timestamps."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        seconds = int(value)
    elif isinstance(value, (numbers.Real, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        seconds = math.floor(number) if math.isfinite(number) else None
    else:
        seconds = None
    if seconds is None or not -INT64_LIMIT <= seconds < INT64_LIMIT:
        raise ValueError(f"{name} must be finite unix seconds within the int64 range, got {value!r}")
    return seconds
