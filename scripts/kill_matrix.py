"""SIGKILL `mmrec embed` at many points and check that every interrupted store is sound and resumes exactly.

    python scripts/kill_matrix.py [--items 96] [--chunk-size 8] [--points 24] [--seed 0] [--workdir DIR] [--json]

One uninterrupted ``mmrec embed`` (text only, MovieLens titles and genres from ``assets/``) gives the reference
store. Then, for each kill point, a fresh ``mmrec embed`` is SIGKILLed and ``mmrec embed`` is run again to completion
on the same store. Kill points cycle through: as soon as the store file exists, and after each number of committed
chunks (watched from outside through SQLite), each plus a random extra delay so the kill lands anywhere in the next
chunk's encoding or transaction. Every run is the real command line in its own process, on the CPU.

After each kill the store must pass ``PRAGMA integrity_check``, open, hold whole chunks only (a prefix of the
catalogue) with the reference's hashes; after the rerun its text features (``Store.feature_matrix("text")``
bytes) and ``item_hashes()`` must equal the reference's. Prints one line per point and a summary (``--json``: one
JSON object); exit 0 when every point passed, 1 otherwise. Embed only: refresh has its own checks. It takes about
10-15 s per point (two process start-ups); the CI test ``tests/test_embed_kill.py`` runs four points.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def run_and_kill(args: list[str], db: Path, env: dict, after_items: int, extra_delay: float,
                 timeout: float = 300) -> tuple[int, float]:
    """Start ``args``; once ``after_items`` items are committed (0: once the store file exists) wait ``extra_delay``
    seconds and SIGKILL it.
    Returns (exit status, seconds from start to the kill)."""
    start = time.monotonic()
    child = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while child.poll() is None and time.monotonic() - start < timeout:
            if committed(db) >= after_items:
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
    status, killed_at = run_and_kill(args_for(store_dir), db, env, max(target, 0) * chunk, extra)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=96, help="catalogue items (the first ones of assets/)")
    parser.add_argument("--chunk-size", type=int, default=8, help="items per committed chunk")
    parser.add_argument("--points", type=int, default=24, help="kill points (at least 20 is the point)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the extra delays")
    parser.add_argument("--workdir", type=Path, default=None, help="kept folder for the stores (default: a temp one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="kill-matrix-") as temporary:
        work = args.workdir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        items = pd.read_csv(REPO / "assets" / "ml-latest-small" / "items.csv", dtype=str, keep_default_na=False)
        catalog = work / "items.csv"
        items[["item_id", *COLUMNS]].head(args.items).to_csv(catalog, index=False)
        n_chunks = -(-min(args.items, len(items)) // args.chunk_size)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

        def args_for(store_dir: Path) -> list[str]:
            return embed_args(catalog, store_dir, args.chunk_size)

        reference_run = subprocess.run(args_for(work / "reference"), env=env, cwd=REPO, capture_output=True,
                                       text=True, timeout=600)
        if reference_run.returncode != 0:
            print(f"reference run failed (exit {reference_run.returncode}):\n{reference_run.stderr}", file=sys.stderr)
            return 1
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
        summary = {"points": len(results), "killed": sum(r["killed"] for r in results),
                   "passed": sum(r["ok"] for r in results),
                   "distinct_committed_counts": sorted({r["committed_at_kill"] for r in results}),
                   "failures": [r for r in results if not r["ok"]]}
        if args.json:
            print(json.dumps({**summary, "results": results}))
        else:
            print(f"{summary['passed']}/{summary['points']} points passed ({summary['killed']} killed before "
                  f"finishing); committed items at the kills: {summary['distinct_committed_counts']}")
        return 0 if summary["passed"] == summary["points"] else 1


if __name__ == "__main__":
    sys.exit(main())
