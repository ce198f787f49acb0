"""Scale-out overhead on one machine: embedding and batch refresh on Ray (1 and 2 workers) vs the single process.

    python scripts/bench_scale.py [--items 2000] [--events 20000] [--users 200] [--cpus 2]

Needs Ray (``pip install 'mmrec[distributed]'``). Embeds the first ``--items`` bundled MovieLens items (title and
genres, text only: the bundled data has no posters) into a fresh store per engine, trains one epoch on the first
``--users`` users' ratings of them, then refreshes ``--events`` new events (their ratings moved later in time, one in
ten earlier: a recompute from the log) on a fresh copy of the trained store per engine. Prints items/s and events/s
and each Ray run's time as a ratio of the single process's (the issue's acceptance: at most 1.3x for embedding on
one worker), and checks that every run stored the same thing.

What is timed is the job, from the catalogue or events file to the committed store: each job loads its models
(the single process in this process, Ray in its actors, whose processes start with the job). The Ray cluster
itself is started once, before any timing, as a real cluster runs before jobs are sent to it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmrec import EmbedConfig, RayConfig, Store, TrainConfig, embed_catalog, embed_catalog_ray, refresh_store
from mmrec import refresh_store_ray, train_store
from mmrec.store import DB_NAME

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "assets" / "ml-latest-small"


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def copy_store(source: Path, target: Path) -> Path:
    """A copy of a store, its database through SQLite's backup API (a live database is never copied as a file)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(f"{DB_NAME}*"))
    src, dst = sqlite3.connect(source / DB_NAME), sqlite3.connect(target / DB_NAME)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return target


def same_features(expected: Path, got: Path) -> float:
    """The least cosine between the two stores' text features (their hashes must be equal)."""
    a, b = Store(expected), Store(got)
    assert a.item_hashes() == b.item_hashes(), f"{got}: hashes differ from {expected}"
    ids, x, _ = a.feature_matrix("text")
    _, y, _ = b.feature_matrix("text", ids)
    return float((x * y).sum(1).min())


def same_users(expected: Path, got: Path) -> float:
    """The largest absolute difference between the two stores' user interests."""
    a, b = Store(expected).get_users(), Store(got).get_users()
    assert a.keys() == b.keys(), f"{got}: other users than {expected}"
    return float(max(np.abs(a[u].interest - b[u].interest).max() for u in a))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray cluster")
    args = parser.parse_args()
    import ray
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        items = pd.read_csv(DATA / "items.csv", dtype=str, keep_default_na=False).head(args.items)
        items[["item_id", "title", "genres"]].to_csv(tmp / "items.csv", index=False)
        interactions = pd.read_csv(DATA / "interactions.csv")
        interactions = interactions[interactions.item_id.astype(str).isin(set(items.item_id))
                                    & (interactions.user_id <= args.users)]
        interactions.to_csv(tmp / "interactions.csv", index=False)
        config = EmbedConfig(use_images=False, show_progress=False)
        load = os.getloadavg()
        rows = []

        _, local_embed = timed(lambda: embed_catalog(tmp / "items.csv", tmp / "local", config))
        rows.append(("embed", "single-process", "-", len(items), local_embed, ""))
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        for workers in (1, 2):
            store = tmp / f"ray-{workers}"
            _, seconds = timed(lambda: embed_catalog_ray(tmp / "items.csv", store, config,
                                                         RayConfig(workers=workers)))
            check = f"min cosine {same_features(tmp / 'local', store):.6f}"
            rows.append(("embed", "ray", str(workers), len(items), seconds, check))

        train_store(tmp / "local", tmp / "interactions.csv", config=TrainConfig(epochs=1, show_progress=False),
                    log=None)
        rng = np.random.default_rng(0)
        events = interactions.sample(min(args.events, len(interactions)), random_state=0).copy()
        shift = rng.integers(10**5, 10**8, len(events))
        events["timestamp"] += np.where(rng.random(len(events)) < 0.1, -shift, shift)
        events.to_csv(tmp / "events.csv", index=False)
        stores = {name: copy_store(tmp / "local", tmp / f"refresh-{name}") for name in ("local", "1", "2")}
        _, local_refresh = timed(lambda: refresh_store(stores["local"], tmp / "events.csv"))
        rows.append(("refresh", "single-process", "-", len(events), local_refresh, ""))
        for workers in (1, 2):
            _, seconds = timed(lambda: refresh_store_ray(stores[str(workers)], tmp / "events.csv",
                                                         ray_config=RayConfig(workers=workers)))
            check = f"max abs diff {same_users(stores['local'], stores[str(workers)]):.1e}"
            rows.append(("refresh", "ray", str(workers), len(events), seconds, check))
        ray.shutdown()

    base = {"embed": local_embed, "refresh": local_refresh}
    print(f"{args.items} items (text only), {len(events)} events of {interactions.user_id.nunique()} users; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, Ray {ray.__version__} ({args.cpus} CPUs, started "
          f"before timing); load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("| job | engine | workers | rows/s | seconds | vs single-process | check |")
    print("|---|---|---|---:|---:|---:|---|")
    for job, engine, workers, n, seconds, check in rows:
        unit = "items/s" if job == "embed" else "events/s"
        print(f"| {job} | {engine} | {workers} | {n / seconds:,.0f} {unit} | {seconds:.1f} | "
              f"{seconds / base[job]:.2f}x | {check} |")


if __name__ == "__main__":
    main()
