"""``mmrec serve`` killed with SIGKILL while clients stream ``POST /events``: after a restart every event the server
acknowledged (answered 200) is in the event log, and every user's stored state equals a recompute from that log.

The server is the real command line (``python -m mmrec.cli serve``) on a copy of the serving tests' trained store,
in its own process group, at the default durability (``normal``: WAL + ``synchronous=NORMAL``, durable against a
crash of the process). ``STREAMS`` clients, one thread each, post small batches planned in advance: each stream owns
some new users and some users the store already holds (their logs short enough that stepping a state equals a
recompute, see ``Recommender.observe``), and a few users are shared by every stream (their events arrive out of
time order across streams). The plans also hold deliberately late events (the recompute path) and duplicates
(within a batch and of earlier batches). Once enough batches are acknowledged the test kills the server's process
group at a moment its write lock is held (a group commit inside its transaction; read from outside with a POSIX
lock probe, :func:`writing`), or after a deadline; every stream then ends with one failed request.

After the kill: ``PRAGMA integrity_check`` is ``ok``; each acknowledged event is logged; the touched users' logs hold
nothing but what they held before plus events sent, and each failed (unacknowledged) batch is there whole or not at
all; every touched user with a log has a state of the current model equal to ``EventFolder.recompute``; untouched
users' rows are byte-identical. A restarted server answers ``/healthz`` and ``/recommend`` (as the Python API does)
and accepts a new batch, whose user then still equals a recompute.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from mmrec import Recommender
from mmrec.store import DB_NAME

from ..conftest import REPO, copy_store, store_write_locked
from .test_http import cli_server, free_port, integrity, post, wait_until_up

STREAMS = 4
OWN_NEW, OWN_EXISTING, SHARED = 6, 3, 2  # users per stream (new, already in the store) and users all streams share
SPARE = 2  # events each user's log leaves below max_len: stepping equals a recompute (and the restart adds one)
KILL_AFTER_ACKED = 30  # batches acknowledged before the kill may come (then once a commit holds the write lock)
MIN_ACKED = 15  # ... and by KILL_DEADLINE_S, lock or not, once this many are (by GIVE_UP_S in any case)
KILL_DEADLINE_S, GIVE_UP_S = 3.0, 20.0
START = 2_000_000_000  # new users' first timestamp

Key = tuple  # (user_id, timestamp, item_id, event, text): an event as the log stores it


# -- the plan ---------------------------------------------------------------------------------------------------
def plan_streams(existing: dict[str, list[tuple]], item_ids: list[str], max_len: int, seed: int = 7
                 ) -> tuple[list[list[list[dict]]], set[str]]:
    """``STREAMS`` lists of ``/events`` batches (each a list of event bodies) and the users they touch. ``existing``:
    the logs of users already in the store that the streams may use (short ones)."""
    rng = random.Random(seed)
    old = sorted(existing, key=lambda u: (len(existing[u]), u))[: STREAMS * OWN_EXISTING]
    assert len(old) == STREAMS * OWN_EXISTING, "the trained store has too few users with short logs"
    shared = [f"kill-shared-{n}" for n in range(SHARED)]
    owned = [[f"kill-new-{s}-{n}" for n in range(OWN_NEW)] + old[s::STREAMS] for s in range(STREAMS)]
    # each user's room in the log, split between the streams for shared users
    room = {u: max_len - SPARE - len(existing.get(u, [])) for s in owned for u in s}
    room.update({u: (max_len - SPARE) // STREAMS for u in shared})
    last = {u: max(e[0] for e in existing[u]) if u in existing else START for s in owned for u in s}
    sent: set[Key] = set()
    streams = []
    for s in range(STREAMS):
        budget = {u: room[u] for u in owned[s] + shared}
        # shared users' timestamps interleave across streams: stream s takes every STREAMS-th second slot
        clock = {**{u: last[u] for u in owned[s]}, **{u: START + s for u in shared}}
        batches, mine = [], []
        while True:
            users = [u for u, left in budget.items() if left > 0]
            if not users:
                break
            batch = []
            for user in rng.sample(users, min(len(users), rng.randint(1, 3))):
                if user in shared:
                    clock[user] += STREAMS * rng.randint(1, 50)
                    ts = clock[user]
                elif not batch and len(batches) % 6 == 2:
                    ts = clock[user] - rng.randint(1, 10_000)  # late: before the user's last event
                else:
                    clock[user] += rng.randint(1, 600)
                    ts = clock[user]
                key = (user, ts, rng.choice(item_ids), "interaction", "")
                if key in sent:
                    continue
                sent.add(key)
                budget[user] -= 1
                event = {"user_id": user, "item_id": key[2], "timestamp": ts}
                if rng.random() < 0.3:
                    event["event"] = "interaction"
                if user.isdigit() and rng.random() < 0.3:
                    event["user_id"] = int(user)  # integers are ids too
                batch.append(event)
            if not batch:
                continue
            if mine and len(batches) % 5 == 3:
                batch.append(dict(rng.choice(mine)))  # a duplicate of an earlier batch's event
            if len(batches) % 9 == 4:
                batch.append(dict(batch[0]))  # a duplicate within the batch
            rng.shuffle(batch)
            mine += batch
            batches.append(batch)
        streams.append(batches)
    return streams, {u for s in owned for u in s} | set(shared)


def key_of(event: dict) -> Key:
    return (str(event["user_id"]), int(event["timestamp"]), str(event["item_id"]), "interaction", "")


# -- killing the server -----------------------------------------------------------------------------------------


def stream(url: str, batches: list[list[dict]], acked: list, failed: list, other: list, lock: threading.Lock,
           in_flight: list, n: int) -> None:
    """Post ``batches`` one after another until the first request that gets no answer (the kill)."""
    with httpx.Client(base_url=url, timeout=30) as http:
        for batch in batches:
            in_flight[n] = True
            try:
                reply = http.post("/events", json={"events": batch})
            except httpx.TransportError as error:
                with lock:
                    failed.append((batch, repr(error)))
                return
            finally:
                in_flight[n] = False
            with lock:
                if reply.status_code == 200:
                    acked.append((batch, reply.json()))
                else:
                    other.append((batch, reply.status_code, reply.text[:500]))
                    return
    with lock:
        other.append(("plan exhausted before the kill", n))


def assert_states_equal_a_recompute(rec: Recommender, users: set[str]) -> None:
    """Every user of ``users`` with a logged event has a state of ``rec``'s model equal to a recompute from the
    log (no user without a log has one)."""
    logs = rec.store.user_events(sorted(users))
    states = rec.store.get_users(sorted(users))
    logged = {u for u in users if logs[u]}
    assert set(states) == logged, f"states without a log: {sorted(set(states) - logged)[:10]}, logs without a " \
                                  f"state: {sorted(logged - set(states))[:10]}"
    recomputed = {s.user_id: s for s in rec.folder.recompute(rec.model_id, sorted(logged), logs)}
    for user in sorted(logged):
        stored, expected = states[user], recomputed[user]
        assert len(logs[user]) <= rec.max_len, user  # stepping equals a recompute only up to max_len events
        assert stored.model == rec.model_id, user
        assert (stored.last_timestamp, stored.n_events) == (expected.last_timestamp, expected.n_events), user
        np.testing.assert_allclose(stored.interest, expected.interest, rtol=1e-5, atol=1e-6, err_msg=user)
        np.testing.assert_allclose(stored.state, expected.state, rtol=1e-5, atol=1e-6, err_msg=user)


def user_rows(store: Path) -> dict[str, tuple]:
    db = sqlite3.connect(store / DB_NAME)
    try:
        return {r[0]: r for r in db.execute("SELECT * FROM users")}
    finally:
        db.close()


# -- the test ---------------------------------------------------------------------------------------------------
def test_acknowledged_events_survive_a_kill_and_states_equal_a_recompute(trained, tmp_path):
    folder, store_dir, _, _ = trained
    store = copy_store(store_dir, tmp_path / "store")
    db = store / DB_NAME
    train_users = {str(u) for u in pd.read_csv(folder / "interactions.csv").user_id.unique()}
    with Recommender.load(store, device="cpu") as rec:
        max_len, item_ids, model_id = rec.max_len, list(rec.item_ids), rec.model_id
        logs = rec.store.user_events()
        existing = {u: log for u, log in logs.items() if u in train_users and len(log) <= max_len - SPARE - 15}
        plans, touched = plan_streams(existing, item_ids, max_len)
        old = touched & set(logs)
        assert_states_equal_a_recompute(rec, old)  # the precondition: these users start equal to a recompute
    before_logs = {u: set(logs.get(u, [])) for u in touched}
    before_rows = user_rows(store)
    sent = {key_of(e) for plan in plans for batch in plan for e in batch}

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "killed-server.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mmrec.cli", "serve", "--store", str(store), "--port",
                                   str(port)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    acked, failed, other, lock = [], [], [], threading.Lock()
    in_flight = [False] * STREAMS
    threads = [threading.Thread(target=stream, args=(url, plans[n], acked, failed, other, lock, in_flight, n),
                                daemon=True) for n in range(STREAMS)]
    try:
        wait_until_up(url, server)
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while True:  # kill once enough batches are acknowledged, while a commit holds the write lock
            elapsed, done = time.monotonic() - started, len(acked)
            locked = done >= KILL_AFTER_ACKED and store_write_locked(db)
            if locked or elapsed > KILL_DEADLINE_S and done >= MIN_ACKED or elapsed > GIVE_UP_S or other:
                break
            time.sleep(0.001)
        flying = sum(in_flight)
        os.killpg(server.pid, signal.SIGKILL)
        streamed = time.monotonic() - started
        assert server.wait(timeout=30) == -signal.SIGKILL
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    print(f"streamed {streamed:.2f} s: {len(acked)} batches acknowledged, {len(failed)} failed, {flying} in flight "
          f"at the kill, killed in a commit: {locked}")
    assert other == [], other  # every answer was 200 (a 4xx/5xx or an exhausted plan is a broken test or server)
    assert len(failed) == STREAMS  # each stream ended on the kill
    assert len(acked) >= MIN_ACKED, f"only {len(acked)} batches acknowledged before the kill"
    assert sum(reply["recomputed"] for _, reply in acked) > 0  # the late events took the recompute path
    assert sum(reply["duplicates"] for _, reply in acked) > 0

    # the store after the kill
    assert integrity(store) == "ok"
    acked_keys = {key_of(e) for batch, _ in acked for e in batch}
    with Recommender.load(store, device="cpu") as rec:
        logs = rec.store.user_events(sorted(touched))
        logged = {(u, *e) for u in touched for e in logs[u]}
        missing = acked_keys - logged
        assert not missing, f"{len(missing)} acknowledged events lost: {sorted(missing)[:10]}"
        new = {(u, *e) for u in touched for e in set(logs[u]) - before_logs[u]}
        assert new <= sent, f"events nobody sent: {sorted(new - sent)[:10]}"
        for batch, error in failed:  # an unacknowledged batch is whole or absent
            own = {key_of(e) for e in batch} - acked_keys - {(u, *e) for u in touched for e in before_logs[u]}
            assert len(own & logged) in (0, len(own)), (error, sorted(own & logged), sorted(own - logged))
        assert_states_equal_a_recompute(rec, touched)
        assert rec.store.current_model()[1] == model_id
    after_rows = user_rows(store)
    assert {u: r for u, r in after_rows.items() if u not in touched} == \
        {u: r for u, r in before_rows.items() if u not in touched}

    # a restarted server serves the store and takes new events
    user = max(touched, key=lambda u: (len(logs[u]) < max_len - 1, len(logs[u]), u))  # room for one more event
    with cli_server(store, tmp_path / "restarted-server.log") as url:
        health = httpx.get(f"{url}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["model_id"] == model_id
        top = post(url, "/recommend", {"user_id": user, "k": 10})
        assert top.status_code == 200, top.text
        with Recommender.load(store, device="cpu") as rec:
            assert [i["item_id"] for i in top.json()["items"]] == [i for i, _ in rec.recommend(user, k=10)]
            latest = max(e[0] for e in rec.store.user_events([user])[user])
        event = {"user_id": user, "item_id": item_ids[0], "timestamp": latest + 60}
        answer = post(url, "/events", {"events": [event]})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["applied"], answer.json()["recomputed"]) == (1, 0)
    assert integrity(store) == "ok"
    with Recommender.load(store, device="cpu") as rec:
        logs = rec.store.user_events(sorted(touched))
        assert acked_keys | {key_of(event)} <= {(u, *e) for u in touched for e in logs[u]}
        assert_states_equal_a_recompute(rec, touched)
