"""``train_store`` and the store it leaves: the training input is the truth (the event log, the users' states and
what counts as seen follow the file trained on, not the files trained on before), and a retrain makes processes
holding the previous model stale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store, TrainConfig, train_store
from mmrec.store import StaleModelError

from ..conftest import copy_store, embed_text_only, write_movielens_slice

QUIET = TrainConfig(epochs=1, show_progress=False)


@pytest.fixture(scope="module")
def base(tmp_path_factory, text_encoder):
    """A small slice (150 movies, users 1-30), embedded and trained once on its full interactions file."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("jobs"), n_items=150, max_user=30)
    embed_text_only(folder, folder / "store", text_encoder)
    train_store(folder / "store", folder / "interactions.csv", config=QUIET, log=None)
    frame = pd.read_csv(folder / "interactions.csv", dtype={"user_id": str, "item_id": str})
    user = frame.user_id.value_counts().index[0]  # the user with most rows
    return folder, frame, user


def _retrain(base, tmp_path, frame: pd.DataFrame):
    folder, _, _ = base
    store_dir = copy_store(folder / "store", tmp_path / "store")
    frame.to_csv(tmp_path / "corrected.csv", index=False)
    return store_dir


def _assert_user_follows_the_file(store_dir, frame: pd.DataFrame, user: str) -> None:
    rows = frame[frame.user_id == user]
    store = Store(store_dir, create=False)
    log = store.user_events([user])[user]
    assert sorted((ts, item) for ts, item, _, _ in log) == sorted(zip(rows.timestamp.tolist(), rows.item_id))
    state = store.get_users([user])[user]
    assert (state.last_timestamp, state.n_events) == (int(rows.timestamp.max()), len(rows))
    assert store.seen_items(user) == set(rows.item_id)
    rec = Recommender.load(store_dir, device="cpu")
    assert state.model == rec.model_id
    # the stored state is the one the corrected log folds into
    recomputed = rec.folder.recompute(rec.model_id, [user])[0]
    np.testing.assert_allclose(state.interest, recomputed.interest, rtol=1e-5, atol=1e-6)
    # every item outside the corrected file's rows is rankable again; the file's rows are excluded
    ranked = {item for item, _ in rec.recommend(user, k=len(rec.item_ids))}
    assert ranked == set(rec.item_ids) - set(rows.item_id)


def test_retraining_without_a_users_last_rows_removes_them_from_the_store(base, tmp_path):
    folder, frame, user = base
    mine = frame[frame.user_id == user].timestamp
    cutoff = mine.sort_values().iloc[-30]
    corrected = frame[(frame.user_id != user) | (frame.timestamp < cutoff)]
    removed = set(frame[(frame.user_id == user) & (frame.timestamp >= cutoff)].item_id)
    assert len(removed) >= 30 and (corrected.user_id == user).sum() >= 5
    store_dir = _retrain(base, tmp_path, corrected)
    train_store(store_dir, tmp_path / "corrected.csv", config=QUIET, log=None)
    _assert_user_follows_the_file(store_dir, corrected, user)
    # before: the log kept the removed rows, the last timestamp came from one and the items stayed "seen"
    assert not removed & Store(store_dir).seen_items(user)


def test_retraining_on_corrected_timestamps_replaces_the_users_events(base, tmp_path):
    folder, frame, user = base
    corrected = frame.copy()
    last = corrected[corrected.user_id == user].sort_values("timestamp").index[-10:]
    corrected.loc[last, "timestamp"] += 400 * 86400  # ten rows moved 400 days later
    store_dir = _retrain(base, tmp_path, corrected)
    other = frame.user_id.value_counts().index[1]
    before = Recommender.load(store_dir, device="cpu")
    # observed before the retrain: not in the training input, so gone after it
    before.observe(other, before.item_ids[0], timestamp=2_100_000_000)
    train_store(store_dir, tmp_path / "corrected.csv", config=QUIET, log=None)
    _assert_user_follows_the_file(store_dir, corrected, user)  # before: 10 events twice, at both timestamps
    _assert_user_follows_the_file(store_dir, corrected, other)
    # the rule holds for every user: the whole log is what training read
    store = Store(store_dir)
    assert sum(len(rows) for rows in store.user_events().values()) == len(corrected)
    assert set(store.get_users()) == set(corrected.user_id)


def test_a_recommender_loaded_before_a_retrain_refuses_to_write(base, tmp_path):
    folder, frame, user = base
    store_dir = _retrain(base, tmp_path, frame)
    old = Recommender.load(store_dir, device="cpu")
    assert old.is_current()
    probe = old.item_ids[:3]
    scores = old.score(user, probe)
    # retrained on the same file and seed: the same weights, but a new generation of the store's users and log
    train_store(store_dir, tmp_path / "corrected.csv", config=QUIET, log=None)
    assert not old.is_current()
    store = Store(store_dir)
    states, log = store.get_users(), store.user_events()
    for write in (lambda: old.observe(user, probe[0], timestamp=2_100_000_000),
                  lambda: old.apply_events([("new-user", 2_100_000_000, probe[0], "interaction", "")]),
                  lambda: old.rebuild([user]), lambda: old.rebuild()):
        with pytest.raises(StaleModelError, match="Recommender.load the store again"):
            write()
    assert store.user_events() == log  # nothing was written
    assert {u: s.interest.tobytes() for u, s in store.get_users().items()} == {
        u: s.interest.tobytes() for u, s in states.items()}
    # reads keep working with the loaded model
    np.testing.assert_allclose(old.score(user, probe), scores, rtol=1e-5, atol=1e-6)
    fresh = Recommender.load(store_dir, device="cpu")
    fresh.observe(user, probe[0], timestamp=2_100_000_000)
    assert store.get_users([user])[user].last_timestamp == 2_100_000_000


def test_a_superseded_model_never_writes_its_states_over_the_current_ones(base, tmp_path):
    folder, frame, user = base
    corrected = frame[frame.timestamp < frame.timestamp.max()]  # a different file: a different model
    store_dir = _retrain(base, tmp_path, corrected)
    old = Recommender.load(store_dir, device="cpu")
    summary = train_store(store_dir, tmp_path / "corrected.csv", config=QUIET, log=None)
    assert summary["model_id"] != old.model_id
    for u in frame.user_id.unique():  # before: every read of a user stamped by the new model rebuilt it, stamped old
        old.recommend(u, k=5)
        old.score(u, old.item_ids[:2])
    assert {s.model for s in Store(store_dir).get_users().values()} == {summary["model_id"]}
