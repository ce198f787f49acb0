"""Interactions, the catalogue item index, the leave-one-out split and padded sequence batches.

Data flow (README, "Evaluation protocol")::

    catalogue rows ──► ItemIndex                      (catalogue item ids <-> dense indices 0..n_items-1)
    interaction rows ──► load_interactions ──► Interactions   (sorted by user, timestamp, item_id; CSR by user)
    Interactions ──► leave_one_out ──► Split          (train sequences, one valid and one test item per user)
    Split ──► training_windows ──► Windows ──► SequenceBatch   (training: padded input/target windows)
    Split ──► context_batch ──► SequenceBatch         (evaluation: the last ``max_len`` events of the context)

Ids are strings everywhere in the public surface; internally items, users and events are dense ``int64`` indices.
Ordering rule: ids that are numbers come first, in numeric order, then the others as strings (see ``_sort_ranks``).

Example::

    items = ItemIndex.from_catalog("items.csv")
    inter = load_interactions("interactions.csv", items)
    split = leave_one_out(inter)                       # users with < 5 interactions are dropped
    windows = training_windows(split, max_len=50)
    for batch in windows.batches(batch_size=64, rng=np.random.default_rng(0)):
        ...                                            # batch.items (B, 50), batch.targets (B, 50)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import contextlib
import csv
import dataclasses
import gzip
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
import pandas as pd
import torch

__all__ = [
    "DEFAULT_EVENT",
    "Interactions",
    "ItemIndex",
    "SequenceBatch",
    "Sequences",
    "Split",
    "Stage",
    "Windows",
    "context_batch",
    "hold_out_items",
    "leave_one_out",
    "load_interactions",
    "read_table",
    "tail_batch",
    "training_windows",
]

DEFAULT_EVENT = "interaction"
"""Event name given to every row when the input has no ``event`` column."""

Stage = Literal["valid", "test"]
TableSource = Union[str, Path, pd.DataFrame]

_MAX_LISTED = 10  # how many offending ids/rows an error message lists
# Timestamps are int64 unix seconds; a float beyond this range would wrap to int64 min when cast.
_INT64_LIMIT = 2.0**63


# --------------------------------------------------------------------------------------------------------------
# Reading tables and normalising columns
# --------------------------------------------------------------------------------------------------------------


def read_table(source: TableSource, id_columns: Sequence[str] = ("user_id", "item_id")) -> pd.DataFrame:
    """Read a CSV/TSV, Parquet or JSON-lines file (or pass a DataFrame through).

    The format follows the file suffix: ``.csv``/``.csv.gz`` (comma), ``.tsv`` (tab), ``.parquet``/``.pq``,
    ``.jsonl``/``.ndjson``/``.json`` (:func:`read_json_records`). In text formats the ``id_columns`` are read as
    strings and only empty cells count as missing (an id spelled ``NA`` stays an id).
    """
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    text_kwargs = dict(dtype={c: str for c in id_columns}, keep_default_na=False, na_values=[""])
    if ".parquet" in suffixes or ".pq" in suffixes:
        return pd.read_parquet(path)
    if any(s in (".jsonl", ".ndjson", ".json") for s in suffixes):
        return read_json_records(path)
    if ".tsv" in suffixes:
        return read_csv_strict(path, sep="\t", **text_kwargs)
    if ".csv" in suffixes or ".txt" in suffixes:
        return read_csv_strict(path, **text_kwargs)
    raise ValueError(f"source: cannot tell the format of {path.name!r}; use .csv, .tsv, .txt, .jsonl/.ndjson/.json "
                     "or .parquet")


@contextlib.contextmanager
def _utf8_required(path: Path) -> Iterator[None]:
    """Turn a decoding error, which names neither file nor line, into one that names both."""
    try:
        yield
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {_first_non_utf8_line(path)} is not UTF-8 text; save the file as UTF-8") from None


def _first_non_utf8_line(path: Path) -> str:
    """``"line N"`` (1-based) of the first line that does not decode as UTF-8 (the readers' errors name none)."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as handle:
        # universal line ends, as the readers split lines (iterating the file splits on "\n" only)
        for number, line in enumerate(handle.read().splitlines(), 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return f"line {number} (byte {line[error.start]:#04x})"
    return "a line"


def read_csv_strict(path: Path, sep: str = ",", **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` that refuses a data row with more fields than the header, naming its line.

    pandas reads extra fields in the first data row as a row index, which silently shifts every column by one (an
    item's title becomes its id); later rows with extra fields already fail.
    """
    with warnings.catch_warnings(), _utf8_required(path):
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(path, sep=sep, index_col=False, **kwargs)
        except pd.errors.ParserWarning:
            raise ValueError(f"{path}: {_first_long_row(path, sep)}; quote fields that contain {sep!r}") from None
        except pd.errors.EmptyDataError:
            raise ValueError(f"{path}: the file is empty (expected a header row)") from None
        except pd.errors.ParserError as exc:
            raise ValueError(f"{path}: {exc}".strip()) from None


def read_json_records(path: Path) -> pd.DataFrame:
    """One row per JSON object: JSON lines (one object per line, blank lines skipped), one array of objects (the
    file starts with ``[``), or pandas' column-oriented ``{"column": {"row": value}}``. ``.gz`` files are
    decompressed.

    Python's ``json`` keeps integers exact at any size (pandas' reader fails on integers beyond 64 bits without
    naming the row), so an oversized id or timestamp reaches the row checks that name it. Raises ``ValueError``
    naming the line (or array element) that is not a JSON object.
    """
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig") as handle, _utf8_required(path):
        text = handle.read()
    stripped = text.strip()
    if stripped.startswith("{") and "\n" not in stripped:
        # one object of objects: what DataFrame.to_json writes by default ({"column": {"row": value}})
        document = json.loads(stripped)
        if document and all(isinstance(v, dict) for v in document.values()):
            return pd.DataFrame(document)
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        where = "element"
    else:
        records, lines = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number} is not valid JSON: {exc}") from None
            lines.append(number)
        where = "line"
    if not records:
        raise ValueError(f"{path}: the file holds no JSON objects")
    bad = next((i for i, record in enumerate(records) if not isinstance(record, dict)), None)
    if bad is not None:
        position = bad if where == "element" else lines[bad]
        raise ValueError(f"{path}: {where} {position} is {type(records[bad]).__name__}, not a JSON object")
    return pd.DataFrame.from_records(records)


def _first_long_row(path: Path, sep: str) -> str:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8", errors="replace") as handle:
        rows = csv.reader(handle, delimiter=sep)
        width = len(next(rows, []))
        for row in rows:
            if len(row) > width:
                return f"line {rows.line_num} has {len(row)} fields but the header has {width}"
    return f"a row has more fields than the header's {width}"


def _readable_timestamps(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(seconds (N,) int64, readable (N,) bool)``, read as :func:`_timestamps` reads interactions (numbers,
    datetimes or date strings) but marking unreadable rows instead of raising: context events skip them."""
    if pd.api.types.is_datetime64_any_dtype(column.dtype):
        readable = column.notna().to_numpy()
    else:
        numeric = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isfinite(numeric).any() or pd.api.types.is_numeric_dtype(column.dtype):
            readable = np.isfinite(numeric) & (np.abs(numeric) < _INT64_LIMIT)
        else:
            readable = pd.to_datetime(column, utc=True, errors="coerce", format="mixed").notna().to_numpy()
    seconds = np.zeros(len(column), np.int64)
    seconds[readable] = _timestamps(column[readable])
    return seconds, readable


def _ids_or_empty(column: pd.Series, name: str) -> pd.Series:
    """Stripped id strings, ``""`` where the id is missing. A missing value in a JSON-lines file widens the whole
    column to floats; :func:`_id_strings` turns ``1210.0`` back into ``"1210"``."""
    present = column.notna().to_numpy()
    ids = pd.Series("", index=column.index, dtype=object)
    ids[present] = _id_strings(column[present], name)
    return ids.str.strip()


def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; found {list(df.columns)}{separator_hint(df.columns)}")


def separator_hint(columns: Sequence[str]) -> str:
    """A hint when a one-column header looks like a whole row in another separator (a TSV named ``.csv``)."""
    if len(columns) == 1:
        for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
            if sep in str(columns[0]):
                return f" (one column whose name holds {name}s: is the file {name}-separated?" + (
                    " name it .tsv)" if sep == "\t" else " convert it to commas)")
    return ""


def _first_rows(mask: np.ndarray) -> list[int]:
    """Positions (0-based) of the first offending rows; messages show them as data rows counted from 1."""
    return np.flatnonzero(mask)[:_MAX_LISTED].tolist()


def _row_numbers(rows: list[int]) -> list[int]:
    """Data-row numbers as a user counts them (the header is not a row), matching the catalogue's messages."""
    return [r + 1 for r in rows]


def _id_strings(column: pd.Series, name: str) -> np.ndarray:
    """Ids as an object array of ``str``; integral floats (``12.0``, from a NaN-widened column) become ``"12"``.

    Raises ``ValueError`` naming the rows with a missing id.
    """
    missing = column.isna().to_numpy()
    if missing.any():
        rows = _first_rows(missing)
        raise ValueError(
            f"{name}: missing value in {int(missing.sum())} row(s), first data rows {_row_numbers(rows)}")
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64)
        if np.all(values == np.round(values)):
            column = pd.Series(values.astype(np.int64))
    return np.asarray(column.astype(str).to_numpy(dtype=object), dtype=object)


def _timestamps(column: pd.Series) -> np.ndarray:
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
        parsed = pd.to_datetime(column, utc=True, errors="coerce", format="mixed")
        bad = parsed.isna().to_numpy()
    else:
        bad = ~(np.abs(numeric) < _INT64_LIMIT)
    if bad.any():
        rows = _first_rows(bad)
        kind = "dates" if numeric is None else "finite numbers within the int64 range"
        raise ValueError(
            f"timestamp: {int(bad.sum())} row(s) are missing or not {kind}, first data rows {_row_numbers(rows)} "
            f"(values {[column.iloc[r] for r in rows[:3]]})"
        )
    if numeric is None:
        seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return seconds.to_numpy(dtype=np.int64)
    if pd.api.types.is_integer_dtype(column.dtype):
        return column.to_numpy(dtype=np.int64).copy()
    return np.floor(numeric).astype(np.int64)


def _sort_ranks(ids: Sequence[str]) -> np.ndarray:
    """``(n,) int64`` rank of every id under the project order.

    Ids that parse as numbers come first, in numeric order (ties such as ``"01"``/``"1"`` broken as strings), then
    the others as strings. Two ids compare the same whatever other ids exist, so an item added after training
    does not reorder the ones the model was trained on (serving breaks equal-time ties in this order too).
    """
    n = len(ids)
    strings = np.asarray(ids, dtype=str) if n else np.empty(0, dtype=str)
    numbers = pd.to_numeric(pd.Series(list(ids), dtype=object), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )
    is_number = np.isfinite(numbers)
    order = np.lexsort((strings, np.where(is_number, numbers, 0.0), ~is_number))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64)
    return ranks


# --------------------------------------------------------------------------------------------------------------
# Catalogue index
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemIndex:
    """Catalogue item ids (strings) <-> dense indices ``0..n_items-1``, in catalogue order.

    Build it from the catalogue (every item, rated or not), not from the interactions, so that every model and
    the evaluator rank over the same item set. Index ``n_items`` is reserved as the padding index by
    :class:`SequenceBatch`.

    Example::

        items = ItemIndex(("1", "2", "10"))
        items.index(["10", "1"])   # array([2, 0])
        len(items)                 # 3
    """

    ids: tuple[str, ...]
    _lookup: pd.Index = field(init=False, repr=False, compare=False)
    _ranks: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = tuple(self.ids)
        for position, item_id in enumerate(ids):
            if not isinstance(item_id, str) or not item_id:
                raise ValueError(f"ids: position {position} holds {item_id!r}; item ids must be non-empty strings")
        lookup = pd.Index(ids, dtype=object)
        if not lookup.is_unique:
            dup = lookup[lookup.duplicated()][0]
            where = np.flatnonzero(lookup == dup)[:2].tolist()
            raise ValueError(f"ids: item id {dup!r} appears more than once (positions {where})")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "_lookup", lookup)
        object.__setattr__(self, "_ranks", _sort_ranks(ids))

    @classmethod
    def from_catalog(cls, source: TableSource, id_column: str = "item_id") -> ItemIndex:
        """Index of the catalogue file/DataFrame ``source`` (its ``id_column``), in row order."""
        df = read_table(source, id_columns=(id_column,))
        _require_columns(df, [id_column], "catalogue")
        return cls(tuple(_id_strings(df[id_column], id_column).tolist()))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._lookup

    @property
    def sort_rank(self) -> np.ndarray:
        """``(n_items,) int64``: each item's rank under the id order used for tie-breaking equal timestamps."""
        return self._ranks

    def index(self, ids: Iterable[str] | str) -> np.ndarray:
        """Dense indices ``(n,) int64`` of ``ids``; a single string counts as a one-element list.

        Raises ``KeyError`` listing (up to 10 of) the ids that are not in the catalogue.
        """
        if isinstance(ids, str):
            ids = [ids]
        values = ids if isinstance(ids, np.ndarray) else np.asarray(list(ids), dtype=object)
        codes = self._lookup.get_indexer(values.astype(object, copy=False))
        unknown = codes < 0
        if unknown.any():
            listed = pd.unique(values[unknown])[:_MAX_LISTED].tolist()
            raise KeyError(f"{int(unknown.sum())} id(s) not in the catalogue, e.g. {listed}")
        return codes.astype(np.int64, copy=False)

    def ids_of(self, indices: Iterable[int]) -> tuple[str, ...]:
        """Catalogue ids of dense ``indices`` (the inverse of :meth:`index`)."""
        return tuple(self.ids[int(i)] for i in indices)


# --------------------------------------------------------------------------------------------------------------
# Interactions
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interactions:
    """All interaction rows, sorted by (user, timestamp, item id), in CSR layout by user.

    Arrays (``N`` rows, ``U`` users): ``user``, ``item``, ``timestamp`` (unix seconds), ``event`` — each ``(N,)
    int64``; ``offsets (U+1,) int64`` so user ``u``'s rows are ``offsets[u]:offsets[u+1]``. ``user_ids`` (U,)
    are the original user ids (numeric order when all are numeric), ``event_names`` the event vocabulary
    (``event`` indexes it), ``items`` the catalogue index ``item`` refers to. ``n_dropped`` counts input rows
    dropped by ``unknown_items="drop"``, ``n_repeated`` rows dropped as repeats of an earlier row (same user,
    timestamp, item and event).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    event: np.ndarray
    offsets: np.ndarray
    user_ids: tuple[str, ...]
    event_names: tuple[str, ...]
    items: ItemIndex
    n_dropped: int = 0
    n_repeated: int = 0

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "timestamp", "event"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: length {len(getattr(self, name))} != len(user) {n}")
        if len(self.offsets) != len(self.user_ids) + 1 or self.offsets[-1] != n:
            raise ValueError("offsets: must have n_users + 1 entries ending at the number of rows")

    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_events(self) -> int:
        return len(self.event_names)

    @property
    def lengths(self) -> np.ndarray:
        """``(U,) int64`` interactions per user."""
        return np.diff(self.offsets)


def _event_codes(df: pd.DataFrame, event_vocab: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    n = len(df)
    if event_vocab is not None:
        names = tuple(str(e) for e in event_vocab)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"event_vocab: must be non-empty and without duplicates, got {list(names)}")
    if "event" not in df.columns:
        if event_vocab is None:
            return np.zeros(n, dtype=np.int64), (DEFAULT_EVENT,)
        if DEFAULT_EVENT not in names:
            raise ValueError(
                f"event_vocab: the input has no 'event' column, so every row is event {DEFAULT_EVENT!r}, "
                f"which is not among the known events {list(names)}"
            )
        return np.full(n, names.index(DEFAULT_EVENT), dtype=np.int64), names
    values = _id_strings(df["event"], "event")
    if event_vocab is None:
        names = tuple(sorted(pd.unique(values).tolist()))
    codes = pd.Index(names, dtype=object).get_indexer(values)
    unknown = codes < 0
    if unknown.any():
        rows = _first_rows(unknown)
        raise ValueError(
            f"event: unknown event name(s) {pd.unique(values[unknown])[:_MAX_LISTED].tolist()} "
            f"(first data rows {_row_numbers(rows)}); known events: {list(names)}"
        )
    return codes.astype(np.int64), names


def load_interactions(
    source: TableSource,
    items: ItemIndex,
    event_vocab: Sequence[str] | None = None,
    *,
    unknown_items: Literal["error", "drop"] = "error",
) -> Interactions:
    """Load interaction rows and sort them into per-user chronological sequences.

    Args:
        source: CSV/TSV/Parquet/JSON-lines path or a DataFrame with columns ``user_id``, ``item_id``,
            ``timestamp`` and optionally ``event`` (string). Other columns (e.g. ``rating``) are ignored.
            Without an ``event`` column every row is event ``"interaction"``.
        items: the catalogue; ``item`` indices refer to it.
        event_vocab: fixed event vocabulary (e.g. the one a model was trained with); an unknown event name then
            raises ``ValueError`` listing the known ones. ``None``: the sorted distinct names in the input.
        unknown_items: ``"error"`` (default) raises ``ValueError`` naming the rows whose item is not in the
            catalogue; ``"drop"`` drops them and counts them in ``Interactions.n_dropped``.

    Rows are numbered from 0 in input order, header excluded (CSV line = row + 2). Rows are sorted by (user,
    timestamp, item id, event) with ids in the project order (numbers first, numerically, then strings), so
    events sharing a timestamp keep a deterministic order; users are ordered the same way. A row equal to an
    earlier one in all four is a repeat of the same event and counts once (``Interactions.n_repeated``), as in the
    store's event log.

    Returns:
        :class:`Interactions` with ``N`` rows.
    """
    if unknown_items not in ("error", "drop"):
        raise ValueError(f"unknown_items: expected 'error' or 'drop', got {unknown_items!r}")
    df = read_table(source)
    try:
        return _interactions_from_frame(df, items, event_vocab, unknown_items)
    except ValueError as exc:
        if isinstance(source, pd.DataFrame):
            raise
        raise ValueError(f"{source}: {exc}") from exc  # the row and field alone don't say which file


def _interactions_from_frame(df: pd.DataFrame, items: ItemIndex, event_vocab: Sequence[str] | None,
                             unknown_items: str) -> Interactions:
    _require_columns(df, ["user_id", "item_id", "timestamp"], "interactions")
    df = df.reset_index(drop=True)

    item_strings = _id_strings(df["item_id"], "item_id")
    item = items._lookup.get_indexer(item_strings).astype(np.int64)
    unknown = item < 0
    n_dropped = 0
    if unknown.any():
        if unknown_items == "error":
            rows = _first_rows(unknown)
            pairs = ", ".join(f"data row {r + 1} (item_id {item_strings[r]!r})" for r in rows)
            raise ValueError(
                f"item_id: {int(unknown.sum())} row(s) name items that are not in the catalogue: {pairs}"
                " — pass unknown_items='drop' to skip them"
            )
        keep = ~unknown
        n_dropped = int(unknown.sum())
        df = df.loc[keep].reset_index(drop=True)
        item = item[keep]

    user_strings = _id_strings(df["user_id"], "user_id")
    timestamp = _timestamps(df["timestamp"])
    event, event_names = _event_codes(df, event_vocab)

    user_codes, uniques = pd.factorize(pd.Series(user_strings, dtype=object), sort=False)
    unique_ids = [str(u) for u in uniques]
    ranks = _sort_ranks(unique_ids)
    user = ranks[user_codes]
    user_ids = tuple(np.asarray(unique_ids, dtype=object)[np.argsort(ranks)].tolist())

    # ties at one second: item id order, then event (serving sorts its log the same way; file order is lost there)
    order = np.lexsort((event, items.sort_rank[item], timestamp, user))
    user, item, timestamp, event = user[order], item[order], timestamp[order], event[order]
    # sorted, so repeats are neighbours; serving's log keeps one of them and training must see what serving sees
    repeat = np.zeros(len(user), dtype=bool)
    repeat[1:] = ((user[1:] == user[:-1]) & (timestamp[1:] == timestamp[:-1]) & (item[1:] == item[:-1])
                  & (event[1:] == event[:-1]))
    if repeat.any():
        user, item, timestamp, event = user[~repeat], item[~repeat], timestamp[~repeat], event[~repeat]
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=len(user_ids)), out=offsets[1:])
    return Interactions(
        user=user,
        item=item,
        timestamp=timestamp,
        event=event,
        offsets=offsets,
        user_ids=user_ids,
        event_names=event_names,
        items=items,
        n_dropped=n_dropped,
        n_repeated=int(repeat.sum()),
    )


# --------------------------------------------------------------------------------------------------------------
# Sequences and the leave-one-out split
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sequences:
    """Per-user event sequences in CSR layout: row ``r`` is ``item[offsets[r]:offsets[r+1]]`` (oldest first).

    ``offsets (R+1,) int64``; ``item``, ``timestamp``, ``event`` ``(N,) int64``.
    """

    offsets: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    event: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """``(R,) int64`` events per row."""
        return np.diff(self.offsets)

    @property
    def row_of(self) -> np.ndarray:
        """``(N,) int64`` the row each event belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(item, timestamp, event)`` of row ``r``, each ``(len_r,)``."""
        s = slice(int(self.offsets[r]), int(self.offsets[r + 1]))
        return self.item[s], self.timestamp[s], self.event[s]

    def take(self, rows: np.ndarray) -> Sequences:
        """The sub-collection of ``rows`` (in that order)."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return Sequences(offsets, self.item[flat], self.timestamp[flat], self.event[flat])

    def append(self, item: np.ndarray, timestamp: np.ndarray, event: np.ndarray) -> Sequences:
        """Each row extended by one event: ``item``/``timestamp``/``event`` are ``(R,)``."""
        ends = self.offsets[1:]
        return Sequences(
            self.offsets + np.arange(len(self.offsets), dtype=np.int64),
            np.insert(self.item, ends, item),
            np.insert(self.timestamp, ends, timestamp),
            np.insert(self.event, ends, event),
        )


def _check_stage(stage: str) -> None:
    if stage not in ("valid", "test"):
        raise ValueError(f"stage: expected 'valid' or 'test', got {stage!r}")


@dataclass(frozen=True)
class Split:
    """Chronological leave-one-out split (README, "Evaluation protocol"): per kept user, last event = test, second
    last = valid.

    Users are addressed by their position ``0..n_users-1`` in the split (the ``user_index`` models receive);
    ``users (U,)`` maps positions to :class:`Interactions` user indices and ``user_ids (U,)`` to original ids.

    - ``train``: :class:`Sequences` of each user's training events (all but the last two), ``U`` rows.
    - ``valid_item``/``valid_timestamp``/``valid_event`` and ``test_*``: ``(U,) int64`` held-out events.
    """

    train: Sequences
    valid_item: np.ndarray
    valid_timestamp: np.ndarray
    valid_event: np.ndarray
    test_item: np.ndarray
    test_timestamp: np.ndarray
    test_event: np.ndarray
    users: np.ndarray
    user_ids: tuple[str, ...]
    items: ItemIndex
    event_names: tuple[str, ...]

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_events(self) -> int:
        return len(self.event_names)

    def target(self, stage: Stage) -> np.ndarray:
        """``(U,) int64`` the item each user is evaluated on at ``stage``."""
        _check_stage(stage)
        return self.valid_item if stage == "valid" else self.test_item

    def target_timestamp(self, stage: Stage) -> np.ndarray:
        """``(U,) int64`` the timestamp of each user's ``stage`` target event."""
        _check_stage(stage)
        return self.valid_timestamp if stage == "valid" else self.test_timestamp

    def context(self, stage: Stage) -> Sequences:
        """What a model sees before the ``stage`` target: train events (valid), train + valid event (test)."""
        _check_stage(stage)
        if stage == "valid":
            return self.train
        return self.train.append(self.valid_item, self.valid_timestamp, self.valid_event)

    def history(self, stage: Stage) -> Sequences:
        """Events whose items are excluded when ranking for ``stage``: the same events as :meth:`context`."""
        return self.context(stage)

    def train_item_mask(self) -> np.ndarray:
        """``(n_items,) bool``: items that occur in at least one user's training part."""
        mask = np.zeros(self.n_items, dtype=bool)
        mask[self.train.item] = True
        return mask

    def cold_users(self, stage: Stage = "test") -> np.ndarray:
        """Positions ``(C,) int64`` of users whose ``stage`` target never occurs in any user's training part."""
        return np.flatnonzero(~self.train_item_mask()[self.target(stage)]).astype(np.int64)

    def cold_test_users(self) -> np.ndarray:
        """Positions of users whose test item never occurs in training (``cold_users("test")``)."""
        return self.cold_users("test")

    def select(self, positions: np.ndarray | Sequence[int]) -> Split:
        """The split restricted to user ``positions`` (in that order); item and event vocabularies unchanged."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 1 or (len(positions) and (positions.min() < 0 or positions.max() >= self.n_users)):
            raise ValueError(f"positions: must be a 1-d array of user positions in [0, {self.n_users})")
        return Split(
            train=self.train.take(positions),
            valid_item=self.valid_item[positions],
            valid_timestamp=self.valid_timestamp[positions],
            valid_event=self.valid_event[positions],
            test_item=self.test_item[positions],
            test_timestamp=self.test_timestamp[positions],
            test_event=self.test_event[positions],
            users=self.users[positions],
            user_ids=tuple(self.user_ids[p] for p in positions.tolist()),
            items=self.items,
            event_names=self.event_names,
        )


def leave_one_out(inter: Interactions, min_interactions: int = 5) -> Split:
    """Chronological leave-one-out split; users with fewer than ``min_interactions`` interactions are dropped.

    Each kept user's last interaction is the test target, the second last the validation target, the rest
    training (RecBole ``LS: valid_and_test, order: TO``). ``min_interactions`` must be at least 3 so every kept
    user has a non-empty training part. Raises ``ValueError`` when no user has that many.
    """
    if min_interactions < 3:
        raise ValueError(f"min_interactions: must be >= 3 (train, valid and test), got {min_interactions}")
    lengths = inter.lengths
    kept = np.flatnonzero(lengths >= min_interactions).astype(np.int64)
    if len(kept) == 0:
        longest = int(lengths.max()) if len(lengths) else 0
        raise ValueError(
            f"leave_one_out: no user has {min_interactions} or more interactions ({len(lengths)} users, the longest "
            f"history has {longest}), so there is nothing to train or evaluate on")
    ends = inter.offsets[kept + 1]
    all_rows = Sequences(inter.offsets, inter.item, inter.timestamp, inter.event).take(kept)
    train_len = lengths[kept] - 2
    train_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
    np.cumsum(train_len, out=train_offsets[1:])
    # positions of training events inside all_rows (drop each row's last two)
    flat = np.repeat(all_rows.offsets[:-1] - train_offsets[:-1], train_len) + np.arange(
        train_offsets[-1], dtype=np.int64
    )
    train = Sequences(train_offsets, all_rows.item[flat], all_rows.timestamp[flat], all_rows.event[flat])
    valid_at, test_at = ends - 2, ends - 1
    return Split(
        train=train,
        valid_item=inter.item[valid_at],
        valid_timestamp=inter.timestamp[valid_at],
        valid_event=inter.event[valid_at],
        test_item=inter.item[test_at],
        test_timestamp=inter.timestamp[test_at],
        test_event=inter.event[test_at],
        users=kept,
        user_ids=tuple(inter.user_ids[u] for u in kept.tolist()),
        items=inter.items,
        event_names=inter.event_names,
    )


def hold_out_items(split: Split, fraction: float = 0.1, seed: int = 0) -> tuple[Split, np.ndarray]:
    """Cold-start protocol: a seeded ``fraction`` of the items that occur in ``split`` never reach training.

    Every training event of a held-out item is removed from every user's training part; validation and test
    targets are unchanged, so users whose target is held out are evaluated on an item the model has never been
    trained on (and rank it against the whole catalogue). Returns the reduced split and ``held_out (n_items,)
    bool``. The same ``seed`` always holds out the same items.

    Example::

        cold_split, held_out = hold_out_items(split, 0.1, seed=0)
        cold_split.cold_users("test")  # users whose test item was held out (or never trained on anyway)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction: must be in (0, 1), got {fraction}")
    occurring = np.unique(np.concatenate([split.train.item, split.valid_item, split.test_item]))
    n_held = int(round(fraction * len(occurring)))
    chosen = np.random.default_rng(seed).choice(occurring, size=n_held, replace=False)
    held_out = np.zeros(split.n_items, dtype=bool)
    held_out[chosen] = True
    train = split.train
    keep = ~held_out[train.item]
    kept_per_row = np.bincount(train.row_of[keep], minlength=len(train)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(kept_per_row)]).astype(np.int64)
    reduced = Sequences(offsets, train.item[keep], train.timestamp[keep], train.event[keep])
    return dataclasses.replace(split, train=reduced), held_out


# --------------------------------------------------------------------------------------------------------------
# Padded batches
# --------------------------------------------------------------------------------------------------------------


@dataclass
class SequenceBatch:
    """A batch of right-padded event sequences, for training windows and evaluation contexts alike.

    Shapes (``B`` sequences, ``L`` positions); position ``j < lengths[b]`` is real, the rest is padding:

    - ``items (B, L) int64``: item indices, padding ``n_items`` (one past the catalogue).
    - ``timestamps (B, L) int64``: unix seconds, padding 0.
    - ``events (B, L) int64``: event indices, padding ``n_events``.
    - ``lengths (B,) int64``: real positions per row (>= 1 for every row built from a split).
    - ``users (B,) int64``: split positions of the rows' users.
    - ``targets (B, L) int64 | None``: training only; the item to predict after position ``j``, or ``n_items``
      where position ``j`` is not a prediction target. ``target_timestamps``/``target_events`` likewise (pads 0 /
      ``n_events``). ``None`` in evaluation contexts.

    Example (a model that reads the last real position)::

        last = batch.items.gather(1, (batch.lengths - 1)[:, None])    # (B, 1)
    """

    items: torch.Tensor
    timestamps: torch.Tensor
    events: torch.Tensor
    lengths: torch.Tensor
    users: torch.Tensor
    n_items: int
    n_events: int
    targets: torch.Tensor | None = None
    target_timestamps: torch.Tensor | None = None
    target_events: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.items.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.items.shape[1])

    @property
    def mask(self) -> torch.Tensor:
        """``(B, L) bool``: real (non-padding) positions."""
        return torch.arange(self.max_len, device=self.items.device)[None, :] < self.lengths[:, None]

    @property
    def target_mask(self) -> torch.Tensor:
        """``(B, L) bool``: positions with a prediction target (training windows only)."""
        if self.targets is None:
            raise ValueError("targets: this batch has no targets (an evaluation context)")
        return self.targets != self.n_items

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The batch with every tensor moved to ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return SequenceBatch(
            items=move(self.items),
            timestamps=move(self.timestamps),
            events=move(self.events),
            lengths=move(self.lengths),
            users=move(self.users),
            n_items=self.n_items,
            n_events=self.n_events,
            targets=move(self.targets),
            target_timestamps=move(self.target_timestamps),
            target_events=move(self.target_events),
        )


def tail_batch(
    seqs: Sequences,
    rows: np.ndarray,
    max_len: int | None,
    n_items: int,
    n_events: int,
    users: np.ndarray | None = None,
) -> SequenceBatch:
    """The last ``max_len`` events of each of ``rows`` as a right-padded :class:`SequenceBatch`.

    ``max_len=None`` keeps whole rows (``L`` = the longest row in the batch). ``users`` (default ``rows``) fills
    ``batch.users``. Vectorised: one gather for the whole batch.
    """
    rows = np.asarray(rows, dtype=np.int64)
    full = seqs.lengths[rows]
    lengths = full if max_len is None else np.minimum(full, max_len)
    width = max(int(lengths.max()) if len(rows) else 0, 1)
    if max_len is not None:
        if max_len < 1:
            raise ValueError(f"max_len: must be >= 1 or None, got {max_len}")
        width = max_len
    start = seqs.offsets[rows + 1] - lengths
    pos = np.arange(width, dtype=np.int64)[None, :]
    real = pos < lengths[:, None]
    # padding positions read event 0 and are overwritten: O(batch), where appending a sentinel copied every event
    idx = np.where(real, start[:, None] + pos, 0)

    def gather(values: np.ndarray, pad: int) -> torch.Tensor:
        return torch.from_numpy(np.where(real, values[idx], pad) if len(values) else np.full(idx.shape, pad))

    return SequenceBatch(
        items=gather(seqs.item, n_items),
        timestamps=gather(seqs.timestamp, 0),
        events=gather(seqs.event, n_events),
        lengths=torch.from_numpy(lengths.astype(np.int64)),
        users=torch.from_numpy(np.asarray(rows if users is None else users, dtype=np.int64).copy()),
        n_items=n_items,
        n_events=n_events,
    )


def context_batch(split: Split, stage: Stage, users: np.ndarray, max_len: int | None = 50) -> SequenceBatch:
    """Evaluation input for user positions ``users``: the last ``max_len`` events of ``split.context(stage)``."""
    return tail_batch(split.context(stage), users, max_len, split.n_items, split.n_events)


@dataclass(frozen=True)
class Windows:
    """Padded training windows for next-item prediction, built once per split by :func:`training_windows`.

    Arrays ``(W, L) int64``: ``items``/``timestamps``/``events`` (inputs), ``targets``/``target_timestamps``/
    ``target_events`` (the next event after each input position; ``n_items``/0/``n_events`` where not a target);
    ``lengths (W,)`` and ``users (W,)`` (split positions). Every training position except each user's first is a
    target in exactly one window.
    """

    items: np.ndarray
    timestamps: np.ndarray
    events: np.ndarray
    targets: np.ndarray
    target_timestamps: np.ndarray
    target_events: np.ndarray
    lengths: np.ndarray
    users: np.ndarray
    n_items: int
    n_events: int

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def n_targets(self) -> int:
        """Number of prediction targets over all windows."""
        return int((self.targets != self.n_items).sum())

    def batch(self, index: np.ndarray) -> SequenceBatch:
        """Windows ``index`` as a :class:`SequenceBatch` (targets included)."""
        t = torch.from_numpy
        return SequenceBatch(
            items=t(self.items[index]),
            timestamps=t(self.timestamps[index]),
            events=t(self.events[index]),
            lengths=t(self.lengths[index]),
            users=t(self.users[index]),
            n_items=self.n_items,
            n_events=self.n_events,
            targets=t(self.targets[index]),
            target_timestamps=t(self.target_timestamps[index]),
            target_events=t(self.target_events[index]),
        )

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None, drop_last: bool = False
    ) -> Iterator[SequenceBatch]:
        """Yield batches of ``batch_size`` windows, shuffled with ``rng`` (in order when ``rng`` is None)."""
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        order = np.arange(len(self)) if rng is None else rng.permutation(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])


def training_windows(split: Split, max_len: int = 50, stride: int | None = None) -> Windows:
    """Cut each user's training sequence into next-item windows of at most ``max_len`` positions.

    A user with training items ``s_0..s_{n-1}`` gives inputs ``s_0..s_{n-2}`` with targets ``s_1..s_{n-1}``.
    Windows are cut from the end, so the most recent window is full and ends at the last training event; an
    earlier window ends ``stride`` positions before the next one. ``stride`` defaults to ``max_len``
    (consecutive, non-overlapping windows); a smaller stride gives overlapping windows, i.e. more context, where
    only each window's last ``stride`` positions are targets. Either way every training position but the first is
    a prediction target exactly once. Vectorised, no per-user Python loop.

    Returns:
        :class:`Windows` with arrays ``(W, max_len)``.
    """
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride: must be in [1, max_len={max_len}], got {stride}")
    train = split.train
    m = np.maximum(train.lengths - 1, 0)  # (U,) prediction positions per user
    per_user = -(-m // stride)  # ceil
    n_windows = int(per_user.sum())
    user = np.repeat(np.arange(split.n_users, dtype=np.int64), per_user)
    first = np.zeros(split.n_users + 1, dtype=np.int64)
    np.cumsum(per_user, out=first[1:])
    k = np.arange(n_windows, dtype=np.int64) - first[user]  # 0 = most recent window
    end = m[user] - k * stride  # exclusive end of the input positions
    begin = np.maximum(end - max_len, 0)
    target_from = np.maximum(end - stride, 0) - begin  # first window column that is a target
    lengths = end - begin
    col = np.arange(max_len, dtype=np.int64)[None, :]
    real = col < lengths[:, None]
    is_target = real & (col >= target_from[:, None])
    n_items, n_events = split.n_items, split.n_events
    pad = len(train.item)  # index of a sentinel appended after the last event
    src = np.where(real, train.offsets[user][:, None] + begin[:, None] + col, pad)
    tgt = np.where(is_target, src + 1, pad)
    item_src = np.append(train.item, n_items)
    ts_src = np.append(train.timestamp, 0)
    ev_src = np.append(train.event, n_events)
    return Windows(
        items=item_src[src],
        timestamps=ts_src[src],
        events=ev_src[src],
        targets=item_src[tgt],
        target_timestamps=ts_src[tgt],
        target_events=ev_src[tgt],
        lengths=lengths,
        users=user,
        n_items=n_items,
        n_events=n_events,
    )
