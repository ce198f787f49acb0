"""`mmrec refresh` killed with SIGKILL at several points leaves a sound store holding whole batches only, and a rerun
ends byte-identical to a clean run.

A model is trained once on the early part of each user's MovieLens ratings (some users held out whole: new users);
the later part is the file of new events a refresh applies, in batches of ``BATCH_USERS`` users, each batch one
transaction. The child is the real command line, ``python -m mmrec.cli refresh ... --batch-users BATCH_USERS``, in
its own process. The test watches the store from outside, read-only (the number of logged events; SQLite's WAL write
lock, a POSIX lock on the ``-shm`` file) and kills the child as soon as it takes the write lock, once some batches
are committed, or in the middle of the ``--rebuild`` that follows the batches. After each kill: ``PRAGMA
integrity_check`` passes, the store opens, its event log is the training log plus whole batches, every user's row is
either the one from before the refresh or the one an uninterrupted refresh wrote (the first for users of batches not
committed, the second for the others; a ``--rebuild`` all or nothing), and close to a recompute from the user's
logged events. A rerun to completion then leaves the users and events tables byte-identical to an uninterrupted
run's. ``scripts/kill_matrix.py --command refresh`` runs the same checks at 20+ points (outside CI).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import train_store

from .conftest import REPO, copy_store, embed_text_only, store_write_locked, write_movielens_slice

N_ITEMS = 150
MAX_USER = 60
NEW_USERS_FROM = 51  # users 51..60 are held out of training whole: the refresh brings them in
BATCH_USERS = 4

USER_COLUMNS = "user_id, model, state, interest, last_timestamp, n_events"
EVENT_COLUMNS = "user_id, timestamp, item_id, event, text"


def refresh_args(store_dir: Path, events: Path, rebuild: bool) -> list[str]:
    return [sys.executable, "-m", "mmrec.cli", "refresh", "--store", str(store_dir), "--events", str(events),
            "--batch-users", str(BATCH_USERS), *(["--rebuild"] if rebuild else [])]


def tables(store_dir: Path) -> tuple[dict, list]:
    """``({user_id: users row}, sorted events rows)``: the two tables a refresh writes, as stored bytes."""
    connection = sqlite3.connect(store_dir / "mmrec.sqlite")
    try:
        users = {row[0]: row for row in connection.execute(f"SELECT {USER_COLUMNS} FROM users")}
        events = connection.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY {EVENT_COLUMNS}").fetchall()
        return users, events
    finally:
        connection.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, text_encoder):
    """The trained store, the file of new events, the batches a refresh commits (user lists, in order), and the
    tables before any refresh and after an uninterrupted ``refresh`` and ``refresh --rebuild`` (children, on the
    CPU, one torch thread each: all runs alike, so their floats are comparable byte for byte)."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("refresh-kill"), n_items=N_ITEMS, max_user=MAX_USER)
    ratings = pd.read_csv(folder / "interactions.csv").sort_values(["user_id", "timestamp", "item_id"], kind="stable")
    position = ratings.groupby("user_id").cumcount() / ratings.groupby("user_id").user_id.transform("size")
    later = (position >= 0.6) | (ratings.user_id >= NEW_USERS_FROM)
    ratings[~later].to_csv(folder / "early.csv", index=False)
    new = ratings[later].sort_values(["timestamp", "user_id", "item_id"])[["user_id", "item_id", "timestamp"]]
    new.to_csv(folder / "events.csv", index=False)

    trained = folder / "trained"
    embed_text_only(folder, trained, text_encoder)
    train_store(trained, folder / "early.csv", None, TrainConfig(epochs=1, show_progress=False), log=None,
                text_encoder=text_encoder)
    users = [str(u) for u in dict.fromkeys(new.user_id)]  # the refresh's order: first appearance in the file
    batches = [users[i : i + BATCH_USERS] for i in range(0, len(users), BATCH_USERS)]
    assert len(batches) >= 6

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    references = {}
    for rebuild in (False, True):
        store_dir = copy_store(trained, folder / f"reference-{'rebuild' if rebuild else 'plain'}")
        done = subprocess.run(refresh_args(store_dir, folder / "events.csv", rebuild), env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        references[rebuild] = tables(store_dir)
    before = tables(trained)
    assert len(references[False][1]) == len(before[1]) + len(new)  # every new event applies: no duplicate, no reject
    return folder, trained, batches, before, references, env


def _events_logged(db: Path) -> int:
    """Rows of the event log, read from outside the child through a read-only connection."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        return connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    except sqlite3.OperationalError:  # busy: count again on the next turn
        return -1
    finally:
        connection.close()




def kill_refresh(args: list[str], db: Path, env: dict, after_events: int, writing: bool,
                 timeout: float = 120) -> int:
    """Run ``args`` and SIGKILL it once the store logs ``after_events`` events (and, with ``writing``, while it holds
    the write lock). Returns the child's exit status (``-SIGKILL`` when it was killed)."""
    child = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while child.poll() is None and time.monotonic() < deadline:
            if _events_logged(db) >= after_events and (not writing or store_write_locked(db)):
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        return child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# (batches committed before the kill, --rebuild, kill only while the write lock is held)
POINTS = {"writing": (0, False, True), "1-batch": (1, False, False), "3-batches": (3, False, False),
          "rebuild": (None, True, True)}


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_refresh_leaves_whole_batches_and_a_rerun_matches_a_clean_run(setup, tmp_path, point):
    folder, trained, batches, before, references, env = setup
    after_batches, rebuild, writing = POINTS[point]
    after_batches = len(batches) if after_batches is None else after_batches
    before_users, before_events = before
    plain_users, plain_events = references[False]
    new_by_user: dict[str, list] = {}
    logged = set(before_events)
    for row in plain_events:
        if row not in logged:
            new_by_user.setdefault(row[0], []).append(row)
    sizes = np.cumsum([0] + [sum(len(new_by_user[u]) for u in batch) for batch in batches])

    store_dir = copy_store(trained, tmp_path / "store")
    db = store_dir / "mmrec.sqlite"
    args = refresh_args(store_dir, folder / "events.csv", rebuild)
    status = kill_refresh(args, db, env, len(before_events) + int(sizes[after_batches]), writing)
    assert status == -signal.SIGKILL, f"the child was not killed (exit status {status})"

    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        connection.close()
    users, events = tables(store_dir)
    # whole batches only: the log is the training log plus the events of the first k batches
    k = int(np.searchsorted(sizes, len(events) - len(before_events)))
    assert k >= after_batches and sizes[k] == len(events) - len(before_events)
    assert events == sorted(before_events + [r for batch in batches[:k] for u in batch for r in new_by_user[u]])
    done = {u for batch in batches[:k] for u in batch}
    if rebuild and users == references[True][0]:
        assert k == len(batches)  # the rebuild committed (all users at once) just before the kill
    else:
        assert users.keys() == before_users.keys() | done
        for user, row in users.items():
            assert row == (plain_users[user] if user in done else before_users[user]), user
    with Store(store_dir, create=False):
        pass
    rec = Recommender.load(store_dir, device="cpu")
    try:
        stored = rec.store.get_users(sorted(done))
        logs = rec.store.user_events(sorted(done))
        short = [u for u in sorted(done) if len(logs[u]) <= rec.max_len]  # longer ones carry more than the window
        assert short or not done
        for state in rec.folder.recompute(rec.model_id, short):
            np.testing.assert_allclose(stored[state.user_id].interest, state.interest, rtol=1e-4, atol=1e-5,
                                       err_msg=state.user_id)
            assert (stored[state.user_id].last_timestamp, stored[state.user_id].n_events) == (
                state.last_timestamp, state.n_events)
    finally:
        rec.store.close()

    rerun = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert tables(store_dir) == references[rebuild]


def test_batch_users_defaults_to_refresh_stores_and_must_be_positive(capsys):
    import inspect

    from mmrec.cli import build_parser
    from mmrec.serve import refresh_store

    parser = build_parser(["refresh"])
    args = parser.parse_args(["refresh", "--store", "s", "--rebuild"])
    assert args.batch_users == inspect.signature(refresh_store).parameters["batch_users"].default
    assert parser.parse_args(["refresh", "--store", "s", "--rebuild", "--batch-users", "7"]).batch_users == 7
    with pytest.raises(SystemExit) as exit:
        parser.parse_args(["refresh", "--store", "s", "--rebuild", "--batch-users", "0"])
    assert exit.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err
