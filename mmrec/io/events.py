"""The one reader of event files: interactions, text-bearing context events (tags, reviews, queries) and the new
events a refresh applies all go through :func:`read_events`.

It reads leniently and marks what it could not read, because each caller has its own rule for such rows: training
drops context events it cannot place, a refresh rejects them one by one with a reason, and the interactions a model
trains on were already checked strictly by :func:`mmrec.data.load_interactions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..encoders.preprocess import clean_behaviour_texts
from .tables import TableSource, read_table, separator_hint
from .values import ORDER_COLUMN, ids_or_empty, readable_timestamps, with_time_column

__all__ = ["DEFAULT_EVENT", "TEXT_COLUMNS", "EventTable", "read_events"]

DEFAULT_EVENT = "interaction"
"""Event name given to every interaction row when the input has no ``event`` column."""

TEXT_COLUMNS = ("text", "tag", "review", "query")
"""Columns that carry an event's text, in the order they are looked for (the first present one is read)."""


@dataclass(frozen=True)
class EventTable:
    """The rows of an events file, ``(N,)`` arrays in file order.

    - ``user_id``, ``item_id``: stripped id strings, ``""`` where missing.
    - ``timestamp (N,) int64`` unix seconds; ``readable (N,) bool`` is False where the value could not be read (its
      ``timestamp`` is then 0).
    - ``event``: the ``event`` column as stripped strings (``""`` where missing), ``None`` when the file has none.
    - ``text``: the first of :data:`TEXT_COLUMNS` present, cleaned as behaviour text (``""`` where empty);
      ``text_column`` names it (``None``: the file has no text column, every text is ``""``).
    - ``columns``: the file's columns.
    - ``timed``: ``False`` when the file orders events by :data:`~mmrec.io.values.ORDER_COLUMN` instead of a
      ``timestamp`` (read into ``timestamp``: an order, not time).
    """

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    readable: np.ndarray
    event: np.ndarray | None
    text: np.ndarray
    text_column: str | None
    columns: tuple[str, ...]
    timed: bool = True

    def __len__(self) -> int:
        return len(self.user_id)

    def event_names(self, default: str) -> np.ndarray:
        """``(N,)`` event names: the ``event`` column, or ``default`` for every row of a file without one."""
        return self.event if self.event is not None else np.full(len(self), default, dtype=object)


def read_events(source: TableSource, *, need_text: bool = False) -> EventTable:
    """Read ``source`` (a file in any format :func:`mmrec.io.tables.read_table` reads, or a DataFrame) with columns
    ``user_id``, ``item_id``, ``timestamp`` (or, without it, an order: ``seq_index``) and optionally ``event`` and one
    of :data:`TEXT_COLUMNS`.

    Raises ``ValueError`` naming the file and the columns it has when one of the three is missing, or when
    ``need_text`` and no text column is present."""
    frame, timed = with_time_column(read_table(source))
    name = "the events" if isinstance(source, pd.DataFrame) else source
    text_column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in frame.columns]
    if missing:
        missing = [f"timestamp (or {ORDER_COLUMN})" if c == "timestamp" else c for c in missing]
        raise ValueError(f"events file lacks column(s) {missing} in {name} (columns: {list(frame.columns)})"
                         f"{separator_hint(frame.columns)}")
    if need_text and text_column is None:
        raise ValueError(f"{name}: context events need user_id, item_id, timestamp and one of {TEXT_COLUMNS} "
                         f"(columns: {list(frame.columns)})")
    seconds, readable = readable_timestamps(frame["timestamp"])
    texts = clean_behaviour_texts(frame[text_column].tolist()) if text_column else [""] * len(frame)
    return EventTable(
        user_id=ids_or_empty(frame["user_id"], "user_id").to_numpy(dtype=object),
        item_id=ids_or_empty(frame["item_id"], "item_id").to_numpy(dtype=object),
        timestamp=seconds,
        readable=readable,
        event=ids_or_empty(frame["event"], "event").to_numpy(dtype=object) if "event" in frame.columns else None,
        text=np.asarray(texts, dtype=object),
        text_column=text_column,
        columns=tuple(frame.columns),
        timed=timed,
    )
