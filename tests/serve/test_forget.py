"""Forgetting users (``mmrec forget``, :mod:`mmrec.forget`) on copies of the serving tests' trained store: no byte
of the user is left in any file of the store folder, other users are served as before, and neither a retrain nor a
refresh on files that still name the user brings them back."""

import hashlib
import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store
from mmrec.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from mmrec.forget import (FORGOTTEN_REASON, forget_users, forgotten_among, read_users_file, scrub_store,
                          unforget_users)
from mmrec.serve.refresh import refresh_store
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import train_store

from ..conftest import REPO, copy_store
from .conftest import PROBE

GONE, KEPT = "forget-me-5f2c", "keep-me-81aa"
UNIQUE_TAG = "quillfeather zebrine orbit 7731"  # lower case, no punctuation: stored as written
SHARED_TAG = "shared tag text 0b1d"
OTHERS = ["1", "42", "99", "150"]


def files_holding(folder, *needles: str) -> list[str]:
    """``"path: needle"`` for every file under ``folder`` (recursively) whose raw bytes hold a needle."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        content = path.read_bytes()
        found += [f"{path.relative_to(folder)}: {n!r}" for n in needles if n.encode() in content]
    return found


def cache_key(store, text):
    """The key :func:`mmrec.features.embed_event_texts` caches ``text``'s vector under."""
    return hashlib.sha256(f"{store.encoders()['text'][0]}\0{text}".encode()).hexdigest()


def load(store_dir, text_encoder):
    rec = Recommender.load(store_dir, device="cpu")
    rec.folder._text_encoder = text_encoder  # event texts not cached yet are embedded by the session's encoder
    return rec


@pytest.fixture
def store_copy(trained, tmp_path):
    return copy_store(trained[1], tmp_path / "store")


def add_users(rec):
    """``GONE`` (interactions, a tag only they wrote and one they share with ``KEPT``) and ``KEPT``."""
    tag = rec.text_events[0]  # the model reads "tag" events by their text
    t = 2_000_000_000
    for n, item in enumerate(["260", "1210", "2571"]):
        rec.observe(GONE, item, timestamp=t + n)
    rec.observe(GONE, "318", event=tag, timestamp=t + 10, text=UNIQUE_TAG)
    rec.observe(GONE, "296", event=tag, timestamp=t + 11, text=SHARED_TAG)
    rec.observe(KEPT, "593", timestamp=t)
    rec.observe(KEPT, "296", event=tag, timestamp=t + 1, text=SHARED_TAG)


def test_forget_leaves_no_byte_of_the_user_and_others_are_served_as_before(store_copy, text_encoder):
    rec = load(store_copy, text_encoder)
    before = {u: rec.recommend(u, k=20) for u in OTHERS}
    scores = rec.score_many(OTHERS, PROBE)
    add_users(rec)
    count = "SELECT COUNT(*) FROM text_cache"
    cached = rec.store.db.execute(count).fetchone()[0]
    assert files_holding(store_copy, GONE, UNIQUE_TAG), "the scan must see the user before the forget"

    # as the lead's Recommender.forget does it: the Recommender's own connection, under its lock
    with rec._lock:
        report = forget_users(rec.store, [GONE, "never-seen-0000"])
        rec.users.clear()
    assert report["users"] == [
        {"user_id": GONE, "events": 5, "states": 1, "texts": 1, "forgotten": 7},
        {"user_id": "never-seen-0000", "events": 0, "states": 0, "texts": 0, "forgotten": 0}]
    assert (report["forgotten"], report["tombstones"], report["scrubbed"]) == (1, 2, True)

    assert files_holding(store_copy, GONE, UNIQUE_TAG) == []
    assert {p.name for p in store_copy.rglob("*") if p.name.startswith("mmrec.sqlite-")} <= {
        "mmrec.sqlite-wal", "mmrec.sqlite-shm"}
    assert (store_copy / "mmrec.sqlite-wal").stat().st_size == 0
    store = rec.store
    assert store.user_events([GONE]) == {GONE: []} and store.get_users([GONE]) == {}
    assert store.cached_texts([cache_key(store, UNIQUE_TAG)]) == {}
    assert cache_key(store, SHARED_TAG) in store.cached_texts([cache_key(store, SHARED_TAG)])  # KEPT's too
    assert len(store.user_events([KEPT])[KEPT]) == 2
    assert store.db.execute(count).fetchone()[0] == cached - 1
    assert forgotten_among(store, [GONE, KEPT, "never-seen-0000"]) == {GONE, "never-seen-0000"}

    # other users: the same answers, from this Recommender and from one loaded afresh
    fresh = load(store_copy, text_encoder)
    for served in (rec, fresh):
        assert {u: served.recommend(u, k=20) for u in OTHERS} == before
        np.testing.assert_array_equal(served.score_many(OTHERS, PROBE), scores)
    # the forgotten id is a cold user again
    np.testing.assert_array_equal(fresh.score(GONE, PROBE), fresh.score("never-seen-0000", PROBE))
    fresh.close()

    again = forget_users(rec.store, [GONE])  # idempotent
    assert (again["forgotten"], again["events"], again["scrubbed"]) == (0, 0, True)
    rec.close()


def test_forget_inside_a_transaction_leaves_the_scrub_to_the_caller(store_copy, text_encoder):
    rec = load(store_copy, text_encoder)
    add_users(rec)
    store = rec.store
    with store.transaction():
        report = forget_users(store, [GONE])
        assert report["scrubbed"] is False and report["events"] == 5
        with pytest.raises(ValueError, match="inside a transaction"):
            scrub_store(store)
    scrub_store(store)
    assert files_holding(store_copy, GONE, UNIQUE_TAG) == []
    rec.close()


def test_a_retrain_or_refresh_on_files_that_still_name_a_forgotten_user_leaves_them_out(trained, store_copy, tmp_path,
                                                                                        text_encoder):
    folder = trained[0]
    user = "7"  # a MovieLens user with interactions and tags in the training files
    tags = pd.read_csv(folder / "tags.csv")
    store = Store(store_copy)
    log = store.user_events([user])[user]
    own_texts = {e[3] for e in log if e[3]} - {e[3] for u, events in store.user_events().items() if u != user
                                                for e in events if e[3]}
    assert len(log) > 100 and own_texts and user in store.get_users([user])
    keys = [cache_key(store, t) for t in own_texts]
    assert len(store.cached_texts(keys)) == len(own_texts)

    report = forget_users(store, [user])
    assert report["events"] == len(log) and report["texts"] == len(own_texts)
    assert store.cached_texts(keys) == {}
    store.close()

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train_store(store_copy, folder / "interactions.csv", folder / "tags.csv",
                              TrainConfig(epochs=1, show_progress=False, device="cpu"), log=None,
                              text_encoder=text_encoder)
    seconds = time.perf_counter() - start
    skipped = [str(w.message) for w in caught if "forgotten user" in str(w.message)]
    n_tags = int((tags.user_id == int(user)).sum())
    assert any(f"skipped {n_tags} row(s) of 1 forgotten user(s)" in m for m in skipped), skipped
    assert not any(user in m.split("skipped")[1] for m in skipped)  # counts only, never the id
    print(f"retrain after forget: {seconds:.1f} s ({summary['seconds_per_epoch']} s/epoch, 1 epoch)")

    store = Store(store_copy)
    assert user not in store.logged_users() and store.get_users([user]) == {}
    assert store.user_events([user]) == {user: []}
    assert store.cached_texts(keys) == {}  # training did not embed their tags again
    assert summary["users"] == len(store.logged_users())

    # a refresh naming the user rejects their rows and applies the others'
    pd.DataFrame({"user_id": ["3", user, user], "item_id": ["260", "1210", "318"],
                  "timestamp": [2_100_000_000] * 3}).to_csv(tmp_path / "refresh-7.csv", index=False)
    refreshed = refresh_store(store_copy, tmp_path / "refresh-7.csv")
    assert refreshed.events_applied == 1
    assert [(r["row"], r["user_id"], r["field"], r["reason"]) for r in refreshed.rejected] == [
        (2, user, "user_id", FORGOTTEN_REASON), (3, user, "user_id", FORGOTTEN_REASON)]
    assert store.user_events([user]) == {user: []}

    # a returning user: lifting the tombstone lets their files train again (their old rows stay deleted)
    assert unforget_users(store, [user]) == 1 and forgotten_among(store, [user]) == set()
    assert unforget_users(store, [user]) == 0
    store.close()


def test_cli_forget_end_to_end(store_copy, text_encoder, tmp_path):
    rec = load(store_copy, text_encoder)
    add_users(rec)
    rec.close()
    (tmp_path / "users.txt").write_text(f"user_id\n{GONE}\n\nnever-seen-0000\n")
    done = subprocess.run([sys.executable, "-m", "mmrec.cli", "forget", "--store", str(store_copy), "--user", GONE,
                           "--users-file", str(tmp_path / "users.txt"), "--json"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == EXIT_OK, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert [(u["user_id"], u["forgotten"]) for u in summary["users"]] == [(GONE, 7), ("never-seen-0000", 0)]
    assert summary["forgotten"] == 1 and summary["scrubbed"] is True
    assert f"user {GONE}: deleted 5 events, 1 stored state(s), 1 cached event texts" in done.stdout
    assert "user never-seen-0000: not in the store" in done.stdout
    assert files_holding(store_copy, GONE, UNIQUE_TAG) == []
    with Store(store_copy) as store:
        assert len(store.user_events([KEPT])[KEPT]) == 2


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_forget_errors_name_the_store_or_the_file(store_copy, tmp_path, capsys):
    code, out, err = run_cli(["forget", "--store", str(tmp_path / "nowhere"), "--user", "1", "--json"], capsys)
    assert code == EXIT_FAILED and f"--store {tmp_path / 'nowhere'}: not an mmrec store" in err
    assert json.loads(out.strip().splitlines()[-1])["exit"] == EXIT_FAILED

    code, _, err = run_cli(["forget", "--store", str(store_copy)], capsys)
    assert code == EXIT_USAGE and "--user" in err

    missing = tmp_path / "missing.txt"
    code, _, err = run_cli(["forget", "--store", str(store_copy), "--users-file", str(missing)], capsys)
    assert code == EXIT_FAILED and f"--users-file {missing}: no such file" in err

    bad = tmp_path / "users.csv"
    bad.write_text("id\n1\n")
    code, _, err = run_cli(["forget", "--store", str(store_copy), "--users-file", str(bad)], capsys)
    assert code == EXIT_FAILED and f"users file {bad}: no user_id column" in err

    binary = tmp_path / "users.bin"
    binary.write_bytes(b"\xff\xfe\x00bad")
    code, _, err = run_cli(["forget", "--store", str(store_copy), "--users-file", str(binary)], capsys)
    assert code == EXIT_FAILED and f"users file {binary}: not UTF-8" in err

    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run_cli(["forget", "--store", str(store_copy), "--users-file", str(empty)], capsys)
    assert code == EXIT_FAILED and f"users file {empty}: names no user ids" in err

    code, _, err = run_cli(["forget", "--store", str(store_copy), "--user", "  "], capsys)
    assert code == EXIT_FAILED and "--user must be a non-empty string" in err
    with Store(store_copy) as store:  # nothing was recorded by the failed runs
        assert store.get_meta("forget_secret") is None


def test_read_users_file_formats(tmp_path):
    pd.DataFrame({"user_id": [7, 12], "other": ["a", "b"]}).to_csv(tmp_path / "u.csv", index=False)
    pd.DataFrame({"user_id": ["x", " y "]}).to_parquet(tmp_path / "u.parquet")
    (tmp_path / "u.txt").write_text(" 7 \nabc\n")
    assert read_users_file(tmp_path / "u.csv") == ["7", "12"]
    assert read_users_file(tmp_path / "u.parquet") == ["x", "y"]
    assert read_users_file(tmp_path / "u.txt") == ["7", "abc"]


def test_the_scrub_also_clears_what_earlier_deletions_left_in_free_space(store_copy):
    """SQLite built without SECURE_DELETE (its default) leaves deleted rows' bytes in free pages: a retrain's
    ``replace_events`` or an earlier delete. VACUUM rebuilds the file without them."""
    store = Store(store_copy)
    store.db.execute("PRAGMA secure_delete=OFF")
    store.add_events([(GONE, 2_000_000_000 + n, "260", "tag", UNIQUE_TAG) for n in range(50)])
    with store.transaction() as db:
        db.execute("DELETE FROM events WHERE user_id = ?", (GONE,))
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.add_events([(GONE, 2_100_000_000, "260", "interaction", "")])
    assert "mmrec.sqlite: 'quillfeather zebrine orbit 7731'" in files_holding(store_copy, UNIQUE_TAG)
    assert forget_users(store, [GONE])["events"] == 1
    assert files_holding(store_copy, GONE, UNIQUE_TAG) == []
    assert store.db.execute("PRAGMA secure_delete").fetchone()[0] == 0  # the connection's setting is restored
    store.close()


def test_a_reader_holding_the_old_file_makes_the_scrub_fail_until_run_again(store_copy):
    import sqlite3

    store = Store(store_copy)
    store.add_events([(GONE, 2_000_000_000 + n, "260", "interaction", "") for n in range(5)])
    reader = sqlite3.connect(store_copy / "mmrec.sqlite", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()
    store.db.execute("PRAGMA busy_timeout=200")  # not the store's 30 s
    with pytest.raises(RuntimeError, match="deleted and committed.*run the same forget again"):
        forget_users(store, [GONE])
    assert store.user_events([GONE]) == {GONE: []}
    reader.execute("COMMIT")
    reader.close()
    assert forget_users(store, [GONE])["scrubbed"] is True
    assert files_holding(store_copy, GONE) == []
    store.close()


def test_forgetting_nobody_records_no_secret(store_copy):
    with Store(store_copy) as store:
        report = forget_users(store, [])
        assert (report["users"], report["tombstones"], report["scrubbed"]) == ([], 0, True)
        assert store.get_meta("forget_secret") is None and forgotten_among(store, ["1"]) == set()


def test_recommender_forget_drops_the_user_from_its_cache(store_copy, text_encoder):
    rec = load(store_copy, text_encoder)
    cold = rec.recommend("never-seen", k=10)
    add_users(rec)
    assert rec.recommend(GONE, k=10) != cold  # cached from their events
    report = rec.forget([GONE])
    assert report["forgotten"] == 1 and report["scrubbed"]
    assert rec.recommend(GONE, k=10) == cold and rec.store.user_events([GONE])[GONE] == []
    assert files_holding(store_copy, GONE, UNIQUE_TAG) == []
    rec.observe(KEPT, "260", timestamp=2_000_000_100)  # the connection still writes after the scrub
