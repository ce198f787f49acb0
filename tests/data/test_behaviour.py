"""Merged behaviour sequences: interactions are targets exactly once, text events are context only, and nothing
at or after a held-out target reaches its context."""

import numpy as np
import pandas as pd
import pytest

from mmrec.data import ContextEvents, ItemIndex, build_behaviour, leave_one_out, load_interactions

from ..conftest import ASSETS


@pytest.fixture(scope="module")
def behaviour():
    items = ItemIndex.from_catalog(ASSETS / "items.csv")
    frame = pd.read_csv(ASSETS / "interactions.csv")
    split = leave_one_out(load_interactions(frame[frame.user_id <= 80], items))
    tags = pd.read_csv(ASSETS / "tags.csv")
    tags = tags[tags.user_id.astype(str).isin(split.user_ids)]
    users = pd.Index(split.user_ids).get_indexer(tags.user_id.astype(str))
    context = ContextEvents(
        user=users.astype(np.int64), item=items.index(tags.item_id.astype(str)),
        timestamp=tags.timestamp.to_numpy(np.int64), event=np.full(len(tags), len(split.event_names)),
        text=np.arange(len(tags)), text_vectors=np.zeros((len(tags), 384), np.float32),
        event_names=tuple(split.event_names) + ("tag",),
    )
    return split, build_behaviour(split, context), len(tags)


def test_held_out_items_sit_where_the_split_says(behaviour):
    split, b, n_tags = behaviour
    assert len(b.item) == len(split.train.item) + 2 * split.n_users + n_tags
    assert (b.item[b.valid_at] == split.valid_item).all() and (b.item[b.test_at] == split.test_item).all()
    assert b.is_interaction[b.valid_at].all() and b.is_interaction[b.test_at].all()


@pytest.mark.parametrize("max_len,stride", [(50, None), (20, 10), (7, 7)])
def test_every_training_interaction_is_a_target_exactly_once(behaviour, max_len, stride):
    split, b, _ = behaviour
    windows = b.windows(max_len, stride)
    assert windows.n_targets == len(split.train.item)
    assert windows.arrays["items"].shape == (len(windows), max_len) and (windows.lengths <= max_len).all()
    targets = np.sort(windows.targets[windows.targets != b.n_items])
    assert (targets == np.sort(split.train.item)).all()


def test_context_never_reaches_the_target(behaviour):
    split, b, _ = behaviour
    users = np.arange(split.n_users)
    for stage in ("valid", "test"):
        batch = b.context(stage, users, max_len=10_000)
        end = b.stage_end(stage)
        assert (batch.lengths.numpy() == end - b.offsets[:-1]).all()
        target_time = split.target_timestamp(stage)
        last = batch.lengths.numpy() - 1
        stamps = b.timestamp[b.offsets[:-1] + last]
        assert (stamps <= target_time).all()
    text_events = ~b.is_interaction
    assert text_events.any()
    # A tag written at the same second as the test interaction comes after it, so it is not test context.
    same_second = text_events & (b.timestamp == np.repeat(split.test_timestamp, np.diff(b.offsets)))
    positions = np.flatnonzero(same_second)
    owner = np.searchsorted(b.offsets, positions, side="right") - 1
    assert (positions > b.test_at[owner]).all()
