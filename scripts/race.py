"""Race serving, refreshing and retraining on one trained store, then check that the store is consistent.

    python scripts/race.py --store STORE --interactions FILE [--context-events FILE] [--retrains 2] [--epochs 1]
                           [--train-users N]

The store is written to: race a copy. Four processes run on it at once:

- reader: loads a ``Recommender`` once, before any retrain, and never again: ``recommend`` and ``score`` for every
  logged user in a loop, and after the stop signal one more pass over every user. A superseded model reading users
  the retrain stamped with the new model must not write anything (reads never write);
- observer: a long-lived ``Recommender`` applying one event per round to users of its own (``race-o*``); on
  ``StaleModelError`` (the documented refusal of a superseded model) it loads the store again and retries;
- refresher: ``python -m mmrec.cli refresh`` with a small file of new events for users of its own (``race-r*``),
  repeated; exit 1 is accepted only with the stale-model error;
- trainer: ``train_store`` ``--retrains`` times, alternately on the interactions without each user's last row (a
  corrected file: another model) and on all of them (of the first ``--train-users`` users only, when given: the
  training input is the truth, so the other users' logs and states go). It starts once the other three have
  loaded their model.

When the trainer is done the others are stopped (each does one last round first). Then every logged user must have
a state and every state must be stamped with the store's current model (that of the model files too) and equal a
recompute from the log (``Recommender.rebuild`` on a copy of the store). Users of the observer and the refresher
get at most ``MAX_ROUNDS`` events, fewer than a model's ``max_len``: stepping a state equals a recompute only then.

Prints one JSON report; exit 0 when no process failed and the store is consistent, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

MAX_ROUNDS = 30
BASE_TS = 2_000_000_000
N_USERS = 5


def _stopped(args) -> bool:
    return Path(args.stop).exists()


def _ready(args) -> None:
    Path(args.out + ".ready").write_text("ready")


def reader(args) -> dict:
    from mmrec import Recommender

    rec = Recommender.load(args.store, device="cpu")
    probe = rec.item_ids[:6]
    _ready(args)
    passes = reads = 0
    while True:
        last = _stopped(args)
        users = rec.store.logged_users() + [f"race-{kind}{i}" for kind in "or" for i in range(N_USERS)]
        for user in users:
            rec.recommend(user, k=10)
            rec.score(user, probe)
            reads += 2
        passes += 1
        if last:
            return {"passes": passes, "reads": reads, "model": rec.model_id, "current_at_end": rec.is_current()}
        time.sleep(1.0)


def observer(args) -> dict:
    from mmrec import Recommender
    from mmrec.store import StaleModelError

    rec = Recommender.load(args.store, device="cpu")
    _ready(args)
    rounds = stale = 0
    while True:
        last = _stopped(args)
        if rounds < MAX_ROUNDS or last:
            rows = [(f"race-o{i}", BASE_TS + 60 * rounds, rec.item_ids[(7 * i + rounds) % len(rec.item_ids)],
                     rec.default_event, "") for i in range(N_USERS)]
            for _ in range(5):
                try:
                    rec.apply_events(rows)
                    break
                except StaleModelError:
                    stale += 1
                    rec = Recommender.load(args.store, device="cpu")
            else:
                raise RuntimeError("still stale after 5 loads")
            rounds += 1
        if last:
            return {"rounds": rounds, "stale_errors": stale}
        time.sleep(0.5)


def refresher(args) -> dict:
    import pandas as pd

    from mmrec import Store

    items = Store(args.store, create=False).item_ids()
    _ready(args)
    runs = refused = 0
    while True:
        last = _stopped(args)
        if runs < MAX_ROUNDS or last:
            events = Path(args.out + ".events.csv")
            pd.DataFrame({"user_id": [f"race-r{i}" for i in range(N_USERS)],
                          "item_id": [items[(11 * i + runs) % len(items)] for i in range(N_USERS)],
                          "timestamp": [BASE_TS + 60 * runs] * N_USERS}).to_csv(events, index=False)
            done = subprocess.run([sys.executable, "-m", "mmrec.cli", "refresh", "--store", args.store, "--events",
                                   str(events)], capture_output=True, text=True)
            if done.returncode == 1 and "Recommender.load the store again" in done.stderr:
                refused += 1  # the documented stale-model error (after refresh_store's own reloads)
            elif done.returncode != 0:
                raise RuntimeError(f"mmrec refresh exited {done.returncode}: {done.stderr[-2000:]}")
            runs += 1
        if last:
            return {"runs": runs, "refused_stale": refused}
        time.sleep(2.0)


def trainer(args) -> dict:
    import pandas as pd

    from mmrec import TrainConfig, train_store

    while not Path(args.stop + ".go").exists():  # imported meanwhile; trains once the others hold their model
        time.sleep(0.1)
    frame = pd.read_csv(args.interactions, dtype=str, keep_default_na=False)
    if args.train_users:  # a smaller training input, for a quick race: the log becomes theirs alone
        frame = frame[frame.user_id.isin(frame.user_id.unique()[: args.train_users])]
    full, corrected = Path(args.out + ".full.csv"), Path(args.out + ".corrected.csv")
    frame.to_csv(full, index=False)
    frame.drop(frame.groupby("user_id").tail(1).index).to_csv(corrected, index=False)
    models, seconds = [], []
    for n in range(args.retrains):
        source = corrected if n % 2 == 0 else full
        started = time.monotonic()
        summary = train_store(args.store, source, args.context_events,
                              TrainConfig(epochs=args.epochs, show_progress=False), log=None)
        models.append(summary["model_id"])
        seconds.append(round(time.monotonic() - started, 1))
    return {"models": models, "seconds": seconds}


ROLES = {"reader": reader, "observer": observer, "refresher": refresher, "trainer": trainer}


def _copy_database(source: Path, target: Path) -> None:
    """The store folder ``source`` copied to ``target``, its database through SQLite's backup API (copying a live
    database as a file drops this process's locks on it)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("mmrec.sqlite*"))
    src, dst = sqlite3.connect(source / "mmrec.sqlite"), sqlite3.connect(target / "mmrec.sqlite")
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def check_store(store_dir: Path) -> dict:
    """Problems of the store after the race: states missing, stamped with another model, or unequal to a recompute."""
    import numpy as np

    from mmrec import Recommender, Store
    from mmrec.trained import MODEL_DIR, TrainedModel

    store = Store(store_dir, create=False)
    generation, current = store.current_model()
    problems = []
    files = TrainedModel.load(store_dir / MODEL_DIR).model_id
    if files != current:
        problems.append(f"the model files hold {files}, the store's current model is {current}")
    states, logged = store.get_users(), set(store.logged_users())
    stamped = sorted(u for u, s in states.items() if s.model != current)
    if stamped:
        problems.append(f"{len(stamped)} users stamped with another model than {current}: {stamped[:10]}")
    if logged - set(states):
        problems.append(f"logged users without a state: {sorted(logged - set(states))[:10]}")
    if set(states) - logged:
        problems.append(f"states of users without a log: {sorted(set(states) - logged)[:10]}")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "store"
        _copy_database(store_dir, copy)
        rec = Recommender.load(copy, device="cpu")
        rec.rebuild()
        rebuilt = rec.store.get_users()
        rec.store.close()
    unequal = sorted(u for u, s in states.items() if u in rebuilt and not (
        (s.last_timestamp, s.n_events) == (rebuilt[u].last_timestamp, rebuilt[u].n_events)
        and np.allclose(s.interest, rebuilt[u].interest, rtol=1e-4, atol=1e-5)))
    if unequal:
        problems.append(f"{len(unequal)} users' states differ from a recompute from the log: {unequal[:10]}")
    store.close()
    return {"generation": generation, "model": current, "users": len(states), "problems": problems}


def race(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mmrec-race-"))
    stop = work / "stop"
    started = time.monotonic()

    def spawn(role: str) -> subprocess.Popen:
        command = [sys.executable, __file__, "--role", role, "--store", str(args.store), "--interactions",
                   str(args.interactions), "--stop", str(stop), "--out", str(work / role), "--retrains",
                   str(args.retrains), "--epochs", str(args.epochs), "--train-users", str(args.train_users)]
        if args.context_events:
            command += ["--context-events", str(args.context_events)]
        # one thread each beside the trainer: the race is about interleaving, not throughput
        env = os.environ if role == "trainer" else {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    procs = {role: spawn(role) for role in ("reader", "observer", "refresher", "trainer")}
    deadline = time.monotonic() + args.timeout
    while not all((work / f"{role}.ready").exists() for role in ("reader", "observer", "refresher")):
        if any(p.poll() is not None for p in procs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    report: dict = {"roles": {}, "ready_seconds": round(time.monotonic() - started, 1)}
    Path(str(stop) + ".go").write_text("go")
    try:
        procs["trainer"].wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        pass
    stop.write_text("stop")
    report["trained_seconds"] = round(time.monotonic() - started, 1)
    for role, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 30))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        result = {"exit": proc.returncode}
        if proc.returncode == 0 and out.strip():
            result.update(json.loads(out.strip().splitlines()[-1]))
        else:
            result["stderr"] = err[-3000:]
        report["roles"][role] = result
    report["race_seconds"] = round(time.monotonic() - started, 1)
    report["store"] = check_store(Path(args.store))
    report["seconds"] = round(time.monotonic() - started, 1)
    failed = [role for role, r in report["roles"].items() if r["exit"] != 0]
    report["ok"] = not failed and not report["store"]["problems"]
    shutil.rmtree(work, ignore_errors=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", required=True, help="a trained store (it is written to: race a copy)")
    parser.add_argument("--interactions", required=True, help="the interactions file the store was trained on")
    parser.add_argument("--context-events", default=None, help="its context events (tags), if any")
    parser.add_argument("--retrains", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each retrain")
    parser.add_argument("--train-users", type=int, default=0,
                        help="retrain on the interactions of the first N users only (0: all), for a quicker race")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before the processes are stopped")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        try:
            print(json.dumps(ROLES[args.role](args)))
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    report = race(args)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
