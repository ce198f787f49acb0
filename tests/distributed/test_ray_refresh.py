"""``mmrec refresh --engine ray`` on a real local Ray cluster equals the single-process refresh: the same rejected
rows and counts, the same event log, user states within 1e-5; a rerun finishes an interrupted refresh."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store, refresh_store
from mmrec.cli import EXIT_FAILED, EXIT_REJECTED, main
from mmrec.store import UserState
from mmrec.train.config import TrainConfig
from mmrec.train.jobs import train_store

from ..conftest import REPO, copy_store, embed_text_only, write_movielens_slice
from .conftest import run_without_ray

BATCH_USERS = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_encoder):
    """The 300 most-rated movies, users 1-50's ratings and tags of them; one epoch (states, not quality, matter)."""
    folder = write_movielens_slice(tmp_path_factory.mktemp("ray-refresh"), n_items=300, max_user=50)
    embed_text_only(folder, folder / "store", text_encoder)
    train_store(folder / "store", folder / "interactions.csv", folder / "tags.csv",
                TrainConfig(epochs=1, show_progress=False), log=None, text_encoder=text_encoder)
    return folder


@pytest.fixture(scope="module")
def events(trained):
    """New events of every kind a refresh meets: later ones (a GRU step), earlier ones (a recompute from the log),
    tags (text vectors), a brand-new user, rows already logged, a repeated row, and bad rows of each field."""
    interactions = pd.read_csv(trained / "interactions.csv")
    rng = np.random.default_rng(0)
    later = interactions.sample(150, random_state=0).assign(event="interaction", tag="")
    later["timestamp"] += rng.integers(10**6, 10**8, len(later))
    earlier = interactions.sample(20, random_state=1).assign(event="interaction", tag="")
    earlier["timestamp"] -= 10**5
    item = str(interactions.item_id.iloc[0])
    tags = pd.DataFrame({"user_id": [1, 2, 3], "item_id": [item] * 3, "timestamp": [2 * 10**9] * 3, "event": "tag",
                         "tag": ["funny", "dark comedy", "funny"]})
    odd = pd.DataFrame({
        "user_id": ["90001", "90001", "7", "", "7", "7", "7"],
        "item_id": [item, str(interactions.item_id.iloc[1]), "no-such-item", item, item, item, item],
        "timestamp": [2 * 10**9, 2 * 10**9 + 5, 2 * 10**9, 2 * 10**9, "not-a-time", 2 * 10**9, 2 * 10**9 + 9],
        "event": ["interaction", "interaction", "interaction", "interaction", "interaction", "purchase", "tag"],
        "tag": ["", "", "", "", "", "", ""]})
    logged = interactions.head(5).assign(event="interaction", tag="")
    frame = pd.concat([later, earlier, tags, odd, logged, later.head(2)], ignore_index=True)
    frame = frame[["user_id", "item_id", "timestamp", "event", "tag"]]
    frame.to_csv(trained / "events.csv", index=False)
    return trained / "events.csv"


@pytest.fixture(scope="module")
def local(trained, events, tmp_path_factory):
    """The single-process refresh of ``events``, on a copy of the trained store."""
    store = copy_store(trained / "store", tmp_path_factory.mktemp("local") / "store")
    return store, refresh_store(store, events, batch_users=BATCH_USERS)


def assert_same_users(expected, got) -> None:
    want, have = Store(expected).get_users(), Store(got).get_users()
    assert have.keys() == want.keys()
    for user, state in want.items():
        other = have[user]
        assert (other.model, other.last_timestamp, other.n_events) == (state.model, state.last_timestamp,
                                                                        state.n_events), user
        assert np.abs(other.interest - state.interest).max() <= 1e-5, user
        assert np.abs(other.state - state.state).max() <= 1e-5, user
    assert Store(got).user_events() == Store(expected).user_events()


def test_ray_refresh_on_two_workers_equals_the_single_process_refresh(ray_cluster, trained, events, local,
                                                                      tmp_path, capsys):
    store = copy_store(trained / "store", tmp_path / "store")
    code = main(["refresh", "--store", str(store), "--events", str(events), "--batch-users", str(BATCH_USERS),
                 "--engine", "ray", "--ray-workers", "2", "--json"])
    assert code == EXIT_REJECTED  # the bad rows, listed as the single-process refresh lists them
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected_store, expected = local
    assert summary == expected.to_dict()
    assert expected.users_recomputed > 0 and expected.events_duplicate >= 7
    assert {r["field"] for r in expected.rejected} == {"user_id", "item_id", "timestamp", "event", "text"}
    assert_same_users(expected_store, store)


def test_a_ray_rerun_finishes_an_interrupted_refresh(ray_cluster, trained, events, local, tmp_path):
    from mmrec.distributed import RayConfig, refresh_store_ray

    store = copy_store(trained / "store", tmp_path / "store")
    # what a refresh killed after its first batches leaves: those users' events and states committed
    frame = pd.read_csv(events, dtype=str, keep_default_na=False)
    first = list(dict.fromkeys(frame.user_id))[:BATCH_USERS]
    frame[frame.user_id.isin(first)].to_csv(tmp_path / "first.csv", index=False)
    refresh_store(store, tmp_path / "first.csv", batch_users=BATCH_USERS)
    report = refresh_store_ray(store, events, batch_users=BATCH_USERS, ray_config=RayConfig(workers=1))
    assert report.events_applied < local[1].events_applied
    assert report.events_applied + report.events_duplicate == local[1].events_applied + local[1].events_duplicate
    assert_same_users(local[0], store)
    again = refresh_store_ray(store, events, batch_users=BATCH_USERS, ray_config=RayConfig(workers=1))
    assert (again.users_refreshed, again.events_applied) == (0, 0)


def test_a_user_written_between_plan_and_commit_is_recomputed_from_the_log(trained, tmp_path):
    """Another process applying events to a planned user: the commit sees the state changed and recomputes that
    user from the log in its transaction (the actor's fold is done in-process here: no cluster needed)."""
    from mmrec.distributed.ray_refresh import RefreshWorker, _commit, _plan, _text_table
    from mmrec.serve import RefreshReport

    store = copy_store(trained / "store", tmp_path / "store")
    rec = Recommender.load(store, device="cpu")
    item = rec.item_ids[0]
    batch = _plan(rec, [("1", 2 * 10**9, item, rec.default_event, ""), ("2", 2 * 10**9, item, rec.default_event, "")],
                  0)
    worker = RefreshWorker(rec.model, rec.model_id, rec.item_ids, rec.item_vectors.numpy(), list(rec.event_names),
                           _text_table(rec, [batch]), threads=1)
    columns = {key: np.asarray([w[key] for w in batch.work], dtype=object) for key in batch.work[0]}
    answer = worker(columns)
    for k, user in enumerate(answer["user_id"]):
        batch.states[user] = UserState(user, rec.model_id, answer["state"][k], answer["interest"][k],
                                       int(answer["last_timestamp"][k]), int(answer["n_events"][k]))
    with Recommender.load(store, device="cpu") as other:  # meanwhile, a server observes an event of user 1
        other.observe("1", rec.item_ids[1], timestamp=2 * 10**9 + 60)
    report = RefreshReport()
    _commit(rec, batch, report)
    rec.close()
    states = Store(store).get_users(["1", "2"])
    with Recommender.load(store, device="cpu") as fresh:
        recomputed = fresh.folder.recompute(fresh.model_id, ["1"])[0]
    np.testing.assert_allclose(states["1"].interest, recomputed.interest, atol=1e-5)
    assert states["1"].last_timestamp == 2 * 10**9 + 60
    np.testing.assert_allclose(states["2"].interest, batch.states["2"].interest)
    assert (report.users_refreshed, report.events_applied, report.users_recomputed) == (2, 2, 1)


def test_without_ray_refresh_engine_ray_exits_1_saying_how_to_install_it(trained, events, tmp_path):
    store = copy_store(trained / "store", tmp_path / "store")
    before = Store(store).user_events()
    done = run_without_ray(textwrap.dedent(f"""
        from mmrec.cli import main
        sys.exit(main(["refresh", "--store", {str(store)!r}, "--events", {str(events)!r}, "--engine", "ray"]))
    """), cwd=REPO)
    assert done.returncode == EXIT_FAILED, done.stderr
    assert "pip install 'mmrec[distributed]'" in done.stderr
    assert Store(store).user_events() == before
