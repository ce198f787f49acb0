"""Serving and training speed of a trained store, on this machine.

    python scripts/bench.py --store stores/demo [--interactions assets/ml-latest-small/interactions.csv]

Prints p50/p99 latency of `score` (1 user x 1,000 candidates) and `recommend` (top-10 over the catalogue),
`observe` per event against recomputing a 50-event history, batch-refresh throughput (users/s) and training
seconds per epoch. Works on a copy of the store, so the original is never modified.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmrec import Recommender, TrainConfig, refresh_store
from mmrec.train import fit, load_training_data

REPO = Path(__file__).resolve().parents[1]


def percentiles(samples: list[float]) -> str:
    ms = np.asarray(samples) * 1000
    return f"p50 {np.percentile(ms, 50):7.2f} ms   p99 {np.percentile(ms, 99):7.2f} ms   (n={len(ms)})"


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=REPO / "stores" / "demo")
    parser.add_argument("--interactions", type=Path, default=REPO / "assets/ml-latest-small/interactions.csv")
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--skip-train", action="store_true", help="do not time a training epoch")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        shutil.copytree(args.store, store)
        rec = Recommender.load(store, device="cpu")
        rng = np.random.default_rng(0)
        users = [u for u in rec.store.get_users()][:200]
        print(f"store: {len(rec.item_ids)} items, {len(rec.store.get_users())} users; "
              f"torch threads {torch.get_num_threads()}")
        candidates = [rec.item_ids[i] for i in rng.choice(len(rec.item_ids), 1000, replace=False)]
        rec.score(users[0], candidates)  # warm-up
        print(f"score 1 user x 1,000 items   {percentiles(timed(lambda: rec.score(users[rng.integers(len(users))], candidates), args.repeat))}")
        print(f"recommend top-10 of {len(rec.item_ids):,}  {percentiles(timed(lambda: rec.recommend(users[rng.integers(len(users))], k=10), args.repeat))}")

        history = [(rec.item_ids[i], None, 1_000 + 60 * j) for j, i in enumerate(rng.choice(len(rec.item_ids), 50))]
        counter = iter(range(10**9))
        observe = timed(lambda: rec.observe(f"bench-user-{next(counter) % 50}", history[0][0],
                                            timestamp=2_000_000_000 + next(counter)), args.repeat)
        recompute = timed(lambda: rec.score(history=history, item_ids=candidates[:1]), args.repeat)
        print(f"observe (1 GRU step + commit) {percentiles(observe)}")
        print(f"recompute 50-event history    {percentiles(recompute)}")

        logs = rec.store.user_events()
        last = {u: max(r[0] for r in rows) for u, rows in logs.items() if rows}
        rows = [(u, last[u] + 60 * (k + 1), rec.item_ids[rng.integers(len(rec.item_ids))]) for u in last for k in range(5)]
        events = Path(tmp) / "events.csv"
        pd.DataFrame(rows, columns=["user_id", "timestamp", "item_id"]).to_csv(events, index=False)
        start = time.perf_counter()
        report = refresh_store(store, events)
        seconds = time.perf_counter() - start
        print(f"batch refresh: {report.users_refreshed} users, {report.events_applied} events in {seconds:.2f} s "
              f"= {report.users_refreshed / seconds:,.0f} users/s ({report.events_applied / seconds:,.0f} events/s)")

        if not args.skip_train:
            data = load_training_data(rec.store, args.interactions)
            config = TrainConfig(epochs=1, show_progress=False, model=rec.model.config)
            result = fit(data, config, log=None)
            print(f"training: {result.history[0]['train_seconds']:.1f} s per epoch "
                  f"({data.behaviour.windows(config.model.max_len).n_targets:,} next-item targets)")


if __name__ == "__main__":
    main()
