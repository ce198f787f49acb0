"""A reader, an observer, a refresh and a retrain on one store at once (``scripts/race.py``, each a subprocess): no
process fails except with the documented stale-model error, and afterwards every user's stored state is stamped
with the store's current model and equals a recompute from the event log."""

import json
import subprocess
import sys

from mmrec import Store

from ..conftest import REPO, copy_store


def test_serving_refreshing_and_retraining_at_once_leave_a_consistent_store(trained, tmp_path):
    folder, store_dir, _, _ = trained
    copy = copy_store(store_dir, tmp_path / "store")
    with Store(copy) as store:
        generation = store.current_model()[0]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "race.py"), "--store", str(copy), "--interactions",
         str(folder / "interactions.csv"), "--context-events", str(folder / "tags.csv"), "--retrains", "2",
         "--train-users", "30", "--timeout", "400"],
        capture_output=True, text=True, timeout=500)
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    roles, store = report["roles"], report["store"]
    assert store["problems"] == []
    assert store["generation"] == generation + 2 and store["model"] == roles["trainer"]["models"][-1]
    # each process ran across the retrains: the reader still holds the first model, the observer was refused and
    # loaded the store again
    assert roles["reader"]["passes"] >= 2 and roles["reader"]["current_at_end"] is False
    assert roles["observer"]["stale_errors"] >= 1
    assert roles["refresher"]["runs"] >= 2
    # the retrains' input is the truth: the first 30 users' (all with events), plus the observer's and the
    # refresher's users, whose events came after the last retrain
    assert store["users"] == 30 + 2 * 5
