"""Interactions: the catalogue item index and every interaction row, sorted into per-user sequences.

    catalogue rows ──► ItemIndex                      (catalogue item ids <-> dense indices 0..n_items-1)
    interaction rows ──► load_interactions ──► Interactions   (sorted by user, timestamp, item_id; CSR by user)

Internally items, users and events are dense ``int64`` indices; ids keep the project order
(:func:`mmrec.io.values.sort_ranks`).

Example::

    items = ItemIndex.from_catalog("items.csv")
    inter = load_interactions("interactions.csv", items)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from ..io.events import DEFAULT_EVENT
from ..io.tables import TableSource, read_table, require_columns
from ..io.values import MAX_LISTED, first_rows, id_strings, row_numbers, sort_ranks, timestamps, with_time_column

__all__ = ["DEFAULT_EVENT", "ItemIndex", "Interactions", "load_interactions"]


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
        object.__setattr__(self, "_ranks", sort_ranks(ids))

    @classmethod
    def from_catalog(cls, source: TableSource, id_column: str = "item_id") -> ItemIndex:
        """Index of the catalogue file/DataFrame ``source`` (its ``id_column``), in row order."""
        df = read_table(source, id_columns=(id_column,))
        require_columns(df, [id_column], "catalogue")
        return cls(tuple(id_strings(df[id_column], id_column).tolist()))

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
            listed = pd.unique(values[unknown])[:MAX_LISTED].tolist()
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
    #: False when the input ordered events by ``seq_index`` instead of timestamps (an order, not time)
    timed: bool = True

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
    values = id_strings(df["event"], "event")
    if event_vocab is None:
        names = tuple(sorted(pd.unique(values).tolist()))
    codes = pd.Index(names, dtype=object).get_indexer(values)
    unknown = codes < 0
    if unknown.any():
        rows = first_rows(unknown)
        raise ValueError(
            f"event: unknown event name(s) {pd.unique(values[unknown])[:MAX_LISTED].tolist()} "
            f"(first data rows {row_numbers(rows)}); known events: {list(names)}"
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
            ``timestamp`` (or, without it, ``seq_index``: an order, no time) and optionally ``event`` (string). Other columns (e.g. ``rating``) are ignored.
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
    df, timed = with_time_column(df)
    require_columns(df, ["user_id", "item_id", "timestamp"], "interactions")
    df = df.reset_index(drop=True)

    item_strings = id_strings(df["item_id"], "item_id")
    item = items._lookup.get_indexer(item_strings).astype(np.int64)
    unknown = item < 0
    n_dropped = 0
    if unknown.any():
        if unknown_items == "error":
            rows = first_rows(unknown)
            pairs = ", ".join(f"data row {r + 1} (item_id {item_strings[r]!r})" for r in rows)
            raise ValueError(
                f"item_id: {int(unknown.sum())} row(s) name items that are not in the catalogue: {pairs}"
                " — pass unknown_items='drop' to skip them"
            )
        keep = ~unknown
        n_dropped = int(unknown.sum())
        df = df.loc[keep].reset_index(drop=True)
        item = item[keep]

    user_strings = id_strings(df["user_id"], "user_id")
    timestamp = timestamps(df["timestamp"])
    event, event_names = _event_codes(df, event_vocab)

    user_codes, uniques = pd.factorize(pd.Series(user_strings, dtype=object), sort=False)
    unique_ids = [str(u) for u in uniques]
    ranks = sort_ranks(unique_ids)
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
        timed=timed,
    )


