"""Malformed input to train, refresh and the Python API, on a model trained on a real slice of MovieLens: every bad
value fails with an error naming the row/field (or the argument), and well-formed rows in odd spellings (date
strings, datetime columns, ids widened to floats) are stored as the same values as their plain spelling."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store
from mmrec.cli import EXIT_FAILED, EXIT_REJECTED, EXIT_USAGE, main
from mmrec.embed import EmbedConfig, embed_catalog
from mmrec.networks.model import ModelConfig
from mmrec.serve.refresh import refresh_store
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import train_store
from mmrec.trained import ModelLoadError

from .conftest import embed_text_only, write_movielens_slice


def _one_epoch(use_image: bool) -> TrainConfig:
    return TrainConfig(epochs=1, show_progress=False, model=ModelConfig(use_image=use_image))


def _logged_interactions(store_dir: Path) -> set[tuple[str, int, str]]:
    logs = Store(store_dir).user_events()
    return {(user, ts, item) for user, rows in logs.items() for ts, item, event, _ in rows if event == "interaction"}


def _input_interactions(path: Path) -> set[tuple[str, int, str]]:
    """The training input's ``(user_id, timestamp, item_id)`` rows, read independently of mmrec."""
    frame = pd.read_csv(path, dtype={"user_id": str, "item_id": str})
    return set(zip(frame.user_id, frame.timestamp.astype(int), frame.item_id))


def _logged_tags(store_dir: Path) -> set[tuple[str, int, str, str]]:
    logs = Store(store_dir).user_events()
    return {(user, ts, item, text) for user, rows in logs.items() for ts, item, event, text in rows if event == "tag"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, text_encoder) -> Path:
    """The 300 most-rated movies and the ratings and tags of users 1-40 on them, embedded text-only in
    ``embedded/`` (copied before each training so every test trains from the same untrained store)."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("input-errors"), n_items=300, max_user=40)
    embed_text_only(folder, folder / "embedded", text_encoder)
    return folder


def _train(folder: Path, name: str, interactions: Path, tags: Path | None, text_encoder) -> Path:
    store_dir = folder / name
    shutil.copytree(folder / "embedded", store_dir)
    train_store(store_dir, interactions, tags, _one_epoch(use_image=False), log=None, text_encoder=text_encoder)
    return store_dir


@pytest.fixture(scope="module")
def trained_with_tags(folder, text_encoder) -> tuple[Path, Recommender, set]:
    """A text-only model (``use_image=False``) trained on the slice with its tags, loaded on the text-only store,
    and the tag events training logged (read before any test adds events to the store)."""
    store_dir = _train(folder, "trained", folder / "interactions.csv", folder / "tags.csv", text_encoder)
    rec = Recommender.load(store_dir, device="cpu")
    rec.folder._text_encoder = text_encoder
    return store_dir, rec, _logged_tags(store_dir)


@pytest.fixture(scope="module")
def trained(trained_with_tags) -> tuple[Path, Recommender]:
    """The trained store and its Recommender. Tests add events to it: compare against the training input, never
    against this store's current log."""
    return trained_with_tags[:2]


# -- train: the event log reads timestamps and ids as load_interactions does ------------------------------------
def test_train_logs_iso_date_strings_as_unix_seconds(folder, trained_with_tags, text_encoder):
    _, _, plain_tags = trained_with_tags
    interactions = pd.read_csv(folder / "interactions.csv")
    iso = pd.to_datetime(interactions.timestamp, unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S")
    interactions.assign(timestamp=iso).to_csv(folder / "iso-interactions.csv", index=False)
    assert str(pd.read_csv(folder / "iso-interactions.csv").timestamp[0]).count("T") == 1

    tags = pd.read_csv(folder / "tags.csv")
    tags.assign(timestamp=pd.to_datetime(tags.timestamp, unit="s").dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(
        folder / "iso-tags.csv", index=False)

    # training reads the tags' date strings too (it used to drop every tag row whose timestamp was not a number)
    iso_store = _train(folder, "iso", folder / "iso-interactions.csv", folder / "iso-tags.csv", text_encoder)
    assert _logged_interactions(iso_store) == _input_interactions(folder / "interactions.csv")
    assert _logged_tags(iso_store) == plain_tags and plain_tags
    assert len(_logged_interactions(iso_store)) == len(interactions)
    assert Store(iso_store).get_users(["1"])["1"].last_timestamp == int(
        interactions[interactions.user_id == 1].timestamp.max())


def test_train_logs_a_parquet_datetime_column_as_unix_seconds(folder, text_encoder):
    interactions = pd.read_csv(folder / "interactions.csv", dtype={"user_id": str, "item_id": str})
    as_dates = interactions.assign(timestamp=pd.to_datetime(interactions.timestamp, unit="s"))
    as_dates.to_parquet(folder / "interactions.parquet")
    assert pd.api.types.is_datetime64_any_dtype(pd.read_parquet(folder / "interactions.parquet").timestamp)

    parquet_store = _train(folder, "parquet", folder / "interactions.parquet", None, text_encoder)
    logged = _logged_interactions(parquet_store)
    assert logged == _input_interactions(folder / "interactions.csv")
    assert max(ts for _, ts, _ in logged) == int(interactions.timestamp.max())


def test_a_train_that_fails_on_its_input_leaves_the_stored_model_intact(folder, trained, text_encoder):
    store_dir, _ = trained
    before_config = (store_dir / "model" / "config.json").read_text()
    before_users = Store(store_dir).get_users(["1", "7"])
    bad = pd.read_csv(folder / "interactions.csv", dtype=str)
    bad.loc[4, "timestamp"] = "not-a-date"
    bad.to_csv(folder / "bad-interactions.csv", index=False)
    with pytest.raises(ValueError, match="timestamp.*not-a-date"):
        train_store(store_dir, folder / "bad-interactions.csv", folder / "tags.csv", _one_epoch(use_image=False),
                    log=None, text_encoder=text_encoder)
    assert (store_dir / "model" / "config.json").read_text() == before_config
    after_users = Store(store_dir).get_users(["1", "7"])
    for user in ("1", "7"):
        np.testing.assert_array_equal(after_users[user].interest, before_users[user].interest)


# -- refresh: bad rows are rejected by row number and field, the rest applied -----------------------------------
def test_refresh_rejects_an_empty_user_and_non_finite_or_huge_timestamps_by_row(trained, tmp_path):
    store_dir, _ = trained
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,timestamp\n"
        ",260,2000000000\n"            # row 1: empty user_id
        "refresh-a,260,inf\n"          # row 2
        "refresh-a,1210,1e30\n"        # row 3: beyond int64, would be stored as int64 min
        "refresh-a,1196,2000000000\n"  # row 4: good
        "refresh-a,318,-inf\n"         # row 5
        "refresh-b,2571,2000000050\n"  # row 6: good
    )
    report = refresh_store(store_dir, tmp_path / "events.csv")
    reasons = {r["row"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {1, 2, 3, 5}
    assert reasons[1] == "empty user_id" and report.rejected[0]["user_id"] == ""
    assert all(reasons[row].startswith("timestamp") for row in (2, 3, 5))
    assert report.events_applied == 2
    logs = Store(store_dir).user_events(["refresh-a", "refresh-b"])
    assert [row[:2] for row in logs["refresh-a"]] == [(2000000000, "1196")]
    assert [row[:2] for row in logs["refresh-b"]] == [(2000000050, "2571")]


def test_refresh_without_events_or_rebuild_is_a_usage_error(trained, capsys):
    store_dir, _ = trained
    assert main(["refresh", "--store", str(store_dir)]) == EXIT_USAGE
    assert "give --events FILE, --rebuild, or both" in capsys.readouterr().err


def test_refresh_jsonl_with_a_missing_field_still_applies_the_valid_rows(trained, tmp_path):
    store_dir, rec = trained
    rows = [{"user_id": 9001, "item_id": 1210, "timestamp": 2000000000},
            {"user_id": 9001, "timestamp": 2000000010},   # row 2: no item -> item ids become floats
            {"item_id": 260, "timestamp": 2000000020},    # row 3: no user -> user ids become floats
            {"user_id": 9002, "item_id": 260, "timestamp": 2000000030}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert pd.read_json(tmp_path / "events.jsonl", lines=True, dtype=False).item_id.dtype == np.float64
    report = refresh_store(store_dir, tmp_path / "events.jsonl")
    assert {r["row"]: r["reason"] for r in report.rejected} == {2: "unknown item_id (not in the store)",
                                                                3: "empty user_id"}
    assert report.events_applied == 2
    logs = Store(store_dir).user_events(["9001", "9002"])
    assert logs["9001"] == [(2000000000, "1210", rec.default_event, "")]
    assert logs["9002"] == [(2000000030, "260", rec.default_event, "")]


def test_refresh_cli_exits_3_when_rows_are_rejected_and_1_on_invalid_input(trained, tmp_path, capsys):
    store_dir, rec = trained
    (tmp_path / "mixed.csv").write_text("user_id,item_id,timestamp\n"
                                        "cli-rejected,260,2000000000\n"
                                        "cli-rejected,no-such-item,2000000010\n")
    code = main(["refresh", "--store", str(store_dir), "--events", str(tmp_path / "mixed.csv"), "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_REJECTED == 3
    assert "rejected: row 2 (user cli-rejected, item no-such-item): unknown item_id" in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["events_applied"] == 1 and [r["row"] for r in summary["rejected"]] == [2]
    assert Store(store_dir).user_events(["cli-rejected"])["cli-rejected"] == [
        (2000000000, "260", rec.default_event, "")]  # the good row is applied

    (tmp_path / "no-timestamps.csv").write_text("user_id,item_id\ncli-failed,260\n")
    code = main(["refresh", "--store", str(store_dir), "--events", str(tmp_path / "no-timestamps.csv"), "--json"])
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED == 1
    assert "error: events file lacks column(s) ['timestamp (or seq_index)']" in err
    assert json.loads(out.strip().splitlines()[-1])["exit"] == 1  # --json: an error object, not a summary
    assert Store(store_dir).user_events(["cli-failed"])["cli-failed"] == []


def test_train_cli_refuses_an_unknown_modality_before_training(folder, tmp_path, capsys):
    store_dir = tmp_path / "store"
    shutil.copytree(folder / "embedded", store_dir)
    with pytest.raises(SystemExit) as usage:
        main(["train", "--store", str(store_dir), "--interactions", str(folder / "interactions.csv"),
              "--epochs", "1", "--modalities", "text,audio"])
    assert usage.value.code == EXIT_USAGE
    assert "argument --modalities: unknown 'audio'; choose from text, image, id" in capsys.readouterr().err
    assert not (store_dir / "model").exists()


# -- the Python API: malformed arguments raise ValueError naming the argument ------------------------------------
def test_score_takes_integer_ids_and_refuses_a_bare_id(trained):
    _, rec = trained
    np.testing.assert_array_equal(rec.score(1, [1210, np.int64(260)]), rec.score("1", ["1210", "260"]))
    with pytest.raises(ValueError, match="item_ids must be a list of item ids, got 1210"):
        rec.score("1", 1210)
    with pytest.raises(ValueError, match="user_id must be a non-empty string or an integer, got 1.5"):
        rec.score(1.5, ["1210"])


def test_bad_timestamps_raise_value_errors_naming_the_argument(trained):
    _, rec = trained
    with pytest.raises(ValueError, match=r"history\[1\] timestamp must be finite unix seconds.*got None"):
        rec.score(history=[("260", "interaction", 1), ("1196", "interaction", None)], item_ids=["1210"])
    for bad in (float("inf"), 10**20, float("nan"), "soon", True):
        with pytest.raises(ValueError, match=f"timestamp must be finite unix seconds .*got {bad!r}"):
            rec.observe("api-bad-time", "260", timestamp=bad)
    assert rec.store.user_events(["api-bad-time"])["api-bad-time"] == []
    rec.observe("api-numpy", 260, timestamp=np.int64(1_000))
    rec.observe("api-numpy", np.int64(1196), timestamp=np.float64(1_060.7))
    assert [row[:2] for row in rec.store.user_events(["api-numpy"])["api-numpy"]] == [(1_000, "260"),
                                                                                     (1_060, "1196")]


def test_recommend_accepts_numpy_integers_and_refuses_a_missing_user(trained):
    _, rec = trained
    assert rec.recommend("1", k=np.int64(5)) == rec.recommend("1", k=5)
    with pytest.raises(ValueError, match="k must be a positive integer, got True"):
        rec.recommend("1", k=True)
    with pytest.raises(ValueError, match="user_id must be a non-empty string or an integer, got None"):
        rec.recommend(None)
    with pytest.raises(ValueError, match="user_id must be a non-empty string or an integer, got ''"):
        rec.observe("", "260", timestamp=1)


# -- load: a store that lost a modality the model was trained on is refused --------------------------------------
def test_load_refuses_a_store_without_the_models_text_features(trained, tmp_path):
    store_dir, rec = trained
    assert not rec.model.config.use_image and "image" not in Store(store_dir).encoders()  # text-only loads
    copy = tmp_path / "no-text"
    shutil.copytree(store_dir, copy)
    store = Store(copy)
    store.db.execute("DELETE FROM features WHERE modality = 'text'")
    store.close()
    with pytest.raises(ModelLoadError, match=r"trained on text features from \['all-MiniLM-L6-v2@.*no text "
                                             r"features: re-embed the catalogue with its text columns"):
        Recommender.load(copy)


def test_load_refuses_a_store_without_the_models_image_features(tmp_path, posters, text_encoder, image_encoder):
    folder = write_movielens_slice(tmp_path, n_items=60, max_user=30)
    store_dir = folder / "store"
    embed_catalog(folder / "items.csv", store_dir, EmbedConfig(images_root=posters, text_columns=["title", "genres"]),
                  text_encoder=text_encoder, image_encoder=image_encoder)
    train_store(store_dir, folder / "interactions.csv", None, _one_epoch(use_image=True), log=None,
                text_encoder=text_encoder)
    assert Recommender.load(store_dir, device="cpu").model.config.use_image
    store = Store(store_dir)
    store.db.execute("DELETE FROM features WHERE modality = 'image'")
    store.close()
    with pytest.raises(ModelLoadError, match=r"no image features: re-embed the catalogue with images \(--images-root"):
        Recommender.load(store_dir)


def test_refresh_reads_timestamps_as_training_does(trained, tmp_path):
    store_dir, _ = trained
    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    (tmp_path / "events.csv").write_text(
        "user_id,item_id,timestamp\n"
        "iso-user,260,2033-05-18T03:33:20Z\n"   # 2000000000 as a date string
        "iso-user,1210,2033-05-18 03:34:10\n"   # UTC when no zone is given
        "iso-user,1196,not a date\n")
    report = refresh_store(copy, tmp_path / "events.csv")
    assert [(r["row"], r["reason"].split(" ")[0]) for r in report.rejected] == [(3, "timestamp")]
    assert [row[:2] for row in Store(copy).user_events(["iso-user"])["iso-user"]] == [
        (2000000000, "260"), (2000000050, "1210")]
    (tmp_path / "floats.csv").write_text("user_id,item_id,timestamp\nfloat-user,260,2000000000.75\n")
    assert refresh_store(copy, tmp_path / "floats.csv").events_applied == 1  # fractions dropped, as in training
    assert Store(copy).user_events(["float-user"])["float-user"][0][:2] == (2000000000, "260")
