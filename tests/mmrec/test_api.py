"""The Python API and the batch refresh, on a model trained on a real slice of MovieLens (text features)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec import Recommender, Store
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.jobs import evaluate_store, refresh_store, train_store
from mmrec.model import ModelLoadError
from mmrec.training import TrainConfig

from ..conftest import REPO, write_movielens_slice


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_encoder):
    """The 800 most-rated movies and the interactions of users 1-150 on them (149 users rated one); 3 epochs."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("api"), n_items=800, max_user=150)
    store_dir = folder / "store"
    embed_catalog(folder / "items.csv", store_dir, EmbedConfig(use_images=False, text_columns=["title", "genres"]),
                  text_encoder=text_encoder)
    summary = train_store(store_dir, folder / "interactions.csv", folder / "tags.csv",
                          TrainConfig(epochs=3, show_progress=False), log=None, text_encoder=text_encoder)
    rec = Recommender.load(store_dir, device="cpu")
    rec._text_encoder = text_encoder
    return folder, store_dir, rec, summary


def test_training_summary_and_files(trained):
    folder, store_dir, rec, summary = trained
    assert (store_dir / "model" / "model.safetensors").is_file()
    config = json.loads((store_dir / "model" / "config.json").read_text())
    assert config["encoders"]["text"][0].startswith("all-MiniLM-L6-v2@")
    assert set(config["event_names"]) == {"interaction", "tag"}
    assert summary["users"] == 149 and 1 <= summary["best_epoch"] <= summary["epochs"] <= 3
    assert 0 < summary["valid"]["ndcg@10"] <= 1


def test_score_returns_probabilities_in_the_given_order(trained):
    _, _, rec, _ = trained
    items = ["260", "1210", "17", "2571"]
    scores = rec.score("1", items)
    assert scores.dtype == np.float32 and scores.shape == (4,)
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(rec.score(1, items[::-1]), scores[::-1], rtol=1e-6)


def test_bad_arguments_raise_clear_errors(trained):
    _, _, rec, _ = trained
    with pytest.raises(KeyError, match="no-such-item"):
        rec.score("1", ["260", "no-such-item"])
    with pytest.raises(ValueError, match="item_ids"):
        rec.score("1", "260")
    with pytest.raises(ValueError, match="exactly one"):
        rec.score(item_ids=["260"])
    with pytest.raises(ValueError, match=r"unknown event 'purchase'; known events: \['interaction', 'tag'\]"):
        rec.observe("1", "260", event="purchase")
    with pytest.raises(ValueError, match="k must be"):
        rec.recommend("1", k=0)
    with pytest.raises(ValueError, match=r"history\[0\]"):
        rec.score(history=["260"], item_ids=["1210"])


def test_recommend_excludes_seen_items_and_is_sorted(trained):
    _, store_dir, rec, _ = trained
    top = rec.recommend("1", k=10)
    assert len(top) == 10 and len({i for i, _ in top}) == 10
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    seen = {row[1] for row in rec.store.user_events(["1"])["1"]}
    assert not seen & {i for i, _ in top}
    assert len(rec.recommend("1", k=10, exclude_seen=False)) == 10


def test_unknown_user_gets_the_cold_user_fallback(trained):
    _, _, rec, _ = trained
    scores = rec.score("never-seen-user", ["260", "1210"])
    assert np.isfinite(scores).all()
    assert len(rec.recommend("never-seen-user", k=5)) == 5


def test_history_scoring_matches_the_stored_user(trained):
    _, _, rec, _ = trained
    log = rec.store.user_events(["7"])["7"]
    history = [(item, event, ts, text) for ts, item, event, text in log]
    np.testing.assert_allclose(rec.score(history=history, item_ids=["260", "1196"]),
                               rec.score("7", ["260", "1196"]), rtol=1e-5)


def test_observe_is_one_step_and_changes_the_next_score(trained):
    _, _, rec, _ = trained
    user, items = "new-user-observe", ["1196", "1210", "2571", "318"]
    before = rec.score(user, items)
    rec.observe(user, "260", timestamp=1_000)
    after_one = rec.score(user, items)
    assert not np.allclose(before, after_one)
    rec.observe(user, "1196", timestamp=1_060)
    rec.observe(user, "296", event="tag", timestamp=1_100, text="great soundtrack")
    stepped = rec.score(user, items)
    history = [("260", "interaction", 1_000), ("1196", "interaction", 1_060),
               ("296", "tag", 1_100, "great soundtrack")]
    np.testing.assert_allclose(stepped, rec.score(history=history, item_ids=items), rtol=1e-5, atol=1e-6)
    state = rec.store.get_users([user])[user]
    assert state.n_events == 3 and state.last_timestamp == 1_100


def test_out_of_order_event_recomputes_from_the_log(trained):
    _, _, rec, _ = trained
    user = "late-event-user"
    rec.observe(user, "260", timestamp=2_000)
    rec.observe(user, "1210", timestamp=3_000)
    rec.observe(user, "1196", timestamp=2_500)  # arrives late
    history = [("260", "interaction", 2_000), ("1196", "interaction", 2_500), ("1210", "interaction", 3_000)]
    np.testing.assert_allclose(rec.score(user, ["318"]), rec.score(history=history, item_ids=["318"]), rtol=1e-5)


def test_refresh_applies_events_rejects_bad_rows_and_is_idempotent(trained, tmp_path):
    _, store_dir, rec, _ = trained
    rows = pd.DataFrame({
        "user_id": ["3", "3", "5", "5", "9", "9", "9"],
        "item_id": ["260", "1210", "318", "no-such-item", "296", "593", "2571"],
        "timestamp": ["2000000000", "2000000100", "2000000000", "2000000001", "not-a-time", "2000000002",
                      "2000000003"],
        "event": ["interaction", "interaction", "interaction", "interaction", "interaction", "purchase",
                  "interaction"],
    })
    rows.to_csv(tmp_path / "events.csv", index=False)
    before = Store(store_dir).get_users(["3", "5", "9"])
    report = refresh_store(store_dir, tmp_path / "events.csv")
    assert (report.users_refreshed, report.events_applied, report.events_duplicate) == (3, 4, 0)
    reasons = {r["row"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {4, 5, 6}
    assert "unknown item_id" in reasons[4] and "timestamp" in reasons[5] and "known events" in reasons[6]
    after = Store(store_dir).get_users(["3", "5", "9"])
    for user in ("3", "5", "9"):
        assert not np.allclose(before[user].interest, after[user].interest)
    assert after["3"].n_events == before["3"].n_events + 2

    again = refresh_store(store_dir, tmp_path / "events.csv")
    assert (again.users_refreshed, again.events_applied, again.events_duplicate) == (0, 0, 4)
    for user, state in Store(store_dir).get_users(["3", "5", "9"]).items():
        np.testing.assert_array_equal(state.interest, after[user].interest)


def test_refresh_script_exit_status_and_json(trained, tmp_path):
    _, store_dir, _, _ = trained
    pd.DataFrame({"user_id": ["11"], "item_id": ["260"], "timestamp": [2100000000]}).to_csv(
        tmp_path / "ok.csv", index=False)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "refresh_interests.py"), "--store",
                           str(store_dir), "--events", str(tmp_path / "ok.csv"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["events_applied"] == 1 and summary["rejected"] == []


def test_evaluate_reports_protocol_metrics(trained, text_encoder):
    folder, store_dir, _, _ = trained
    results = evaluate_store(store_dir, folder / "interactions.csv", folder / "tags.csv", text_encoder=text_encoder)
    for stage in ("valid", "test"):
        assert {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10", "cold_recall@20"} <= set(results[stage])
        counts = pd.read_csv(folder / "interactions.csv").user_id.value_counts()
        assert results[stage]["n_users"] == int((counts >= 5).sum())
        assert results[stage]["recall@20"] >= results[stage]["recall@10"]


def test_load_refuses_features_from_another_encoder(trained, tmp_path):
    _, store_dir, _, _ = trained
    import shutil

    copy = tmp_path / "store-copy"
    shutil.copytree(store_dir, copy)
    store = Store(copy)
    store.db.execute("UPDATE features SET encoder = 'some-other-model@123' WHERE item_id = '260'")
    store.close()
    with pytest.raises(ModelLoadError, match="some-other-model@123"):
        Recommender.load(copy)
    with pytest.raises(ModelLoadError, match="no trained model"):
        Recommender.load(Store(tmp_path / "empty").path)


def test_a_newly_embedded_item_is_recommendable_with_the_lift_training_chose(trained, tmp_path, text_encoder):
    import shutil

    folder, store_dir, _, _ = trained
    saved = json.loads((store_dir / "model" / "config.json").read_text())["model"]
    assert (saved["new_item_bias"] > 0) == (saved["new_item_logit_bias"] > 0)
    # A movie added to the catalogue after training: embedded from its text alone, no ID, no interactions.
    copy = tmp_path / "store-copy"
    shutil.copytree(store_dir, copy)
    catalogue = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    everything = pd.read_csv(REPO / "assets" / "ml-latest-small" / "items.csv", dtype=str, keep_default_na=False)
    newcomer = everything[~everything.item_id.isin(catalogue.item_id)].iloc[:1]
    pd.concat([catalogue, newcomer]).to_csv(tmp_path / "items.csv", index=False)
    embed_catalog(tmp_path / "items.csv", copy, EmbedConfig(use_images=False, text_columns=["title", "genres"]),
                  text_encoder=text_encoder)
    rec = Recommender.load(copy, device="cpu")
    new_id = newcomer.item_id.iloc[0]
    assert new_id in rec.item_ids and float(rec.score("1", [new_id])[0]) >= 0.0
    rec.model.config.new_item_bias = rec.model.config.new_item_logit_bias = 1e3
    assert rec.recommend("1", k=3)[0][0] == new_id


def test_cached_behaviour_texts_need_no_encoder(trained, monkeypatch):
    import mmrec.training as training

    folder, store_dir, _, _ = trained
    tag = pd.read_csv(folder / "tags.csv").tag.iloc[0]
    from mmrec.encoders.preprocess import clean_text

    def refuse():
        raise AssertionError("the text encoder was loaded although every text is cached")

    monkeypatch.setattr(training, "_text_encoder", refuse)
    vectors = training.embed_event_texts(Store(store_dir, create=False), [clean_text(tag)])
    assert vectors.shape == (1, 384) and abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-3


def test_a_new_item_recall_ratio_picks_the_smallest_lift_that_reaches_it(trained):
    from mmrec.training import (calibrate_new_item_bias, evaluate_model, load_training_data, new_item_lift_scales,
                                new_item_recall_ratio)

    folder, store_dir, rec, _ = trained
    # The cold-start protocol on the trained slice: a fifth of the items lose their ID token, as if never trained.
    data = load_training_data(Store(store_dir), folder / "interactions.csv", hold_out=0.2, hold_out_seed=0)
    model, grid = rec.model, (0.0, 0.25, 0.5, 1.0, 2.0)
    saved = model.config.new_item_bias, model.config.new_item_logit_bias
    dot_scale, logit_scale = new_item_lift_scales(model, data)

    def ratio_at(multiple):
        model.config.new_item_bias, model.config.new_item_logit_bias = multiple * dot_scale, multiple * logit_scale
        return new_item_recall_ratio(evaluate_model(model, data, "valid"))

    try:
        chosen, metrics = calibrate_new_item_bias(model, data, grid, min_recall_ratio=0.5)
        assert new_item_recall_ratio(evaluate_model(model, data, "valid")) >= 0.5 and metrics["cold_recall@20"] > 0
        assert chosen > 0 and ratio_at(0.0) < 0.5
        assert all(ratio_at(m) < 0.5 for m in grid if m < chosen)
    finally:
        model.config.new_item_bias, model.config.new_item_logit_bias = saved


@pytest.mark.parametrize("rerank", [100, 5, 0])
def test_recommend_serves_the_order_evaluation_measures(trained, rerank, monkeypatch):
    _, _, rec, _ = trained
    monkeypatch.setattr(rec.model.config.scorer, "rerank", rerank)
    served = [item for item, _ in rec.recommend("1", k=20)]
    with torch.no_grad():
        interest = rec._user_interest("1")
        dot = rec.item_vectors @ interest + rec.model.config.new_item_bias * rec._new_items
        seen = {row[1] for row in rec.store.user_events(["1"])["1"]}
        dot[rec._item_positions(seen & rec._position.keys())] = float("-inf")
        scores = rec.model.rerank(interest[None], rec.item_vectors, dot[None], rec._new_items.bool())[0]
    assert served == [rec.item_ids[i] for i in scores.topk(20).indices.tolist()]
