"""The Python API (:class:`mmrec.Recommender`) and the evaluation job, on a model trained on a real slice of MovieLens
(text features; the store comes from ``conftest.py``)."""

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from mmrec import Recommender, Store
from mmrec.cli import EXIT_OK, main
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.train.jobs import evaluate_store
from mmrec.trained import ModelLoadError

from ..conftest import REPO, copy_store
from .conftest import PROBE, history_of, reference_top


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


def test_recommend_with_exclude_seen_false_ranks_seen_items_too(trained):
    _, _, rec, _ = trained
    seen = {row[1] for row in rec.store.user_events(["1"])["1"]}
    everything = rec.recommend("1", k=20, exclude_seen=False)
    ids = [i for i, _ in everything]
    # user 1 rated many of the slice's movies and the model ranks some of them among its best: only
    # exclude_seen=False may return them
    assert seen & set(ids)
    assert not seen & {i for i, _ in rec.recommend("1", k=20)}
    assert ids == reference_top(rec, rec.users.interests(["1"])[0], set(), 20)
    np.testing.assert_allclose([p for _, p in everything], rec.score("1", ids), rtol=1e-5)


def test_unknown_user_is_scored_from_the_models_learned_initial_state(trained):
    _, _, rec, _ = trained
    with torch.no_grad():
        initial = rec.model.interest_model.interest(rec.model.interest_model.initial(1))[0]
        vectors = rec.item_vectors[[rec.item_ids.index(i) for i in PROBE]][None]
        expected = rec.model.scorer.probability(initial[None], vectors)[0].numpy()
        from_zero = rec.model.scorer.probability(torch.zeros_like(initial)[None], vectors)[0].numpy()
    # the learned initial interest is not a zero vector, and scores from it differ from a zero interest's
    assert float(initial.norm()) > 1e-3 and np.abs(expected - from_zero).max() > 1e-4
    np.testing.assert_allclose(rec.score("never-seen-user", PROBE), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.score(history=[], item_ids=PROBE), expected, rtol=1e-5, atol=1e-6)
    served = rec.recommend("never-seen-user", k=10)
    assert [i for i, _ in served] == reference_top(rec, initial, set(), 10)
    assert "never-seen-user" not in rec.store.get_users(["never-seen-user"])  # scoring stores no state


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


METRIC_KEYS = {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10"}


def test_evaluate_reports_each_stage_on_its_own_targets(trained, evaluated, text_encoder):
    from mmrec.train.data import load_training_data
    from mmrec.train.evaluate import evaluate_model

    folder, store_dir, rec, _ = trained
    counts = pd.read_csv(folder / "interactions.csv").user_id.value_counts()
    for stage in ("valid", "test"):
        assert METRIC_KEYS | {f"cold_{m}" for m in METRIC_KEYS} <= set(evaluated[stage])
        assert evaluated[stage]["n_users"] == int((counts >= 5).sum())
        assert evaluated[stage]["recall@20"] >= evaluated[stage]["recall@10"]
    # The test stage is measured on each user's last interaction, not on the validation one: its metrics equal a
    # separate evaluation of the test stage alone and differ from the validation metrics.
    data = load_training_data(Store(store_dir), folder / "interactions.csv", folder / "tags.csv", text_encoder)
    test = evaluate_model(rec.model, data, "test").metrics
    assert any(test[m] != pytest.approx(evaluated["valid"][m]) for m in METRIC_KEYS)
    for m in METRIC_KEYS:
        assert evaluated["test"][m] == pytest.approx(test[m], rel=1e-6), m


def test_evaluate_cli_prints_one_json_object_with_every_stages_metrics(trained, evaluated, capsys):
    folder, store_dir, _, _ = trained
    code = main(["evaluate", "--store", str(store_dir), "--interactions", str(folder / "interactions.csv"),
                 "--context-events", str(folder / "tags.csv"), "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == EXIT_OK
    flat = json.loads(out[-1])
    # test metrics under their own names, validation ones prefixed valid_; NaN (no cold users) is null
    expected = {(k if stage == "test" else f"valid_{k}"): v for stage in ("valid", "test")
                for k, v in evaluated[stage].items()}
    assert set(flat) == set(expected)
    assert any(flat[m] != flat[f"valid_{m}"] for m in METRIC_KEYS)  # the two stages are not interchangeable
    assert METRIC_KEYS | {"n_users", "n_cold_users"} | {f"valid_{m}" for m in METRIC_KEYS} <= set(flat)
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert flat[key] is None, key
        else:
            assert flat[key] == pytest.approx(value, rel=1e-6), key


def test_load_refuses_features_from_another_encoder(trained, tmp_path):
    _, store_dir, _, _ = trained
    copy = tmp_path / "store-copy"
    copy_store(store_dir, copy)
    store = Store(copy)
    store.db.execute("UPDATE features SET encoder = 'some-other-model@123' WHERE item_id = '260'")
    store.close()
    with pytest.raises(ModelLoadError, match="some-other-model@123"):
        Recommender.load(copy)
    with pytest.raises(ModelLoadError, match="no trained model"):
        Recommender.load(Store(tmp_path / "empty").path)


def test_a_newly_embedded_item_is_lifted_by_recommend_and_scored_unlifted(trained, tmp_path, text_encoder):
    folder, store_dir, _, _ = trained
    # A real movie outside the training slice, added to a copy of the store after training: embedded from its
    # text alone, no ID, no interactions.
    copy = tmp_path / "store-copy"
    copy_store(store_dir, copy)
    catalogue = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    everything = pd.read_csv(REPO / "assets" / "ml-latest-small" / "items.csv", dtype=str, keep_default_na=False)
    newcomer = everything[~everything.item_id.isin(catalogue.item_id)].iloc[:1]
    pd.concat([catalogue, newcomer]).to_csv(tmp_path / "items.csv", index=False)
    embed_catalog(tmp_path / "items.csv", copy, EmbedConfig(use_images=False, text_columns=["title", "genres"]),
                  text_encoder=text_encoder)
    rec = Recommender.load(copy, device="cpu")  # its own model config: the shared fixture's stays untouched
    new_id = newcomer.item_id.iloc[0]
    assert new_id in rec.item_ids and new_id not in rec.meta["item_ids"]

    def policy(**lifts):
        rec.model.new_items = replace(rec.model.new_items, **lifts)

    def rerank(k):
        rec.model.config = replace(rec.model.config, scorer=replace(rec.model.config.scorer, rerank=k))

    policy(bias=0.0, logit_bias=0.0)

    def rank(user):
        return [i for i, _ in rec.recommend(user, k=len(rec.item_ids))].index(new_id)

    def lifts(user):
        """1.5 std of the user's retrieval scores and re-ranker logits over the catalogue (the README's scale)."""
        with torch.no_grad():
            interest = rec.users.interests([user])[0]
            return (1.5 * float((rec.item_vectors @ interest).std()),
                    1.5 * float(rec.model.scorer.logits(interest[None], rec.item_vectors[None])[0].std()))

    def ranks(user):
        """(rank by retrieval alone, rank by retrieval lifted by 1e3 so the new item is re-ranked), no lifts."""
        rerank(0)
        by_dot = rank(user)
        rerank(100)
        policy(bias=1e3)
        reranked = rank(user)
        policy(bias=0.0)
        return by_dot, reranked

    # recommendable at once, and (for this user) not already first either way, so a lift has room to act
    user = next(u for u in ("1", "7", "13", "20", "42", "68") if min(ranks(u)) > 0)
    by_dot, reranked = ranks(user)
    assert reranked < 100
    unlifted = rec.score(user, [new_id, "260", "1210"])
    dot_lift, logit_lift = lifts(user)

    # the retrieval lift moves the new item up the dot-product order (rerank=0: retrieval alone)
    rerank(0)
    policy(bias=dot_lift)
    assert rank(user) < by_dot
    # the re-ranker's logit lift moves it up among the re-ranked candidates
    rerank(100)
    policy(bias=1e3, logit_bias=logit_lift)
    lifted = rec.recommend(user, k=len(rec.item_ids))
    assert [i for i, _ in lifted].index(new_id) < reranked
    # score, and the probabilities recommend reports, are the re-ranker's unlifted ones
    np.testing.assert_array_equal(rec.score(user, [new_id, "260", "1210"]), unlifted)
    assert dict(lifted)[new_id] == pytest.approx(float(unlifted[0]), rel=1e-5)


def test_evaluate_ranks_an_item_embedded_after_training_as_a_new_item(trained, evaluated, tmp_path, text_encoder):
    folder, store_dir, _, _ = trained
    copy = tmp_path / "store-copy"
    copy_store(store_dir, copy)
    everything = pd.read_csv(REPO / "assets" / "ml-latest-small" / "items.csv", dtype=str, keep_default_na=False)
    catalogue = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    # ids that sort among the trained ones: a mapping by position would hand them (and all after) the wrong ID rows
    newcomers = everything[~everything.item_id.isin(catalogue.item_id)].iloc[:20]
    newcomers.to_csv(tmp_path / "new.csv", index=False)
    embed_catalog(tmp_path / "new.csv", copy, EmbedConfig(use_images=False, text_columns=["title", "genres"]),
                  text_encoder=text_encoder)
    after = evaluate_store(copy, folder / "interactions.csv", folder / "tags.csv", text_encoder=text_encoder)
    for stage in ("valid", "test"):  # was refused ("the store's items changed since training")
        assert after[stage]["n_users"] == evaluated[stage]["n_users"]
        # 20 more rankable items that no one interacted with can only push targets down, and not by much
        for metric in ("recall@10", "recall@20", "ndcg@10", "mrr@10"):
            assert evaluated[stage][metric] - 0.02 <= after[stage][metric] <= evaluated[stage][metric] + 1e-9


def test_feature_matrix_of_a_modality_the_store_lacks_has_no_columns(trained):
    _, store_dir, _, _ = trained
    store = Store(store_dir, create=False)
    ids, images, present = store.feature_matrix("image")
    assert ids == store.item_ids() and len(ids) == 800
    assert images.shape == (800, 0) and images.dtype == np.float32 and present.shape == (800,) and not present.any()
    ids, texts, present = store.feature_matrix("text", ["260", "1210"])
    assert ids == ["260", "1210"] and texts.shape == (2, 384) and present.all() and np.abs(texts).sum(1).min() > 0
    assert store.feature_matrix("image", ["260", "1210"])[1].shape == (2, 0)


def test_cached_behaviour_texts_need_no_encoder(trained, monkeypatch):
    import mmrec.features as features

    folder, store_dir, _, _ = trained
    tag = pd.read_csv(folder / "tags.csv").tag.iloc[0]
    from mmrec.encoders.preprocess import clean_text

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although every text is cached")

    monkeypatch.setattr(features, "store_text_encoder", refuse)
    vectors = features.embed_event_texts(Store(store_dir, create=False), [clean_text(tag)])
    assert vectors.shape == (1, 384) and abs(float(np.linalg.norm(vectors[0])) - 1.0) < 1e-3
    # nor does serving: a fresh Recommender scores a history with a cached tag without loading it
    import mmrec.encoders.text

    monkeypatch.setattr(mmrec.encoders.text, "TextEncoder", refuse)
    rec = Recommender.load(store_dir, device="cpu")
    assert rec.score(history=[("260", "tag", 1, clean_text(tag))], item_ids=PROBE).shape == (len(PROBE),)
    assert rec.folder._text_encoder is None


def test_behaviour_texts_are_never_encoded_by_another_encoder_than_the_stores(trained):
    from types import SimpleNamespace

    from mmrec.features import embed_event_texts

    _, store_dir, _, _ = trained
    other = SimpleNamespace(version="some-other-encoder@1", encode=lambda texts: pytest.fail("encoded"))
    with pytest.raises(ValueError, match=r"embedded with all-MiniLM-L6-v2@.*but the text encoder is some-other"):
        embed_event_texts(Store(store_dir, create=False), ["a text never seen"], other)


def test_a_new_item_recall_ratio_picks_the_smallest_lift_that_reaches_it(trained):
    from mmrec.train.calibration import calibrate_new_item_bias, new_item_lift_scales
    from mmrec.train.data import load_training_data
    from mmrec.train.evaluate import evaluate_model, new_item_recall_ratio

    folder, store_dir, rec, _ = trained
    # The cold-start protocol on the trained slice: a fifth of the items lose their ID token, as if never trained.
    data = load_training_data(Store(store_dir), folder / "interactions.csv", hold_out=0.2, hold_out_seed=0)
    model, grid = rec.model, (0.0, 0.25, 0.5, 1.0, 2.0)
    saved = model.new_items
    dot_scale, logit_scale = new_item_lift_scales(model, data)

    def ratio_at(multiple):
        model.new_items = replace(model.new_items, bias=multiple * dot_scale, logit_bias=multiple * logit_scale)
        return new_item_recall_ratio(evaluate_model(model, data, "valid"))

    try:
        chosen, metrics = calibrate_new_item_bias(model, data, grid, min_recall_ratio=0.5)
        assert new_item_recall_ratio(evaluate_model(model, data, "valid")) >= 0.5 and metrics["cold_recall@20"] > 0
        assert chosen > 0 and ratio_at(0.0) < 0.5
        assert all(ratio_at(m) < 0.5 for m in grid if m < chosen)
    finally:
        model.new_items = saved


@pytest.mark.parametrize("rerank", [100, 5, 0])
def test_recommend_serves_the_order_evaluation_measures(trained, rerank, monkeypatch):
    _, _, rec, _ = trained
    config = rec.model.config
    monkeypatch.setattr(rec.model, "config", replace(config, scorer=replace(config.scorer, rerank=rerank)))
    served = [item for item, _ in rec.recommend("1", k=20)]
    with torch.no_grad():
        interest = rec.users.interests(["1"])[0]
        dot = rec.item_vectors @ interest + rec.model.new_items.bias * rec._new_items
        seen = {row[1] for row in rec.store.user_events(["1"])["1"]}
        dot[rec._rows(seen & rec.folder.position.keys())] = float("-inf")
        scores = rec.model.rerank(interest[None], rec.item_vectors, dot[None], rec._new_items.bool())[0]
    assert served == [rec.item_ids[i] for i in scores.topk(20).indices.tolist()]


def test_serving_computes_the_interest_evaluation_ranks_with(trained, monkeypatch):
    from mmrec.train.data import load_training_data

    folder, store_dir, rec, _ = trained
    # a short window, so the first event's time gap still shows in the state after the window
    monkeypatch.setattr(rec, "max_len", 5)
    monkeypatch.setattr(rec.folder, "max_len", 5)  # the folder windows served histories
    data = load_training_data(Store(store_dir), folder / "interactions.csv", folder / "tags.csv")
    users = np.arange(data.split.n_users)
    b = data.behaviour
    # the slice has what tells the paths apart: histories longer than max_len, so the window's first event has a
    # real predecessor, and several tags of one user in the same second
    assert (b.stage_end("test") - b.offsets[:-1] > rec.max_len).sum() > 10
    tags = pd.read_csv(folder / "tags.csv")
    assert tags.duplicated(["user_id", "timestamp"]).sum() >= 3
    with torch.no_grad():
        vectors = rec.model.item_vectors(data.features)
        expected = rec.model.interests(b.context("test", users, rec.max_len), vectors, data.text_table)
    logs = rec.store.user_events(list(data.split.user_ids))
    # users other tests of this module gave events of their own are left out
    untouched = [u for u, user_id in enumerate(data.split.user_ids) if len(logs[user_id]) == np.diff(b.offsets)[u]]
    assert len(untouched) > 140
    for u in untouched:
        # what the log holds before the user's test interaction, in serving's own order
        user_id = data.split.user_ids[u]
        ordered = rec.folder.sorted(logs[user_id])
        test = (int(data.split.test_timestamp[u]), data.item_ids[data.split.test_item[u]])
        cut = next(i for i, r in enumerate(ordered) if (r[0], r[1]) == test and r[3] == "")
        with torch.no_grad():
            served = rec._history_interest(history_of(ordered[:cut]))
        np.testing.assert_allclose(served.numpy(), expected[u].numpy(), rtol=1e-4, atol=1e-5, err_msg=user_id)


def test_an_event_in_the_same_second_as_the_last_takes_its_place_in_training_order(trained):
    _, _, rec, _ = trained
    user = "same-second-user"
    rec.observe(user, "318", timestamp=5_000)
    rec.observe(user, "260", timestamp=5_000)  # item 260 sorts before 318 in training: stepping would misplace it
    expected = rec.score(history=[("318", "interaction", 5_000), ("260", "interaction", 5_000)], item_ids=PROBE)
    assert rec.store.get_users([user])[user].n_events == 2
    np.testing.assert_allclose(rec.score(user, PROBE), expected, rtol=1e-5, atol=1e-6)
    swapped = rec.score(history=[("318", "interaction", 4_999), ("260", "interaction", 5_000)], item_ids=PROBE)
    assert not np.allclose(swapped, expected)  # the order matters to the model


def test_an_item_with_a_non_numeric_id_does_not_reorder_the_trained_ones(trained, tmp_path, text_encoder):
    _, store_dir, _, _ = trained
    copy = tmp_path / "store-copy"
    copy_store(store_dir, copy)
    # 318 before 1196 as numbers (training's order), after it as strings
    history = [("1196", "interaction", 1_000), ("318", "interaction", 1_000), ("260", "interaction", 2_000)]
    before = Recommender.load(copy, device="cpu").score(history=history, item_ids=PROBE)
    (tmp_path / "new.csv").write_text("item_id,title,genres\nsku-x1,A brand-new documentary,Documentary\n")
    embed_catalog(tmp_path / "new.csv", copy, EmbedConfig(use_images=False), text_encoder=text_encoder)
    after = Recommender.load(copy, device="cpu")
    assert after.item_ids[-1] == "sku-x1" and after.item_ids.index("318") < after.item_ids.index("1196")
    np.testing.assert_allclose(after.score(history=history, item_ids=PROBE), before, rtol=1e-6)


def test_an_update_holds_the_write_lock_while_it_reads_the_users_state(trained, monkeypatch):
    import sqlite3

    _, store_dir, rec, _ = trained
    other = Recommender.load(store_dir, device="cpu")  # a second process's connection
    other.store.db.execute("PRAGMA busy_timeout = 50")
    user = "concurrent-user"
    rec.observe(user, "260", timestamp=100)
    blocked, read_version = [], rec.store.data_version

    def version_while_the_other_writes():
        # the cached state is valid only while the store's data_version is unchanged: the other connection tries to
        # write for the same user while this update checks it
        try:
            other.observe(user, "1210", timestamp=300)
        except sqlite3.OperationalError as error:
            blocked.append(str(error))
        return read_version()

    monkeypatch.setattr(rec.store, "data_version", version_while_the_other_writes)
    rec.observe(user, "1196", timestamp=200)
    monkeypatch.undo()
    assert blocked and "locked" in blocked[0]
    other.observe(user, "1210", timestamp=300)  # once the first update committed
    log = rec.store.user_events([user])[user]
    assert [r[1] for r in log] == ["260", "1196", "1210"]
    state = rec.store.get_users([user])[user]
    assert (state.n_events, state.last_timestamp) == (3, 300)
    np.testing.assert_allclose(rec.score(user, PROBE), rec.score(history=history_of(log), item_ids=PROBE),
                               rtol=1e-5, atol=1e-6)


def test_apply_events_names_the_row_it_cannot_fold_in(trained):
    _, _, rec, _ = trained
    good = ("row-check-user", 10, "260", "interaction", "")
    with pytest.raises(KeyError, match=r"rows\[1\]: unknown item id 'no-such-item'"):
        rec.apply_events([good, ("row-check-user", 11, "no-such-item", "interaction", "")])
    with pytest.raises(ValueError, match=r"rows\[1\]: unknown event 'purchase'; known events"):
        rec.apply_events([good, ("row-check-user", 11, "260", "purchase", "")])
    with pytest.raises(ValueError, match=r"rows\[0\]: the model reads 'tag' events by their text and this one has none"):
        rec.observe("row-check-user", "260", event="tag", timestamp=12)
    for text in (None, "...", ""):  # none, or nothing left after cleaning
        with pytest.raises(ValueError, match=r"history\[1\]: the model reads 'tag' events by their text"):
            rec.score(history=[("260", "interaction", 1), ("1210", "tag", 2, text)], item_ids=PROBE)
    # a missing text on an interaction is no text (it was read as the tag "none")
    np.testing.assert_array_equal(rec.score(history=[("260", "interaction", 1, None)], item_ids=PROBE),
                                  rec.score(history=[("260", "interaction", 1)], item_ids=PROBE))
    with pytest.raises(ValueError, match=r"history\[0\]: 'interaction' events carry no text in training"):
        rec.score(history=[("260", "interaction", 1, "loved it")], item_ids=PROBE)
    assert rec.store.user_events(["row-check-user"])["row-check-user"] == []  # nothing applied


def test_history_texts_are_cleaned_as_observe_cleans_them(trained):
    from mmrec.encoders import clean_behaviour_texts

    _, _, rec, _ = trained
    raw = "Funny!!! <b>Dark</b> http://example.com"
    (clean,) = clean_behaviour_texts([raw])
    assert clean and clean != raw
    np.testing.assert_allclose(rec.score(history=[("260", "tag", 1, raw)], item_ids=PROBE),
                               rec.score(history=[("260", "tag", 1, clean)], item_ids=PROBE), rtol=1e-6)


def test_recommend_leaves_out_interactions_but_not_items_only_tagged(trained):
    _, _, rec, _ = trained
    user = "tag-only-user"
    rec.observe(user, "260", timestamp=100)
    favourite = rec.recommend(user, k=1)[0][0]
    rec.observe(user, favourite, event="tag", text="want to watch", timestamp=200)
    assert favourite in {i for i, _ in rec.recommend(user, k=len(rec.item_ids))}
    assert "260" not in {i for i, _ in rec.recommend(user, k=len(rec.item_ids))}


def test_evaluate_codes_events_as_training_did(trained, tmp_path):
    folder, store_dir, _, _ = trained
    frame = pd.read_csv(folder / "interactions.csv")
    frame.assign(event="bogus").to_csv(tmp_path / "bogus.csv", index=False)
    with pytest.raises(ValueError, match=r"'bogus'.*interaction"):  # was: silently read as the model's first event
        evaluate_store(store_dir, tmp_path / "bogus.csv")
    tags = pd.read_csv(folder / "tags.csv").assign(event="review")
    tags.to_csv(tmp_path / "reviews.csv", index=False)
    with pytest.raises(ValueError, match=r"reviews.csv: event\(s\) \['review'\] are not among the model's events"):
        evaluate_store(store_dir, folder / "interactions.csv", tmp_path / "reviews.csv")


def test_a_text_only_model_ignores_a_poster_embedded_after_training(trained, tmp_path, posters, text_encoder,
                                                                     image_encoder):
    folder, store_dir, _, _ = trained
    everything = pd.read_csv(REPO / "assets" / "ml-latest-small" / "items.csv", dtype=str, keep_default_na=False)
    catalogue = pd.read_csv(folder / "items.csv", dtype=str, keep_default_na=False)
    newcomer = everything[~everything.item_id.isin(catalogue.item_id) & (everything.image_path != "")].iloc[:1]
    newcomer.to_csv(tmp_path / "new.csv", index=False)
    vectors = {}
    for name, config in (("with-poster", EmbedConfig(images_root=posters, text_columns=["title", "genres"])),
                         ("text-only", EmbedConfig(use_images=False, text_columns=["title", "genres"]))):
        copy_store(store_dir, tmp_path / name)
        report = embed_catalog(tmp_path / "new.csv", tmp_path / name, config, text_encoder=text_encoder,
                               image_encoder=image_encoder)
        assert report.embedded == 1
        rec = Recommender.load(tmp_path / name, device="cpu")  # was: refused, "trained on image features from no encoder"
        vectors[name] = rec.item_vectors[rec.item_ids.index(newcomer.item_id.iloc[0])]
    assert "image" in Store(tmp_path / "with-poster").stored_modalities()[newcomer.item_id.iloc[0]]
    torch.testing.assert_close(vectors["with-poster"], vectors["text-only"])  # the untrained image tower is not read


def test_a_model_saved_before_interaction_events_were_recorded_still_tells_tags_apart(trained, tmp_path):
    _, store_dir, _, _ = trained
    copy = tmp_path / "store-copy"
    copy_store(store_dir, copy)
    config = json.loads((copy / "model" / "config.json").read_text())
    assert config.pop("interaction_events") == ["interaction"]
    (copy / "model" / "config.json").write_text(json.dumps(config))
    (copy / "model" / "manifest.json").unlink()  # saved before the manifest too: config.json is not hashed
    rec = Recommender.load(copy, device="cpu")
    assert (rec.interaction_events, rec.text_events) == (("interaction",), ("tag",))


def test_new_item_places_take_the_end_of_every_list_and_leave_the_trained_items_order(trained, monkeypatch):
    _, _, rec, _ = trained
    new = torch.from_numpy(np.random.default_rng(0).random(len(rec.item_ids)) < 0.2)  # as if never trained
    with torch.no_grad():
        interest = rec.users.interests(["1"])[0]
        scores = rec.model.rerank(interest[None], rec.item_vectors, (rec.item_vectors @ interest)[None], new)
        scores[0, :5] = float("-inf")  # excluded items
        placed = rec.model.place_new_items(scores, new, slots=6, depth=20)[0]
    order, before = placed.argsort(descending=True).tolist(), scores[0].argsort(descending=True).tolist()
    trained_first = [i for i in before if not new[i]]
    assert order[:14] == trained_first[:14] and order[14:20] == [i for i in before if new[i]][:6]
    assert [i for i in order[20:] if i not in order[:20]] == [i for i in before if i not in order[:20]]
    assert torch.isinf(placed[:5]).all()
    unplaced = [item for item, _ in rec.recommend("1", k=10)]
    monkeypatch.setattr(rec, "_new_items", new)
    monkeypatch.setattr(rec.model, "new_items", replace(rec.model.new_items, slots=6))
    served = [item for item, _ in rec.recommend("1", k=10)]  # 6 of 20 places -> 3 of 10
    is_new = [bool(new[rec.item_ids.index(item)]) for item in served]
    assert is_new == [False] * 7 + [True] * 3
    assert served[:7] == [item for item in unplaced if not new[rec.item_ids.index(item)]][:7]
    # fewer new items than places: trained ones fill the rest, none is lost
    two = torch.zeros_like(new)
    two[[before[0], before[100]]] = True  # the best item, and one far down
    with torch.no_grad():
        placed = rec.model.place_new_items(scores, two, slots=6, depth=20)[0]
    order = placed.argsort(descending=True).tolist()
    trained_first = [i for i in before if not two[i]]
    assert order[:14] == trained_first[:14] and order[14:16] == [before[0], before[100]]
    assert order[16:20] == trained_first[14:18] and torch.isinf(placed).sum() == 5


def test_new_item_places_are_the_fewest_that_reach_the_recall_ratio(trained):
    from mmrec.train.calibration import calibrate_new_item_slots
    from mmrec.train.data import load_training_data
    from mmrec.train.evaluate import evaluate_model, new_item_recall_ratio

    folder, store_dir, rec, _ = trained
    data = load_training_data(Store(store_dir), folder / "interactions.csv", hold_out=0.2, hold_out_seed=0)
    saved = rec.model.new_items
    try:
        slots, metrics = calibrate_new_item_slots(rec.model, data, 0.5)
        assert rec.model.new_items.slots == slots and rec.model.new_items.bias == 0.0
        assert new_item_recall_ratio(evaluate_model(rec.model, data, "valid")) >= 0.5 and metrics["cold_recall@20"] > 0
        if slots > 1:
            rec.model.new_items = replace(rec.model.new_items, slots=slots - 1)
            assert new_item_recall_ratio(evaluate_model(rec.model, data, "valid")) < 0.5
    finally:
        rec.model.new_items = saved
