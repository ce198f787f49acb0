"""Pseudonymised user ids (``--id-key``, :mod:`mmrec.pseudonym`) on a real slice: the store never holds a raw user
id, callers keep using raw ids through every entry point (train, refresh, the Python API, forget, the CLI and HTTP),
and a store cannot be read for users without its key or with another one."""

import re
import sqlite3

import httpx
import numpy as np
import pandas as pd
import pytest

from mmrec import IdKey, IdKeyError, Recommender, Store
from mmrec.cli import EXIT_FAILED, EXIT_OK, main
from mmrec.forget import FORGOTTEN_REASON, without_forgotten
from mmrec.pseudonym import ENV_VAR, FINGERPRINT_META, MIN_KEY_BYTES, bind_id_key, resolve_id_key
from mmrec.serve.refresh import refresh_store
from mmrec.store import DB_NAME
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import evaluate_store, train_store

from ..conftest import copy_store
from .conftest import PROBE
from .test_forget import files_holding
from .test_http import cli_server, free_port, post

PREFIX = "cust-"  # every raw id carries it, so a byte scan of the store can look for any of them at once
PSEUDONYM = re.compile(r"[0-9a-f]{32}")


def raw(user) -> str:
    return f"{PREFIX}{user}-qz"


def write_key(path, secret=b"k" * 32):
    path.write_bytes(secret + b"\n")
    return path


@pytest.fixture(scope="module")
def keyed(trained, text_encoder, tmp_path_factory):
    """A copy of the serving tests' store retrained (1 epoch) with an id key on files naming users ``cust-N-qz``:
    ``(folder, store, key file)``. The copy held raw ids before: training with the key pseudonymises it."""
    folder = tmp_path_factory.mktemp("keyed")
    store = copy_store(trained[1], folder / "store")
    for name in ("interactions.csv", "tags.csv"):
        frame = pd.read_csv(trained[0] / name)
        frame["user_id"] = frame["user_id"].map(raw)
        frame.to_csv(folder / name, index=False)
    key = write_key(folder / "id.key")
    train_store(store, folder / "interactions.csv", folder / "tags.csv",
                TrainConfig(epochs=1, show_progress=False, device="cpu"), log=None, text_encoder=text_encoder,
                id_key=key)
    return folder, store, key


def load(store, key, text_encoder):
    rec = Recommender.load(store, device="cpu", id_key=key)
    rec.folder._text_encoder = text_encoder
    return rec


# -- the key ------------------------------------------------------------------------------------------------------
def test_a_key_is_read_from_its_file_and_must_be_long_enough(tmp_path, monkeypatch):
    key = IdKey.read(write_key(tmp_path / "a.key"))
    assert key == IdKey(b"k" * 32)  # the trailing newline is not part of the key
    assert key.pseudonyms(["7", "7", "", "8"])[:3] == [key.pseudonym("7")] * 2 + [""]
    assert PSEUDONYM.fullmatch(key.pseudonym("7")) and key.pseudonym("7") != IdKey(b"j" * 32).pseudonym("7")
    assert "k" * 32 not in repr(key)
    with pytest.raises(IdKeyError, match=rf"short.key: 5 bytes, need at least {MIN_KEY_BYTES}"):
        IdKey.read(write_key(tmp_path / "short.key", b"12345"))
    with pytest.raises(IdKeyError, match="missing.key"):
        IdKey.read(tmp_path / "missing.key")
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_id_key(None) is None
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "a.key"))
    assert resolve_id_key(None) == key


# -- what the store holds -----------------------------------------------------------------------------------------
def test_training_with_a_key_leaves_no_raw_user_id_in_any_file_of_the_store(keyed):
    folder, store, key = keyed
    assert files_holding(store, PREFIX) == []
    db = sqlite3.connect(store / DB_NAME)
    try:
        for table in ("users", "events"):
            ids = [u for (u,) in db.execute(f"SELECT DISTINCT user_id FROM {table}")]
            assert ids and all(PSEUDONYM.fullmatch(u) for u in ids), table
        fingerprint = db.execute("SELECT value FROM meta WHERE key = ?", (FINGERPRINT_META,)).fetchone()[0]
    finally:
        db.close()
    assert fingerprint == IdKey.read(key).fingerprint
    trained_users = pd.read_csv(folder / "interactions.csv").user_id.unique()
    assert len(ids) == len(trained_users)


def test_without_the_key_or_with_another_the_store_cannot_be_read_for_users(keyed, tmp_path, monkeypatch):
    folder, store, _ = keyed
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(IdKeyError, match="pseudonymised .* no id key was given.*--id-key FILE"):
        Recommender.load(store, device="cpu")
    wrong = write_key(tmp_path / "wrong.key", b"w" * 32)
    with pytest.raises(IdKeyError, match="wrong.key is not the key"):
        Recommender.load(store, device="cpu", id_key=wrong)
    for argv in (["refresh", "--store", str(store), "--rebuild"],
                 ["forget", "--store", str(store), "--user", raw(1), "--id-key", str(wrong)],
                 ["evaluate", "--store", str(store), "--interactions", str(folder / "interactions.csv")]):
        assert main(argv) == EXIT_FAILED, argv
    with pytest.raises(IdKeyError, match="no id key"):
        train_store(store, folder / "interactions.csv", None, TrainConfig(epochs=1, show_progress=False), log=None)


def test_a_key_for_a_store_of_raw_ids_is_refused_and_embed_can_mark_a_new_store(trained, tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    store = copy_store(trained[1], tmp_path / "raw")
    key = write_key(tmp_path / "id.key")
    with pytest.raises(IdKeyError, match="holds raw user ids"):
        Recommender.load(store, device="cpu", id_key=key)
    fresh = tmp_path / "fresh"
    argv = ["embed", str(trained[0] / "items.csv"), "--store", str(fresh), "--no-images", "--text-columns",
            "title,genres", "--id-key", str(key)]
    assert main(argv) == EXIT_OK
    with Store(fresh, create=False) as opened:
        assert opened.get_meta(FINGERPRINT_META) == IdKey.read(key).fingerprint
        with pytest.raises(IdKeyError, match="no id key"):
            bind_id_key(opened, None)


# -- every entry point takes raw ids -------------------------------------------------------------------------------
def test_raw_ids_reach_their_pseudonymised_users_through_the_python_api(keyed, text_encoder, monkeypatch):
    folder, store, key = keyed
    rec = load(copy_store(store, folder / "api"), key, text_encoder)
    pseudonym = IdKey.read(key).pseudonym
    users = [raw(u) for u in (1, 42, 99)]
    stored = rec.store.get_users([pseudonym(u) for u in users])
    assert len(stored) == 3
    cold = rec.score("never-seen", PROBE)
    scores = rec.score_many(users, PROBE)
    for user, row in zip(users, scores):
        assert not np.allclose(row, cold)  # the user's own state, not the cold fallback
        np.testing.assert_allclose(row, rec.score(user, PROBE), rtol=1e-6)
        seen = set(pd.read_csv(folder / "interactions.csv").query("user_id == @user").item_id.astype(str))
        assert not seen & {i for i, _ in rec.recommend(user, k=50)}
    assert rec.explain(users[0], [rec.recommend(users[0], k=1)[0][0]])[0]

    rec.observe(users[0], "2571", timestamp=2_000_000_000)
    assert rec.store.get_users([pseudonym(users[0])])[pseudonym(users[0])].last_timestamp == 2_000_000_000
    monkeypatch.setenv(ENV_VAR, str(key))  # a second process finding the key through the environment
    other = Recommender.load(rec.store.path, device="cpu")
    np.testing.assert_allclose(other.score(users[0], PROBE), rec.score(users[0], PROBE), rtol=1e-6)
    assert files_holding(rec.store.path, PREFIX) == []
    other.close()
    rec.close()


def test_refresh_and_forget_take_raw_ids_and_a_forgotten_user_stays_out(keyed, text_encoder, tmp_path):
    folder, store, key = keyed
    store = copy_store(store, tmp_path / "store")
    events = tmp_path / "events.csv"
    pd.DataFrame({"user_id": [raw(5), raw(5), raw("new")], "item_id": ["260", "1210", "318"],
                  "timestamp": [2_000_000_000, 2_000_000_001, 2_000_000_002]}).to_csv(events, index=False)
    report = refresh_store(store, events, id_key=key)
    assert (report.events_applied, report.rejected) == (3, [])
    assert main(["forget", "--store", str(store), "--user", raw(5), "--id-key", str(key)]) == EXIT_OK
    assert files_holding(store, PREFIX) == []
    pseudonym = IdKey.read(key).pseudonym(raw(5))
    with Store(store, create=False) as opened:
        assert opened.user_events([pseudonym])[pseudonym] == [] and opened.get_users([pseudonym]) == {}
        with pytest.warns(UserWarning, match="of 1 forgotten user"):
            kept = without_forgotten(opened, folder / "interactions.csv", "interactions", IdKey.read(key))
    assert raw(5) not in set(kept.user_id)
    again = refresh_store(store, events, id_key=key)
    assert [r["reason"] for r in again.rejected] == [FORGOTTEN_REASON] * 2
    assert {r["user_id"] for r in again.rejected} == {raw(5)}  # reported as the caller named them
    assert evaluate_store(store, folder / "interactions.csv", text_encoder=text_encoder, id_key=key)["test"]


def test_http_takes_raw_ids_with_the_servers_key(keyed, text_encoder, tmp_path, monkeypatch, capsys):
    folder, store, key = keyed
    monkeypatch.delenv(ENV_VAR, raising=False)
    store = copy_store(store, tmp_path / "store")
    rec = load(store, key, text_encoder)
    expected = rec.recommend(raw(42), k=10)
    rec.close()
    with cli_server(store, tmp_path / "server.log", "--id-key", str(key)) as url:
        answer = post(url, "/recommend", {"user_id": raw(42), "k": 10})
        assert answer.status_code == 200, answer.text
        assert [r["item_id"] for r in answer.json()["items"]] == [i for i, _ in expected]
        answer = post(url, "/events", {"events": [{"user_id": raw("http"), "item_id": "260",
                                                   "timestamp": 2_000_000_000}]})
        assert answer.status_code == 200, answer.text
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert files_holding(store, PREFIX) == []
    assert main(["serve", "--store", str(store), "--port", str(free_port())]) == EXIT_FAILED
    assert "no id key was given" in capsys.readouterr().err
