"""The chronological leave-one-out split (docs/evaluation.md) and the cold-start protocol's held-out items.

    Interactions ──► leave_one_out ──► Split          (train sequences, one valid and one test item per user)
    Split ──► hold_out_items ──► Split                (cold protocol: a share of items never reaches training)

Example::

    split = leave_one_out(inter)                       # users with < 5 interactions are dropped
    cold_split, held_out = hold_out_items(split, 0.1, seed=0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .interactions import Interactions, ItemIndex

__all__ = ["Stage", "Sequences", "Split", "leave_one_out", "hold_out_items"]

Stage = Literal["valid", "test"]


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
    """Chronological leave-one-out split (docs/evaluation.md): per kept user, last event = test, second
    last = valid.

    Users are addressed by their position ``0..n_users-1`` in the split (a batch's ``users``);
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
    #: False when events are ordered by ``seq_index``, not time (:attr:`Interactions.timed`)
    timed: bool = True

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
            timed=self.timed,
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
        timed=inter.timed,
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

