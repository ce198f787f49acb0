"""Training windows and evaluation contexts: every training position a target once, the exact layout, and contexts
that are the tail of the split's context."""

from __future__ import annotations

import numpy as np
import torch

from mmrec.data import (
    N_GAP_BUCKETS,
    ItemIndex,
    build_behaviour,
    gap_buckets,
    leave_one_out,
    load_interactions,
    training_windows,
)

from ..conftest import interaction_frame as _frame

CATALOG = ItemIndex(("1", "2", "9", "10", "100", "55"))


def test_windows_make_every_training_position_a_target_once(real_split):
    train, pad = real_split.train, real_split.n_items
    first = np.zeros(len(train.item), dtype=bool)
    first[train.offsets[:-1]] = True  # a user's first event has no context, so it is never a target
    after = np.flatnonzero(~first)  # each target; the input before it is the training event at after - 1
    gaps = gap_buckets(np.where(first, 0, train.timestamp - np.concatenate([[0], train.timestamp[:-1]])),
                       N_GAP_BUCKETS)
    expected = np.stack([train.row_of[after], train.item[after - 1], train.event[after - 1], gaps[after - 1],
                         train.item[after]], axis=1)
    for stride in (None, 20):
        w = training_windows(real_split, max_len=50, stride=stride)
        items = w.arrays["items"]
        assert items.shape == (len(w), 50) and w.targets.shape == (len(w), 51)
        assert (w.targets[:, 0] == pad).all()  # ID-only windows never predict from the initial state
        row, col = np.nonzero(w.targets[:, 1:] != pad)
        # the target after position col is the training event that follows the input at col
        got = np.stack([w.users[row], items[row, col], w.arrays["events"][row, col], w.arrays["gaps"][row, col],
                        w.targets[row, col + 1]], axis=1)
        by = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731 - sort rows
        assert np.array_equal(by(got), by(expected))
        assert w.n_targets == len(after)
        real = np.arange(50)[None, :] < w.lengths[:, None]
        assert (items[~real] == pad).all() and (items[real] != pad).all()
        assert (w.arrays["texts"] == -1).all()


def test_windows_exact_layout():
    df = _frame([("1", item, t) for t, item in enumerate(["1", "2", "9", "10", "100", "55", "1", "2"])])
    split = leave_one_out(load_interactions(df, CATALOG))  # train: 1 2 9 10 100 55
    w = training_windows(split, max_len=3)
    pad = split.n_items
    idx = CATALOG.index
    assert w.arrays["items"].tolist() == [idx(["9", "10", "100"]).tolist(), idx(["1", "2"]).tolist() + [pad]]
    assert w.targets[:, 1:].tolist() == [idx(["10", "100", "55"]).tolist(), idx(["2", "9"]).tolist() + [pad]]
    assert w.targets[:, 0].tolist() == [pad, pad]
    assert w.lengths.tolist() == [3, 2]
    overlap = training_windows(split, max_len=3, stride=2)  # windows end at 5, 3, 1; last 2 columns are targets
    assert overlap.targets[:, 1:].tolist() == [
        [pad] + idx(["100", "55"]).tolist(),
        [pad] + idx(["9", "10"]).tolist(),
        idx(["2"]).tolist() + [pad, pad],
    ]
    batch = w.batch(np.array([1]))
    assert batch.events.tolist() == [[0, 0, 0]]  # padding event is 0
    assert batch.gaps.tolist() == [[0, 1, 0]] and batch.texts.tolist() == [[-1, -1, -1]]
    assert (batch.next_targets != batch.n_items).tolist() == [[True, True, False]]


def test_context_is_the_tail_of_the_split_context(real_split):
    """A behaviour built without context events holds the split's interactions alone: its evaluation context is
    the last ``max_len`` events of ``split.context(stage)``, as wide as its longest row."""
    behaviour = build_behaviour(real_split)
    users = np.array([0, 1, 2])
    for stage, extra in (("valid", 0), ("test", 1)):
        batch = behaviour.context(stage, users, max_len=50)
        lengths = np.minimum(real_split.train.lengths[users] + extra, 50)
        assert batch.lengths.tolist() == lengths.tolist()
        assert batch.width == lengths.max() and batch.targets is None
        last = batch.items[np.arange(3), batch.lengths - 1].numpy()
        expected = real_split.train.item[real_split.train.offsets[users + 1] - 1] if extra == 0 else (
            real_split.valid_item[users]
        )
        assert last.tolist() == expected.tolist()
        assert (batch.items[~batch.mask] == real_split.n_items).all()
        context = real_split.context(stage)
        for b, u in enumerate(users):
            items, _, events = context.row(u)
            n = int(batch.lengths[b])
            assert batch.items[b, :n].tolist() == items[-n:].tolist()
            assert batch.events[b, :n].tolist() == events[-n:].tolist()
    whole = behaviour.context("test", users, max_len=None)
    assert whole.lengths.tolist() == (real_split.train.lengths[users] + 1).tolist()
    assert whole.width == whole.lengths.max()


def test_gap_buckets_are_log_spaced_and_bounded():
    seconds = np.array([-5, 0, 1, 3600, 86400, 365 * 86400, 10**12])
    buckets = gap_buckets(seconds, 28)
    assert buckets.tolist() == [0, 0, 1, 11, 16, 24, 27]
    assert gap_buckets(torch.from_numpy(seconds), 28).tolist() == buckets.tolist()
