"""The batch refresh (``mmrec refresh``, :func:`mmrec.serve.refresh.refresh_store`) and rebuilds from the event log,
on the serving tests' trained store."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mmrec import Recommender, Store
from mmrec.cli import EXIT_OK, main
from mmrec.serve.refresh import refresh_store
from mmrec.store import UserState

from ..conftest import REPO, copy_store
from .conftest import PROBE, history_of


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


def test_refresh_rebuild_recomputes_every_user_from_the_log(trained, tmp_path, capsys):
    _, store_dir, _, _ = trained
    copy = tmp_path / "store-copy"
    copy_store(store_dir, copy)
    rec = Recommender.load(copy, device="cpu")
    logs = rec.store.user_events()
    users = sorted(u for u, rows in logs.items() if rows)
    original = rec.store.get_users(users)
    assert len(users) >= 149

    def wipe():  # stored states that no longer match the log: only a recompute restores them
        store = Store(copy, create=False)
        store.put_users([UserState(u, s.model, np.zeros_like(s.state), np.zeros_like(s.interest), s.last_timestamp,
                                   s.n_events) for u, s in original.items()])
        store.close()

    def assert_recomputed():
        rebuilt = Store(copy, create=False).get_users(users)
        for u in users:
            np.testing.assert_allclose(rebuilt[u].interest, original[u].interest, rtol=1e-4, atol=1e-5, err_msg=u)
        for u in ("1", "7"):  # equal to a fresh computation from the log
            np.testing.assert_allclose(rec.score(u, PROBE), rec.score(history=history_of(logs[u]), item_ids=PROBE),
                                       rtol=1e-5, atol=1e-6)

    wipe()
    report = refresh_store(copy, rebuild=True)
    assert (report.users_recomputed, report.users_refreshed, report.events_applied) == (len(users), len(users), 0)
    assert_recomputed()

    wipe()
    assert main(["refresh", "--store", str(copy), "--rebuild", "--json"]) == EXIT_OK
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["users_recomputed"] == len(users) and summary["rejected"] == []
    assert_recomputed()


def test_refresh_recomputes_users_with_an_older_event_from_their_log(trained, tmp_path):
    _, store_dir, rec, _ = trained
    logs = rec.store.user_events([str(u) for u in range(12, 151)])
    # a trained user with a short history (so the late event stays within max_len) that no other test touches
    old_user = next(u for u, rows in logs.items() if 5 <= len(rows) <= 30 and not any(r[1] == "1210" for r in rows))
    new_user = "late-refresh-user"
    pd.DataFrame({"user_id": [new_user, new_user], "item_id": ["260", "1210"], "timestamp": [5_000, 6_000]}).to_csv(
        tmp_path / "first.csv", index=False)
    first = refresh_store(store_dir, tmp_path / "first.csv")
    assert (first.events_applied, first.users_recomputed) == (2, 0)

    before = {old_user: rec.score(old_user, PROBE), new_user: rec.score(new_user, PROBE)}
    earliest = logs[old_user][0][0]
    pd.DataFrame({"user_id": [new_user, old_user, "in-order-refresh-user"], "item_id": ["1196", "1210", "296"],
                  "timestamp": [5_500, earliest - 86_400, 7_000]}).to_csv(tmp_path / "late.csv", index=False)
    report = refresh_store(store_dir, tmp_path / "late.csv")
    assert (report.users_refreshed, report.events_applied, report.users_recomputed) == (3, 3, 2)
    after = rec.store.user_events([new_user, old_user])
    assert [r[:2] for r in after[new_user]] == [(5_000, "260"), (5_500, "1196"), (6_000, "1210")]
    assert after[old_user][0][:2] == (earliest - 86_400, "1210") and len(after[old_user]) == len(logs[old_user]) + 1
    for user in (new_user, old_user):  # the late event sits in time order, as a recompute from the log puts it
        scores = rec.score(user, PROBE)
        assert not np.allclose(scores, before[user])
        np.testing.assert_allclose(scores, rec.score(history=history_of(after[user]), item_ids=PROBE),
                                   rtol=1e-5, atol=1e-6)
    state = rec.store.get_users([new_user])[new_user]
    assert (state.last_timestamp, state.n_events) == (6_000, 3)


def test_refresh_rejects_a_text_event_without_text(trained, tmp_path):
    _, store_dir, rec, _ = trained
    pd.DataFrame({"user_id": ["textless-user"] * 2, "item_id": ["260", "1210"], "timestamp": [10, 20],
                  "event": ["tag", "interaction"], "text": ["!!!", ""]}).to_csv(tmp_path / "e.csv", index=False)
    report = refresh_store(store_dir, tmp_path / "e.csv")
    assert report.events_applied == 1
    (rejected,) = report.rejected
    assert rejected["row"] == 1 and rejected["reason"].startswith("no text: ['tag'] events are read by their text")
    assert [r[1:3] for r in rec.store.user_events(["textless-user"])["textless-user"]] == [("1210", "interaction")]


def test_rebuild_skips_logged_events_of_kinds_the_model_was_not_trained_on(trained, tmp_path):
    # e.g. a store first trained with tags, then retrained without --context-events: its log still holds the tags
    _, store_dir, _, _ = trained
    copy = tmp_path / "store-copy"
    copy_store(store_dir, copy)
    rec = Recommender.load(copy, device="cpu")
    before = rec.score("7", PROBE)
    rec.store.add_events([("7", 2_000_000_000, "260", "review", "a review from a model trained on reviews")])
    assert rec.rebuild(["7"]) == 1  # was: IndexError from the event embedding
    np.testing.assert_allclose(rec.score("7", PROBE), before, rtol=1e-5, atol=1e-6)


def test_refresh_reads_a_tags_file_as_tag_events_and_refuses_text_on_interactions(trained, tmp_path):
    _, store_dir, rec, _ = trained
    user = "tags-file-user"
    pd.DataFrame({"user_id": [user] * 3, "item_id": ["260", "1210", "1196"], "timestamp": [10, 20, 30],
                  "tag": ["space opera", "...", "classic"]}).to_csv(tmp_path / "tags.csv", index=False)
    report = refresh_store(store_dir, tmp_path / "tags.csv")
    # every row of a tags file is a tag, as training reads it; one whose text cleans away is refused, not
    # turned into an interaction the user never had
    assert report.events_applied == 2
    (empty,) = report.rejected
    assert empty["row"] == 2 and empty["reason"].startswith("no text")
    assert [(r[1], r[2]) for r in rec.store.user_events([user])[user]] == [("260", "tag"), ("1196", "tag")]
    pd.DataFrame({"user_id": [user], "item_id": ["318"], "timestamp": [40], "event": ["interaction"],
                  "text": ["loved it"]}).to_csv(tmp_path / "texted.csv", index=False)
    (rejected,) = refresh_store(store_dir, tmp_path / "texted.csv").rejected
    assert rejected["reason"].startswith("text on an event that carries none in training")
    with pytest.raises(ValueError, match=r"rows\[0\]: 'interaction' events carry no text in training \(only \['tag'\]"):
        rec.observe(user, "318", timestamp=50, text="loved it")
