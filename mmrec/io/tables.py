"""Reading tables: CSV/TSV, Parquet and JSON-lines files into DataFrames, with errors that name the file and line.

Every reader of user-supplied files (catalogue, interactions, events) goes through here, so a non-UTF-8 line, a
row with more fields than the header or a TSV named ``.csv`` gets the same clear message everywhere.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Union

import pandas as pd

__all__ = ["TableSource", "read_table", "read_csv_strict", "read_json_records", "read_parquet", "require_columns",
           "separator_hint"]

TableSource = Union[str, Path, pd.DataFrame]


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
        return read_parquet(path)
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
    """Turn a decoding error, which names neither file nor line, into one that names both; a ``.gz`` file that is
    not gzip (or is cut short) into one that names the file."""
    try:
        yield
    except UnicodeDecodeError:
        raise ValueError(f"{path}: {_first_non_utf8_line(path)} is not UTF-8 text; save the file as UTF-8") from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise ValueError(f"{path}: not a readable gzip file ({exc})") from None


def read_parquet(path: Path) -> pd.DataFrame:
    """``pd.read_parquet``, whose errors on a file that is not Parquet (or one pandas cannot convert) name no file."""
    import pyarrow

    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None


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
        # one object of objects: what DataFrame.to_json writes by default ({"column": {"row": value}}); anything
        # else on one line is read as JSON lines below (an invalid one is an error naming its line)
        try:
            document = json.loads(stripped)
        except json.JSONDecodeError:
            document = None
        if isinstance(document, dict) and document and all(isinstance(v, dict) for v in document.values()):
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

def require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
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

