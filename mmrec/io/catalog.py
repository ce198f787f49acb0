"""Reading a catalogue file (CSV, JSONL or Parquet) into validated rows of text and image references."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..encoders.preprocess import CleanConfig, clean_text
from .tables import read_csv_strict, read_json_records, separator_hint

__all__ = ["CatalogRow", "read_catalog_table", "read_catalog", "compose_text"]

ID_COLUMN = "item_id"
IMAGE_COLUMN = "image_path"
#: Columns never used as item text by default: identifiers (``item_id`` and any ``*_id``) and the image path.
NON_TEXT_COLUMNS = {ID_COLUMN, IMAGE_COLUMN}


def default_text_columns(columns: Sequence[str]) -> list[str]:
    return [c for c in columns if c not in NON_TEXT_COLUMNS and not c.endswith("_id")]


@dataclass(frozen=True)
class CatalogRow:
    """One catalogue item: ``text`` is cleaned (may be ``""``), ``image`` is a resolved path or ``None``.

    ``image_listed`` is False when the row says nothing about images (no ``image_path`` column, or images are off),
    as opposed to an empty ``image_path``, which says the item has no image."""

    row: int
    item_id: str
    title: str
    text: str
    image: Path | None
    image_listed: bool = True


def read_catalog_table(path: str | Path) -> pd.DataFrame:
    """Read CSV, JSONL/NDJSON or Parquet with every column as text (ids like ``0042`` keep their zeros)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalogue file not found: {path}")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    if suffix in {".csv", ".csv.gz", ".tsv"}:
        return read_csv_strict(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    if suffix in {".jsonl", ".ndjson", ".jsonl.gz", ".json"}:
        frame = read_json_records(path)
    elif suffix in {".parquet", ".pq"}:
        frame = pd.read_parquet(path)
    else:
        raise ValueError(f"unsupported catalogue format {path.suffix!r} for {path}: use .csv, .tsv, "
                         ".jsonl/.ndjson/.json or .parquet")
    return frame.apply(lambda column: column.map(_as_text))


def _as_text(value) -> str:
    """One Parquet/JSON cell as the text a CSV user would have written in it.

    Lists, tuples and numpy arrays (Parquet list columns read back as arrays) join with ``|``, nested ones
    recursively, as CSV users write genres (:func:`compose_text` turns ``|`` into commas); integral floats lose the
    ``.0`` (a year read as 1995.0 is "1995"); other floats keep their shortest repr at their own precision (float32
    0.1 is "0.1", not 0.10000000149); missing values (None, NaN, ``pd.NA``, ``NaT``) are ""; bytes are UTF-8 text.
    """
    if isinstance(value, (list, tuple, np.ndarray)):
        return "|".join(_as_text(v) for v in (value.ravel() if isinstance(value, np.ndarray) else value))
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else str(value)
    return str(value)


def compose_text(fields: dict[str, str], clean: CleanConfig = CleanConfig()) -> str:
    """Join an item's text fields into one sentence-like string for the encoder.

    The first field is kept as is (usually the title); others become ``"name: value"``; ``|``-separated lists
    (MovieLens genres and tags) become comma lists.

    >>> compose_text({"title": "Toy Story (1995)", "genres": "Animation|Comedy"})
    'Toy Story (1995). genres: Animation, Comedy'
    """
    parts = []
    for i, (name, value) in enumerate(fields.items()):
        value = clean_text(value.replace("|", ", ") if value else value, clean)
        if value:
            parts.append(value if i == 0 else f"{name}: {value}")
    return clean_text(". ".join(parts), clean)


def _warn_behaviour_columns(path, text_columns: Sequence[str]) -> None:
    """Warn when user tags become item text: training only finds ``name: ...`` fields after the first column, so
    this is the one place that sees every such column, the first included."""
    tags = [c for c in text_columns if c.strip().lower() in ("tag", "tags")]
    if tags:
        others = ",".join(c for c in text_columns if c not in tags) or "title"
        warnings.warn(
            f"{path}: text column(s) {tags} become item text. If they gather user tags written at any time "
            "(MovieLens items.csv's `tags` does), evaluation reads behaviour from after the split; for a fair "
            f"evaluation embed with --text-columns {others} and pass the tags as --context-events", stacklevel=3)


def read_catalog(
    path: str | Path,
    text_columns: Sequence[str] | None = None,
    images_root: str | Path | None = None,
    use_images: bool = True,
) -> list[CatalogRow]:
    """Validate a catalogue and resolve its rows.

    Args:
        path: CSV/JSONL/Parquet with ``item_id``, text columns and an optional ``image_path``.
        text_columns: columns joined into the item text; default: every column but ``image_path`` and ids (``item_id``, ``*_id``).
        images_root: folder ``image_path`` is relative to; default: the catalogue file's folder. Absolute image
            paths are kept as they are here; embed reads only images inside this folder
            (:func:`mmrec.embed.read_image`).
        use_images: ``False`` ignores ``image_path`` (a text-only run).

    Raises ``ValueError`` naming the row for a missing ``item_id``, duplicate ids and unknown text columns.
    """
    frame = read_catalog_table(path)
    if ID_COLUMN not in frame.columns:
        raise ValueError(f"{path}: no {ID_COLUMN!r} column (columns: {list(frame.columns)}){separator_hint(frame.columns)}")
    if text_columns is None:
        text_columns = default_text_columns(list(frame.columns))
    missing = [c for c in text_columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: text column(s) {missing} not found (columns: {list(frame.columns)})")
    _warn_behaviour_columns(path, text_columns)
    ids = frame[ID_COLUMN].str.strip()
    blank = ids.index[ids == ""].tolist()
    if blank:
        raise ValueError(f"{path}: empty item_id at data row(s) {[r + 1 for r in blank[:10]]}")
    duplicated = ids[ids.duplicated(keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        rows = [r + 1 for r in duplicated.index[duplicated == first][:5]]
        raise ValueError(f"{path}: item_id {first!r} appears more than once (data rows {rows})")

    root = Path(images_root) if images_root is not None else Path(path).parent
    if use_images and images_root is not None and not root.is_dir():
        raise ValueError(f"images_root {root}: no such folder (every item would be stored without its image)")
    has_images = use_images and IMAGE_COLUMN in frame.columns
    records = frame.to_dict("records")
    rows = []
    for i, record in enumerate(records):
        fields = {c: record[c] for c in text_columns}
        image = record.get(IMAGE_COLUMN, "").strip() if has_images else ""
        rows.append(
            CatalogRow(
                row=i + 1,
                item_id=ids.iat[i],
                title=clean_text(fields[text_columns[0]]) if text_columns else "",
                text=compose_text(fields),
                image=(root / image) if image else None,
                image_listed=has_images,
            )
        )
    return rows
