"""What a training run reads: interactions and context events against the store's items, the split, the merged
behaviour, item features and event-text vectors; and the store's event log rows for what it read.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.batch import N_GAP_BUCKETS
from ..data.behaviour import Behaviour, ContextEvents, build_behaviour
from ..data.interactions import ItemIndex, load_interactions
from ..data.split import Split, hold_out_items, leave_one_out
from ..features import ItemFeatures, embed_event_texts, item_features
from ..io.events import read_events
from ..store import Store

__all__ = ["TrainingData", "load_training_data", "event_log_rows"]


@dataclass
class TrainingData:
    """Everything a training run reads: the merged behaviour (and its split), item features ``(N items)`` and event
    texts ``text_table (T, width)``, the event vocabulary and the store's encoders."""

    behaviour: Behaviour
    features: ItemFeatures
    item_ids: tuple[str, ...]
    event_names: tuple[str, ...]
    text_table: torch.Tensor
    encoders: dict[str, list[str]]
    n_context_dropped: int = 0
    held_out: np.ndarray | None = None

    @property
    def split(self) -> Split:
        return self.behaviour.split


def _context_events(path, split: Split, items: ItemIndex, store: Store, text_encoder,
                    event_names: Sequence[str] | None = None) -> tuple[ContextEvents, int]:
    """Text-bearing events of the split's users, their texts cleaned and embedded; returns them and the number of
    rows dropped (unknown user or item, empty text, bad timestamp, a repeat of an earlier row). ``event_names``:
    a trained model's event vocabulary, which the events' codes must follow (an event it lacks is an error)."""
    table = read_events(path, need_text=True)
    if table.timed != split.timed:  # an order and a time cannot be interleaved
        kinds = {True: "timestamp", False: "seq_index"}
        raise ValueError(f"{path if isinstance(path, (str, Path)) else 'context events'}: ordered by "
                         f"{kinds[table.timed]}, but the interactions by {kinds[split.timed]}: give both the same "
                         "column")
    # Without an `event` column the event is named after the text column: tags.csv rows are "tag" events.
    events = table.event_names(table.text_column)
    user_pos = pd.Index(split.user_ids).get_indexer(table.user_id)
    item_pos = pd.Index(items.ids).get_indexer(table.item_id)
    usable = (user_pos >= 0) & (item_pos >= 0) & (table.text != "") & table.readable
    # one of equal (user, timestamp, item, event, cleaned text) rows, as the store's event log keeps
    repeat = pd.DataFrame({"u": user_pos, "t": table.timestamp, "i": item_pos, "e": events,
                           "x": table.text}).duplicated().to_numpy()
    keep = np.flatnonzero(usable & ~repeat)
    names = tuple(split.event_names) + tuple(sorted(set(events[keep]) - set(split.event_names)))
    if event_names is not None:
        unknown = sorted(set(names) - set(event_names))
        if unknown:
            raise ValueError(f"{path}: event(s) {unknown} are not among the model's events {list(event_names)}")
        names = tuple(event_names)
    unique, text_index = np.unique(table.text[keep].astype(str), return_inverse=True)
    return ContextEvents(
        user=user_pos[keep].astype(np.int64),
        item=item_pos[keep].astype(np.int64),
        timestamp=table.timestamp[keep],
        event=pd.Index(names).get_indexer(events[keep]).astype(np.int64),
        text=text_index.reshape(-1).astype(np.int64),
        text_vectors=embed_event_texts(store, unique.tolist(), text_encoder),
        event_names=names,
    ), int(len(table) - len(keep))


def load_training_data(
    store: Store,
    interactions,
    context_events=None,
    text_encoder=None,
    unknown_items: str = "error",
    n_gap_buckets: int = N_GAP_BUCKETS,
    hold_out: float = 0.0,
    hold_out_seed: int = 0,
    event_names: Sequence[str] | None = None,
    interaction_events: Sequence[str] | None = None,
) -> TrainingData:
    """Read interactions (and optional text-bearing context events such as ``tags.csv``) against the store's
    items and build the leave-one-out split and behaviour sequences.

    ``event_names`` / ``interaction_events``: a trained model's event vocabulary (all events / those of the
    interactions), so evaluation codes events as training did; a name outside it is an error.

    ``hold_out > 0`` applies the cold-start protocol (:func:`mmrec.data.split.hold_out_items`): that share of items,
    chosen by ``hold_out_seed``, is removed from training, their context events (tags) included."""
    item_ids = store.item_ids()
    if not item_ids:
        raise ValueError(f"store {store.path} has no items: run `mmrec embed` first")
    tagged = store.items_with_text_field("tags")
    if tagged:
        warnings.warn(
            f"store {store.path}: the item text of {tagged} items holds a 'tags' column. If it gathers tags written "
            "at any time (MovieLens items.csv's does), validation and test metrics read behaviour from after the "
            "split; for a fair evaluation embed with --text-columns title,genres and pass tags as --context-events",
            stacklevel=2)
    items = ItemIndex(tuple(item_ids))
    inter = load_interactions(interactions, items, event_vocab=interaction_events, unknown_items=unknown_items)
    source = interactions if isinstance(interactions, (str, Path)) else "interactions"
    if inter.n_dropped:
        warnings.warn(f"{source}: skipped {inter.n_dropped} interaction rows naming items the store does not "
                      "hold", stacklevel=2)
    if inter.n_repeated:
        warnings.warn(f"{source}: {inter.n_repeated} rows repeat an earlier row's user, timestamp, item and "
                      "event; each such event counts once", stacklevel=2)
    split = leave_one_out(inter)
    held_out = None
    if hold_out > 0:
        split, held_out = hold_out_items(split, hold_out, hold_out_seed)
    context, dropped = (None, 0)
    if context_events is not None:
        context, dropped = _context_events(context_events, split, items, store, text_encoder, event_names)
        if held_out is not None:
            context = context.without_items(held_out)
    behaviour = build_behaviour(split, context, n_gap_buckets)
    names = context.event_names if context is not None else tuple(event_names or split.event_names)
    features = item_features(store, item_ids, split.train_item_mask())
    return TrainingData(
        behaviour=behaviour, features=features, item_ids=tuple(item_ids), event_names=names,
        text_table=torch.from_numpy(behaviour.text_vectors), encoders=store.encoders(), n_context_dropped=dropped,
        held_out=held_out,
    )


def event_log_rows(interactions, context_events, data: TrainingData) -> list[tuple[str, int, str, str, str]]:
    """Every user's events (all interactions, including held-out ones, and text events) as store log rows
    ``(user_id, timestamp, item_id, event, text)``, as training read them: interactions of items the store holds,
    text events of a user with interactions, with a readable timestamp and a text, and only events of the model's
    vocabulary. :func:`mmrec.train.train_store` makes them the whole event log."""
    inter = read_events(interactions)
    rows = pd.DataFrame({"user_id": inter.user_id, "timestamp": inter.timestamp, "item_id": inter.item_id,
                         "event": inter.event_names(data.event_names[0]), "text": ""})
    if context_events is not None:
        ctx = read_events(context_events, need_text=True)
        rows = pd.concat([rows, pd.DataFrame({
            "user_id": ctx.user_id, "timestamp": ctx.timestamp, "item_id": ctx.item_id,
            "event": ctx.event_names(ctx.text_column), "text": ctx.text,
        # training skips text events without text, and those of users without interactions (it reads no such user)
        })[ctx.readable & (pd.Index(data.split.user_ids).get_indexer(ctx.user_id) >= 0) & (ctx.text != "")]])
    rows = rows[rows.item_id.isin(data.item_ids) & rows.event.isin(data.event_names)]
    return list(rows[["user_id", "timestamp", "item_id", "event", "text"]].itertuples(index=False, name=None))
