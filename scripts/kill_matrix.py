"""SIGKILL `mmrec embed` or `mmrec refresh` at many points and check that every interrupted store is sound and
resumes exactly.

    python scripts/kill_matrix.py [--command embed|refresh|both] [--points 24] [--seed 0] [--workdir DIR] [--json]
        [--items 96] [--chunk-size 8]                              (embed)
        [--refresh-items 150] [--users 60] [--batch-users 4]       (refresh)

Every run is the real command line in its own process, on the CPU; the store is watched from outside through SQLite.
Prints one line per point and a summary per command (``--json``: one JSON object); exit 0 when every point passed,
1 otherwise. A point takes about 10-15 s for embed, 4-6 s for refresh (two process start-ups each), plus the
set-up (about a minute for refresh: embedding, training, two reference runs). The CI tests
``tests/test_embed_kill.py`` and ``tests/test_refresh_kill.py`` run four points each.

embed: one uninterrupted ``mmrec embed`` (text only, MovieLens titles and genres from ``assets/``) gives the
reference store. Then, for each kill point, a fresh ``mmrec embed`` is SIGKILLed and ``mmrec embed`` is run again to
completion on the same store. Kill points cycle through: as soon as the store file exists, and after each number of
committed chunks, each plus a random extra delay so the kill lands anywhere in the next chunk's encoding or
transaction. After each kill the store must pass ``PRAGMA integrity_check``, open, hold whole chunks only (a prefix
of the catalogue) with the reference's hashes; after the rerun its text features (``Store.feature_matrix("text")``
bytes) and ``item_hashes()`` must equal the reference's.

refresh: a store is embedded and trained (``mmrec embed``, ``mmrec train --epochs 1``) on the early 60 % of each
user's ratings of the ``--refresh-items`` most-rated movies (users ``1..--users``; the last sixth of them held out
whole, so the refresh brings in new users); the rest is the file of new events. ``mmrec refresh`` applies it in
batches of ``--batch-users`` users, one transaction each (``mmrec refresh --batch-users N``). Uninterrupted
``refresh`` and ``refresh --rebuild`` runs on copies of the trained store give the references. Kill points cycle
through: as soon as the child takes the store's write lock, after each number of committed batches (plus a random
extra delay), and during the ``--rebuild`` that follows the batches (at once, and after a random delay). After each
kill the store must pass ``PRAGMA integrity_check``, open, log the training events plus whole batches only, and hold
for every user either the row from before the refresh or the uninterrupted refresh's row (the latter exactly for the
users of the committed batches; a rebuild all or nothing), with interests close to a recompute from the log for
users whose log fits the model's window; after the rerun (the same command) the ``users`` and ``events`` tables must
be byte-identical to the reference's.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["title", "genres"]


def embed_args(catalog: Path, store_dir: Path, chunk_size: int) -> list[str]:
    return [sys.executable, "-m", "mmrec.cli", "embed", str(catalog), "--store", str(store_dir), "--no-images",
            "--text-columns", ",".join(COLUMNS), "--chunk-size", str(chunk_size), "--device", "cpu"]


def committed(db: Path) -> int:
    """Items committed in the store (-1: no store file yet; 0 while its schema is being written)."""
    if not db.is_file():
        return -1
    connection = sqlite3.connect(db, timeout=1.0)
    try:
        return connection.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def run_and_kill(args: list[str], ready, env: dict, extra_delay: float, timeout: float = 300) -> tuple[int, float]:
    """Start ``args``; once ``ready()`` is true wait ``extra_delay`` seconds and SIGKILL it.
    Returns (exit status, seconds from start to the kill)."""
    start = time.monotonic()
    child = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while child.poll() is None and time.monotonic() - start < timeout:
            if ready():
                time.sleep(extra_delay)
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        killed_at = time.monotonic() - start
        child.wait(timeout=60)
        return child.returncode, killed_at
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def snapshot(store_dir: Path) -> tuple:
    from mmrec import Store

    with Store(store_dir, create=False) as store:
        ids, matrix, present = store.feature_matrix("text")
        return ids, matrix.tobytes(), present.tobytes(), store.item_hashes()


def integrity(db: Path) -> str:
    connection = sqlite3.connect(db)
    try:
        return ";".join(row[0] for row in connection.execute("PRAGMA integrity_check"))
    finally:
        connection.close()


def check_point(point: int, catalog: Path, work: Path, args_for, env: dict, reference: tuple, chunk: int,
                n_chunks: int, rng: random.Random) -> dict:
    store_dir = work / f"point-{point:03d}"
    db = store_dir / "mmrec.sqlite"
    target = point % (n_chunks + 1) - 1  # -1: store created; then 0 .. n_chunks - 1 chunks committed
    # 0 chunks: a longer delay, to land anywhere in the model's loading or the first chunk
    extra = 0.0 if target < 0 else rng.uniform(0.0, 3.0 if target == 0 else 0.15)
    # killed once that many items are committed (0: once the store file exists)
    status, killed_at = run_and_kill(args_for(store_dir), lambda: committed(db) >= max(target, 0) * chunk, env, extra)
    result = {"point": point, "after_chunks": target, "extra_delay_s": round(extra, 3), "killed_at_s":
              round(killed_at, 2), "killed": status == -signal.SIGKILL, "exit_status": status, "problems": []}
    problems = result["problems"]
    result["committed_at_kill"] = committed(db)
    if db.is_file():
        verdict = integrity(db)
        if verdict != "ok":
            problems.append(f"integrity_check: {verdict}")
        try:
            ids, _, _, hashes = snapshot(store_dir)
        except Exception as error:  # noqa: BLE001 -- reported, not raised: the matrix goes on
            problems.append(f"store does not open: {type(error).__name__}: {error}")
        else:
            if len(ids) % chunk or ids != reference[0][: len(ids)]:
                problems.append(f"not whole chunks of the catalogue: {len(ids)} items")
            if hashes != {i: reference[3][i] for i in ids}:
                problems.append("stored hashes differ from the reference's")
    rerun = subprocess.run(args_for(store_dir), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if rerun.returncode != 0:
        problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip()[-500:]}")
    elif integrity(db) != "ok":
        problems.append("integrity_check failed after the rerun")
    elif snapshot(store_dir) != reference:
        problems.append("after the rerun the text features or hashes differ from an uninterrupted run's")
    result["ok"] = not problems
    return result


# -- refresh ----------------------------------------------------------------------------------------------------
USER_COLUMNS = "user_id, model, state, interest, last_timestamp, n_events"
EVENT_COLUMNS = "user_id, timestamp, item_id, event, text"
_FLOCK = "hhxxxxqqixxxx"  # Linux struct flock: l_type, l_whence, l_start, l_len, l_pid


def refresh_args(store_dir: Path, events: Path, batch_users: int, rebuild: bool) -> list[str]:
    return [sys.executable, "-m", "mmrec.cli", "refresh", "--store", str(store_dir), "--events", str(events),
            "--batch-users", str(batch_users), *(["--rebuild"] if rebuild else [])]


def tables(store_dir: Path) -> tuple[dict, list]:
    """``({user_id: users row}, sorted events rows)``: the two tables a refresh writes, as stored bytes."""
    connection = sqlite3.connect(store_dir / "mmrec.sqlite")
    try:
        users = {row[0]: row for row in connection.execute(f"SELECT {USER_COLUMNS} FROM users")}
        events = connection.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY {EVENT_COLUMNS}").fetchall()
        return users, events
    finally:
        connection.close()


def events_logged(db: Path) -> int:
    """Rows of the event log, through a read-only connection (-1: busy)."""
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    try:
        return connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    except sqlite3.OperationalError:
        return -1
    finally:
        connection.close()


def writing(db: Path) -> bool:
    """Whether another process holds the store's write lock: in WAL mode SQLite takes it (``BEGIN IMMEDIATE``) as a
    POSIX lock on byte 120 of the ``-shm`` file (https://sqlite.org/walformat.html, "Locking"); ``F_GETLK`` asks
    without locking."""
    try:
        fd = os.open(f"{db}-shm", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 120, 1, 0)
        return struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


class RefreshSetup:
    """The trained store, the new events file, the refresh's batches and the tables before and after uninterrupted
    ``refresh`` (``references[False]``) and ``refresh --rebuild`` (``references[True]``) runs."""

    def __init__(self, work: Path, n_items: int, max_user: int, batch_users: int, env: dict) -> None:
        self.work, self.batch_users, self.env = work, batch_users, env
        assets = REPO / "assets" / "ml-latest-small"
        ratings = pd.read_csv(assets / "interactions.csv")
        top = ratings.item_id.value_counts().index[:n_items]
        ratings = ratings[ratings.item_id.isin(top) & (ratings.user_id <= max_user)]
        items = pd.read_csv(assets / "items.csv", dtype=str, keep_default_na=False)
        catalog = work / "items.csv"
        items[items.item_id.astype(int).isin(top)][["item_id", *COLUMNS]].to_csv(catalog, index=False)
        ratings = ratings.sort_values(["user_id", "timestamp", "item_id"], kind="stable")
        position = ratings.groupby("user_id").cumcount() / ratings.groupby("user_id").user_id.transform("size")
        later = (position >= 0.6) | (ratings.user_id > max_user - max_user // 6)
        ratings[~later].to_csv(work / "early.csv", index=False)
        new = ratings[later].sort_values(["timestamp", "user_id", "item_id"])[["user_id", "item_id", "timestamp"]]
        self.events = work / "events.csv"
        new.to_csv(self.events, index=False)
        self.trained = work / "trained"
        for step in (embed_args(catalog, self.trained, 64),
                     [sys.executable, "-m", "mmrec.cli", "train", "--store", str(self.trained), "--interactions",
                      str(work / "early.csv"), "--epochs", "1", "--device", "cpu"]):
            done = subprocess.run(step, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step[2:4])} failed (exit {done.returncode}):\n{done.stderr}")
        users = [str(u) for u in dict.fromkeys(new.user_id)]  # the refresh's order: first appearance in the file
        self.batches = [users[i : i + batch_users] for i in range(0, len(users), batch_users)]
        self.before = tables(self.trained)
        self.references = {}
        for rebuild in (False, True):
            store_dir = self.copy(f"reference-{'rebuild' if rebuild else 'plain'}")
            done = subprocess.run(self.args(store_dir, rebuild), env=env, cwd=REPO, capture_output=True, text=True,
                                  timeout=1200)
            if done.returncode != 0:
                raise RuntimeError(f"reference refresh failed (exit {done.returncode}):\n{done.stderr}")
            self.references[rebuild] = tables(store_dir)
        logged = set(self.before[1])
        self.new_by_user: dict[str, list] = {}
        for row in self.references[False][1]:
            if row not in logged:
                self.new_by_user.setdefault(row[0], []).append(row)
        if sum(map(len, self.new_by_user.values())) != len(new):
            raise RuntimeError("the reference refresh did not apply every new event")
        # events logged after each number of committed batches
        self.sizes = np.cumsum([len(self.before[1])] + [sum(len(self.new_by_user[u]) for u in batch)
                                                        for batch in self.batches])

    def copy(self, name: str) -> Path:
        target = self.work / name
        shutil.copytree(self.trained, target)  # no connection of this process is open on it
        return target

    def args(self, store_dir: Path, rebuild: bool) -> list[str]:
        return refresh_args(store_dir, self.events, self.batch_users, rebuild)


def check_refresh_state(setup: RefreshSetup, store_dir: Path, rebuild: bool) -> tuple[int, bool, list[str]]:
    """Checks of a killed refresh's store: (batches committed, whether a rebuild committed, problems)."""
    from mmrec import Recommender, Store

    problems = []
    db = store_dir / "mmrec.sqlite"
    verdict = integrity(db)
    if verdict != "ok":
        return -1, False, [f"integrity_check: {verdict}"]
    try:
        Store(store_dir, create=False).close()
    except Exception as error:  # noqa: BLE001 -- reported, not raised: the matrix goes on
        return -1, False, [f"store does not open: {type(error).__name__}: {error}"]
    users, events = tables(store_dir)
    before_users, before_events = setup.before
    k = int(np.searchsorted(setup.sizes, len(events)))
    if k >= len(setup.sizes) or setup.sizes[k] != len(events):
        return -1, False, [f"not whole batches: {len(events) - len(before_events)} new events logged"]
    committed = [r for batch in setup.batches[:k] for u in batch for r in setup.new_by_user[u]]
    if events != sorted(before_events + committed):
        problems.append(f"the event log is not the training log plus the first {k} batches")
    done = {u for batch in setup.batches[:k] for u in batch}
    rebuilt = rebuild and k == len(setup.batches) and users == setup.references[True][0]
    if not rebuilt:
        if users.keys() != before_users.keys() | done:
            problems.append(f"users table holds {len(users)} users, expected {len(before_users.keys() | done)}")
        mixed = [u for u, row in users.items()
                 if row != (setup.references[False][0][u] if u in done else before_users.get(u))]
        if mixed:
            problems.append(f"{len(mixed)} user rows are neither the pre-refresh nor the refreshed one "
                            f"(e.g. {mixed[:5]})")
    rec = Recommender.load(store_dir, device="cpu")
    try:
        stored = rec.store.get_users(sorted(done))
        logs = rec.store.user_events(sorted(done))
        short = [u for u in sorted(done) if len(logs[u]) <= rec.max_len]  # longer ones carry more than the window
        far = [s.user_id for s in rec.folder.recompute(rec.model_id, short)
               if not np.allclose(stored[s.user_id].interest, s.interest, rtol=1e-4, atol=1e-5)
               or (stored[s.user_id].last_timestamp, stored[s.user_id].n_events) != (s.last_timestamp, s.n_events)]
        if far:
            problems.append(f"{len(far)} users differ from a recompute from their log (e.g. {far[:5]})")
    finally:
        rec.store.close()
    return k, rebuilt, problems


def refresh_point(point: int, setup: RefreshSetup, rng: random.Random) -> dict:
    n = len(setup.batches)
    cycle = point % (n + 2)  # 0: write lock taken; 1 .. n-1: batches; n: rebuild at once; n + 1: rebuild + delay
    rebuild = cycle >= n
    after = n if rebuild else cycle
    locked = cycle in (0, n, n + 1)
    # a batch of a few users commits within milliseconds and the rebuild takes some tens of them: delays to match
    extra = 0.0 if cycle in (0, n) else rng.uniform(0.0, 0.03 if rebuild else 0.01)
    where = ("write lock" if cycle == 0 else f"{after} batch(es)" if not rebuild
             else "rebuild" + ("" if cycle == n else " + delay"))
    store_dir = setup.copy(f"point-{point:03d}")
    db = store_dir / "mmrec.sqlite"
    args = setup.args(store_dir, rebuild)
    # killed once that many events are logged (and, with ``locked``, while the child holds the write lock)
    events = int(setup.sizes[after])
    status, killed_at = run_and_kill(args, lambda: events_logged(db) >= events and (not locked or writing(db)),
                                     setup.env, extra)
    result = {"point": point, "kill_at": where, "rebuild": rebuild, "extra_delay_s": round(extra, 3),
              "killed_at_s": round(killed_at, 2), "killed": status == -signal.SIGKILL, "exit_status": status}
    k, rebuilt, problems = check_refresh_state(setup, store_dir, rebuild)
    result.update(batches_at_kill=k, rebuild_committed=rebuilt, problems=problems)
    rerun = subprocess.run(args, env=setup.env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if rerun.returncode != 0:
        problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr.strip()[-500:]}")
    elif integrity(db) != "ok":
        problems.append("integrity_check failed after the rerun")
    else:
        users, events = tables(store_dir)
        reference_users, reference_events = setup.references[rebuild]
        if events != reference_events:
            problems.append("after the rerun the events table differs from an uninterrupted run's")
        if users != reference_users:
            differ = sorted(u for u in users.keys() | reference_users.keys() if users.get(u) != reference_users.get(u))
            problems.append(f"after the rerun {len(differ)} users rows differ from an uninterrupted run's "
                            f"(e.g. {differ[:5]})")
    result["ok"] = not problems
    shutil.rmtree(store_dir, ignore_errors=True)
    return result


def refresh_matrix(args: argparse.Namespace, work: Path, env: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    setup = RefreshSetup(work, args.refresh_items, args.users, args.batch_users, env)
    rng = random.Random(args.seed)
    results = []
    for point in range(args.points):
        result = refresh_point(point, setup, rng)
        results.append(result)
        if not args.json:
            print(f"refresh point {point:3d}: after {result['kill_at']:>15} +{result['extra_delay_s']:.3f}s  killed="
                  f"{result['killed']!s:5}  batches={result['batches_at_kill']:3d}/{len(setup.batches)}"
                  f"{'  rebuilt' if result['rebuild_committed'] else ''}  "
                  f"{'ok' if result['ok'] else 'FAIL: ' + '; '.join(result['problems'])}", flush=True)
    summary = {"command": "refresh", "points": len(results), "killed": sum(r["killed"] for r in results),
               "passed": sum(r["ok"] for r in results), "batches": len(setup.batches),
               "distinct_batches_at_kill": sorted({r["batches_at_kill"] for r in results}),
               "killed_in_rebuild": sum(r["killed"] and r["rebuild"] and not r["rebuild_committed"]
                                        and r["batches_at_kill"] == len(setup.batches) for r in results),
               "failures": [r for r in results if not r["ok"]]}
    if args.json:
        summary["results"] = results
    else:
        print(f"refresh: {summary['passed']}/{summary['points']} points passed ({summary['killed']} killed before "
              f"finishing, {summary['killed_in_rebuild']} of them inside the rebuild); batches committed at the kills "
              f"(of {summary['batches']}): {summary['distinct_batches_at_kill']}", flush=True)
    return summary


# -- the command line -------------------------------------------------------------------------------------------
def embed_matrix(args: argparse.Namespace, work: Path, env: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    items = pd.read_csv(REPO / "assets" / "ml-latest-small" / "items.csv", dtype=str, keep_default_na=False)
    catalog = work / "items.csv"
    items[["item_id", *COLUMNS]].head(args.items).to_csv(catalog, index=False)
    n_chunks = -(-min(args.items, len(items)) // args.chunk_size)

    def args_for(store_dir: Path) -> list[str]:
        return embed_args(catalog, store_dir, args.chunk_size)

    reference_run = subprocess.run(args_for(work / "reference"), env=env, cwd=REPO, capture_output=True,
                                   text=True, timeout=600)
    if reference_run.returncode != 0:
        raise RuntimeError(f"reference run failed (exit {reference_run.returncode}):\n{reference_run.stderr}")
    reference = snapshot(work / "reference")
    rng = random.Random(args.seed)
    results = []
    for point in range(args.points):
        result = check_point(point, catalog, work, args_for, env, reference, args.chunk_size, n_chunks, rng)
        results.append(result)
        if not args.json:
            where = "store created" if result["after_chunks"] < 0 else f"{result['after_chunks']} chunk(s)"
            print(f"point {point:3d}: after {where:>13} +{result['extra_delay_s']:.3f}s  killed="
                  f"{result['killed']!s:5}  committed={result['committed_at_kill']:4d}  "
                  f"{'ok' if result['ok'] else 'FAIL: ' + '; '.join(result['problems'])}", flush=True)
    summary = {"command": "embed", "points": len(results), "killed": sum(r["killed"] for r in results),
               "passed": sum(r["ok"] for r in results),
               "distinct_committed_counts": sorted({r["committed_at_kill"] for r in results}),
               "failures": [r for r in results if not r["ok"]]}
    if args.json:
        summary["results"] = results
    else:
        print(f"{summary['passed']}/{summary['points']} points passed ({summary['killed']} killed before "
              f"finishing); committed items at the kills: {summary['distinct_committed_counts']}", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", choices=["embed", "refresh", "both"], default="embed",
                        help="which command to kill (default embed)")
    parser.add_argument("--items", type=int, default=96, help="embed: catalogue items (the first ones of assets/)")
    parser.add_argument("--chunk-size", type=int, default=8, help="embed: items per committed chunk")
    parser.add_argument("--refresh-items", type=int, default=150, help="refresh: the most-rated movies kept")
    parser.add_argument("--users", type=int, default=60, help="refresh: users 1..USERS")
    parser.add_argument("--batch-users", type=int, default=4, help="refresh: users per committed batch")
    parser.add_argument("--points", type=int, default=24, help="kill points per command (at least 20 is the point)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the extra delays")
    parser.add_argument("--workdir", type=Path, default=None, help="kept folder for the stores (default: a temp one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kill-matrix-") as temporary:
        work = args.workdir or Path(temporary)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        commands = ["embed", "refresh"] if args.command == "both" else [args.command]
        summaries = {}
        for command in commands:
            run = embed_matrix if command == "embed" else refresh_matrix
            # refresh: one torch thread in every child, the references' and the reruns' alike (byte-comparable)
            child_env = env if command == "embed" else {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            try:
                summaries[command] = run(args, work / command if len(commands) > 1 else work, child_env)
            except RuntimeError as error:
                print(str(error), file=sys.stderr)
                return 1
        if args.json:
            print(json.dumps(summaries[commands[0]] if len(commands) == 1 else summaries))
        return 0 if all(s["passed"] == s["points"] for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
