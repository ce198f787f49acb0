"""Interactions ordered by ``seq_index`` instead of timestamps (an Amazon-style log with an order but no time): they
train, evaluate, refresh and serve with the defaults, and the model leaves time-gap features out."""

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender
from mmrec.data.interactions import ItemIndex, load_interactions
from mmrec.io.events import read_events
from mmrec.serve.refresh import refresh_store
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import evaluate_store, train_store

from ..conftest import copy_store
from .conftest import PROBE


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its timestamps replaced by each row's rank in time (a global order, no time) and arbitrary
    string user ids."""
    out = frame.drop(columns=["timestamp"]).assign(
        seq_index=frame["timestamp"].rank(method="first").astype(int), user_id="shopper/" + frame.user_id.astype(str))
    return out.sample(frac=1.0, random_state=0)  # file order means nothing: seq_index does


@pytest.fixture(scope="module")
def order_store(trained, text_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("order")
    store = copy_store(trained[1], folder / "store")
    for name in ("interactions.csv", "tags.csv"):
        ordered(pd.read_csv(trained[0] / name)).to_csv(folder / name, index=False)
    summary = train_store(store, folder / "interactions.csv", folder / "tags.csv",
                          TrainConfig(epochs=1, show_progress=False, device="cpu"), log=None, text_encoder=text_encoder)
    return folder, store, summary


def test_an_order_column_reads_as_an_order_without_time(trained, tmp_path):
    frame = ordered(pd.read_csv(trained[0] / "interactions.csv"))
    table = read_events(frame)
    assert not table.timed and read_events(pd.read_csv(trained[0] / "interactions.csv")).timed
    items = ItemIndex(tuple(pd.read_csv(trained[0] / "items.csv").item_id.astype(str)))
    inter = load_interactions(frame, items)
    assert not inter.timed
    first = inter.offsets[0], inter.offsets[1]
    assert (np.diff(inter.timestamp[first[0]:first[1]]) >= 0).all()  # each user's events in seq_index order
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['timestamp \(or seq_index\)'\]"):
        read_events(frame.drop(columns=["seq_index"]))


def test_order_only_data_trains_evaluates_and_serves_with_the_defaults(order_store, text_encoder, tmp_path):
    folder, store, summary = order_store
    rec = Recommender.load(store, device="cpu")
    assert rec.model.interest_model.config.use_gaps is False  # saved with the model: serving reads no gaps either
    metrics = evaluate_store(store, folder / "interactions.csv", folder / "tags.csv", text_encoder=text_encoder)
    # evaluation reads the files as training did (same split, same order, no gaps): training's validation figure
    assert metrics["valid"]["ndcg@10"] == pytest.approx(summary["valid"]["ndcg@10"], abs=1e-4)
    assert metrics["test"]["n_users"] == summary["users"]
    user = "shopper/42"
    before = rec.score(user, PROBE)
    # a refresh file in the same order space; no timestamps anywhere
    last = int(pd.read_csv(folder / "interactions.csv").seq_index.max())
    events = tmp_path / "more.csv"
    pd.DataFrame({"user_id": [user], "item_id": ["2571"], "seq_index": [last + 1]}).to_csv(events, index=False)
    copy = copy_store(store, tmp_path / "store")
    report = refresh_store(copy, events)
    assert (report.events_applied, report.rejected) == (1, [])
    after = Recommender.load(copy, device="cpu")
    assert not np.allclose(after.score(user, PROBE), before)
    after.close()
    rec.close()


def test_context_events_must_share_the_interactions_order(order_store, trained, text_encoder):
    folder, store, _ = order_store
    with pytest.raises(ValueError, match="ordered by timestamp, but the interactions by seq_index"):
        evaluate_store(copy_store(store, folder / "mixed"), folder / "interactions.csv", trained[0] / "tags.csv",
                       text_encoder=text_encoder)
