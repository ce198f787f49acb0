"""Behaviour sequences: a split's interactions merged with text-bearing events, and the windows and contexts cut
from them for every model.

The evaluation split (:mod:`mmrec.data.split`) is defined on interactions only. Behaviour events that carry text (tags,
reviews, queries) are context: they enter the GRU in time order but are never prediction targets, and only those
that happened before a target can influence its prediction (at an equal timestamp, interactions come first, so a
tag written in the same second as the held-out item is not seen when predicting it). A behaviour built without
context events holds the split's interactions alone: what the ID-only baselines read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from .batch import N_GAP_BUCKETS, NO_TEXT, SequenceBatch, Windows, gap_buckets
from .split import Split, Stage

__all__ = ["Behaviour", "ContextEvents", "build_behaviour"]


@dataclass
class Behaviour:
    """Every kept user's merged event sequence, in CSR layout aligned with ``split``.

    Flat arrays ``(E,)``: ``item``, ``timestamp``, ``event``, ``text`` (row of ``text_vectors`` or -1),
    ``is_interaction``; ``offsets (U+1,)``; ``valid_at``/``test_at (U,)``: flat positions of each user's validation
    and test interaction. ``text_vectors (T, text_dim)`` float32 (``(0, 0)`` without text events).
    """

    offsets: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    event: np.ndarray
    text: np.ndarray
    is_interaction: np.ndarray
    valid_at: np.ndarray
    test_at: np.ndarray
    text_vectors: np.ndarray
    split: Split
    n_items: int
    n_events: int
    n_gap_buckets: int = N_GAP_BUCKETS

    @cached_property
    def gaps(self) -> np.ndarray:
        """``(E,)`` gap bucket of each event: time since the user's previous event (first event: 0); all 0 when
        events are ordered without time (``seq_index``)."""
        if not self.split.timed:
            return np.zeros(len(self.item), np.int64)
        previous = np.concatenate([[0], self.timestamp[:-1]])
        first = np.zeros(len(self.item), dtype=bool)
        first[self.offsets[:-1][self.offsets[:-1] < len(self.item)]] = True
        return gap_buckets(np.where(first, 0, self.timestamp - previous), self.n_gap_buckets)

    def stage_end(self, stage: Stage | str) -> np.ndarray:
        """``(U,)`` flat position (exclusive) where each user's context ends for ``stage``: ``"train"`` and
        ``"valid"`` end before the validation interaction, ``"test"`` before the test interaction."""
        if stage in ("train", "valid"):
            return self.valid_at
        if stage == "test":
            return self.test_at
        raise ValueError(f"stage must be 'train', 'valid' or 'test', got {stage!r}")

    def _gather(self, starts: np.ndarray, lengths: np.ndarray, width: int) -> dict[str, np.ndarray]:
        pos = np.arange(width, dtype=np.int64)[None, :]
        real = pos < lengths[:, None]
        idx = np.where(real, starts[:, None] + pos, 0)
        gaps = self.gaps
        return {
            "items": np.where(real, self.item[idx], self.n_items),
            "events": np.where(real, self.event[idx], 0),
            "gaps": np.where(real, gaps[idx], 0),
            "texts": np.where(real, self.text[idx], NO_TEXT),
        }

    def context(self, stage: Stage, users: np.ndarray, max_len: int | None) -> SequenceBatch:
        """The last ``max_len`` events (``None``: all) before each user's ``stage`` target, as a batch without
        targets, ``L`` = the longest row (at least 1)."""
        users = np.asarray(users, dtype=np.int64)
        end = self.stage_end(stage)[users]
        start = self.offsets[users] if max_len is None else np.maximum(self.offsets[users], end - max_len)
        lengths = end - start
        arrays = self._gather(start, lengths, max(int(lengths.max(initial=0)), 1))
        return SequenceBatch(
            **{k: torch.from_numpy(v) for k, v in arrays.items()},
            lengths=torch.from_numpy(lengths), users=torch.from_numpy(users), n_items=self.n_items,
        )

    def windows(self, max_len: int, stride: int | None = None) -> Windows:
        """Training windows over each user's events before validation (vectorised, no loop per user).

        Slot ``j`` of a user predicts event ``j`` from the state after events ``< j`` (slot 0: from the initial
        state). Windows are cut from the end with inputs ``[b, e)``, ``e - b <= max_len``; each interaction slot
        is a target in exactly one window, and with ``stride < max_len`` windows overlap so early targets of a
        window still see ``max_len - stride`` events of context.
        """
        stride = max_len if stride is None else stride
        if not 1 <= stride <= max_len:
            raise ValueError(f"stride must be in [1, max_len={max_len}], got {stride}")
        n = self.valid_at - self.offsets[:-1]  # (U,) events before validation
        per_user = np.maximum(-(-(n - 1) // stride), 1)
        user = np.repeat(np.arange(len(n), dtype=np.int64), per_user)
        first = np.concatenate([[0], np.cumsum(per_user)])
        k = np.arange(len(user), dtype=np.int64) - first[user]  # 0 = most recent window
        e = np.maximum(n[user] - 1 - k * stride, 0)
        b = np.maximum(e - max_len, 0)
        oldest = k == per_user[user] - 1
        low = np.where(oldest, 0, np.maximum(e - stride, 0) + 1)  # first slot this window owns
        start = self.offsets[user] + b
        arrays = self._gather(start, e - b, max_len)
        cols = np.arange(max_len + 1, dtype=np.int64)[None, :]
        slot = b[:, None] + cols
        owned = (slot >= low[:, None]) & (slot <= e[:, None]) & (slot < n[user][:, None])
        flat = np.where(owned, self.offsets[user][:, None] + slot, 0)
        owned &= self.is_interaction[flat]
        targets = np.where(owned, self.item[flat], self.n_items)
        return Windows(arrays=arrays, lengths=e - b, users=user, targets=targets, n_items=self.n_items)


def build_behaviour(
    split: Split,
    context_events: ContextEvents | None = None,
    n_gap_buckets: int = N_GAP_BUCKETS,
) -> Behaviour:
    """Merge ``split``'s interactions (train, valid, test) with text-bearing ``context_events`` per user."""
    u = split.n_users
    train = split.train
    lengths = train.lengths + 2
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n_inter = int(offsets[-1])
    # Interactions in split order: train events, then the valid and the test interaction of each user.
    tail = offsets[1:]
    flat_train = np.repeat(offsets[:-1] - train.offsets[:-1], train.lengths) + np.arange(len(train.item))
    item = np.empty(n_inter, np.int64)
    ts = np.empty(n_inter, np.int64)
    ev = np.empty(n_inter, np.int64)
    item[flat_train], ts[flat_train], ev[flat_train] = train.item, train.timestamp, train.event
    item[tail - 2], ts[tail - 2], ev[tail - 2] = split.valid_item, split.valid_timestamp, split.valid_event
    item[tail - 1], ts[tail - 1], ev[tail - 1] = split.test_item, split.test_timestamp, split.test_event
    user = np.repeat(np.arange(u, dtype=np.int64), lengths)
    order_in_user = np.arange(n_inter) - offsets[user]
    text = np.full(n_inter, NO_TEXT, np.int64)
    kind = np.zeros(n_inter, np.int64)
    vectors = np.zeros((0, 0), np.float32)
    n_events = split.n_events
    if context_events is not None and len(context_events.user):
        user = np.concatenate([user, context_events.user])
        item = np.concatenate([item, context_events.item])
        ts = np.concatenate([ts, context_events.timestamp])
        ev = np.concatenate([ev, context_events.event])
        text = np.concatenate([text, context_events.text])
        kind = np.concatenate([kind, np.ones(len(context_events.user), np.int64)])
        # Text events in the same second follow item id order, then text, then event: the order serving reads
        # them back from the store's event log in (file order would be lost there).
        c = context_events
        tie_order = np.lexsort((c.event, c.text, split.items.sort_rank[c.item]))
        tie_rank = np.empty(len(tie_order), np.int64)
        tie_rank[tie_order] = np.arange(len(tie_order))
        order_in_user = np.concatenate([order_in_user, tie_rank])
        vectors = context_events.text_vectors
        n_events = len(context_events.event_names)
    order = np.lexsort((order_in_user, kind, ts, user))
    user, item, ts, ev, text, kind = user[order], item[order], ts[order], ev[order], text[order], kind[order]
    counts = np.bincount(user, minlength=u)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    is_inter = kind == 0
    # The last two interactions of each user are its validation and test targets.
    inter_pos = np.flatnonzero(is_inter)
    last_inter = np.searchsorted(inter_pos, offsets[1:], side="left") - 1
    test_at = inter_pos[last_inter]
    valid_at = inter_pos[last_inter - 1]
    return Behaviour(
        offsets=offsets, item=item, timestamp=ts, event=ev, text=text, is_interaction=is_inter,
        valid_at=valid_at, test_at=test_at, text_vectors=vectors, split=split, n_items=split.n_items, n_events=n_events,
        n_gap_buckets=n_gap_buckets,
    )


@dataclass
class ContextEvents:
    """Text-bearing events aligned with a split: ``user`` (split positions), ``item``, ``timestamp``, ``event``,
    ``text`` (rows of ``text_vectors``) — all ``(C,) int64`` — ``text_vectors (T, text_dim)`` float32 and the
    combined event vocabulary ``event_names`` (the split's names first, so interaction event ids are unchanged).
    Text rows are numbered in the texts' sorted order, which breaks ties between events in the same second."""

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    event: np.ndarray
    text: np.ndarray
    text_vectors: np.ndarray
    event_names: tuple[str, ...]

    def without_items(self, drop: np.ndarray) -> "ContextEvents":
        """The events whose item is not marked in ``drop (n_items,) bool`` (text vectors and names kept)."""
        keep = ~drop[self.item]
        return replace(self, user=self.user[keep], item=self.item[keep], timestamp=self.timestamp[keep],
                       event=self.event[keep], text=self.text[keep])
