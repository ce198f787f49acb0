"""Relevance against diversity: a trained store's test lists re-ordered by maximal marginal relevance for each lambda.

On the test stage of the evaluation protocol (docs/evaluation.md; the split rebuilt from the store and the
interactions file as ``mmrec evaluate`` rebuilds it), each user's pool is the ``POOL_FACTOR * 10`` best items by the
model's ranking scores, the history excluded but the target (as :func:`mmrec.evaluation.evaluate` ranks). As
``Recommender.recommend(..., diversity=lam)`` does (:mod:`mmrec.serve.diversity`), relevance is the scorer's
probability of each pool item (the sigmoid of its MLP logit for the user's interest), similarity the cosine of the
model's item vectors, and ``mmr(relevance, vectors, 10, lam)`` orders the list; the pool's first item stays first.

Printed per lambda, over the test users: NDCG@10 and Recall@10 of the test target in the re-ordered list; ILD@10
(mean pairwise cosine distance within a list) over the model's item vectors (what MMR spreads) and over the store's
text features (the quality report's one representation for every model, :mod:`mmrec.beyond`); coverage@10, Gini@10
and novelty@10 of the lists. ``lam = 0`` is the model's own top 10, checked against ``evaluate``'s NDCG@10.

Usage::

    OMP_NUM_THREADS=1 python scripts/diversity_sweep.py --store STORE --interactions interactions.csv \\
        --context-events tags.csv --lams 0,0.1,0.2,0.3,0.5,0.7,1.0 --plot sweep.png [--csv sweep.csv]

The store is only read. Users forgotten with ``mmrec forget`` are not filtered out of the files here.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mmrec.beyond import beyond_accuracy, content_vectors, intra_list_diversities
from mmrec.evaluation import LIST_LENGTH, evaluate, top_items
from mmrec.serve.diversity import POOL_FACTOR, mmr
from mmrec.store import Store
from mmrec.train.data import TrainingData, load_training_data
from mmrec.trained import MODEL_DIR, TrainedModel, check_encoders

COLUMNS = ("lam", "ndcg@10", "recall@10", "ild@10 model", "ild@10 text", "coverage@10", "gini@10", "novelty@10")


def load(store_dir: Path, interactions, context_events, unknown_items: str) -> tuple[torch.nn.Module, TrainingData]:
    """The store's model bound to the items as ``mmrec evaluate`` binds them, and the data it evaluates on."""
    store = Store(store_dir, create=False)
    trained = TrainedModel.load(store.path / MODEL_DIR)
    check_encoders(trained, store.encoders())
    data = load_training_data(store, interactions, context_events, unknown_items=unknown_items,
                              event_names=trained.event_names, interaction_events=trained.interaction_events)
    data.features = trained.item_features(store, list(data.item_ids))  # items embedded since: new items
    network = trained.network.bind(data.features, data.text_table)
    network.eval()
    return network, data


@torch.no_grad()
def pools(network, data: TrainingData, size: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Each test user's pool ``(U, size) int64`` (the best items by the model's scores, history but the target
    excluded, best first, -1 past the rankable ones) and the scorer's probabilities of its items ``(U, size)``."""
    split = data.split
    history, targets = split.history("test"), split.target("test")
    vectors = network.item_vectors()  # (N, D)
    pool = np.empty((split.n_users, size), dtype=np.int64)
    relevance = np.empty((split.n_users, size), dtype=np.float32)
    for start in range(0, split.n_users, batch_size):
        chunk = np.arange(start, min(start + batch_size, split.n_users))
        batch = data.behaviour.context("test", chunk, network.max_len)
        hist = history.take(chunk)
        exclude = torch.zeros((len(chunk), split.n_items), dtype=torch.bool)
        exclude[torch.from_numpy(hist.row_of), torch.from_numpy(hist.item)] = True
        exclude[torch.arange(len(chunk)), torch.from_numpy(targets[chunk])] = False
        best = top_items(network.scores(batch, exclude), exclude, size)  # (B, size)
        interest = network.interests(batch, vectors, network.text_table)  # (B, D)
        probability = network.scorer.probability(interest, vectors[torch.from_numpy(best).clamp(min=0)])
        pool[chunk], relevance[chunk] = best, probability.numpy()
    return pool, relevance


def rerank(pool: np.ndarray, relevance: np.ndarray, vectors: torch.Tensor, lam: float) -> np.ndarray:
    """``(U, LIST_LENGTH)`` lists: each pool ordered by ``mmr`` at ``lam`` (-1 past a short pool's items)."""
    lists = np.full((len(pool), LIST_LENGTH), -1, dtype=np.int64)
    center = vectors.mean(0)  # as serving centres the cosines (mmrec.serve.diversity)
    for user, (items, probability) in enumerate(zip(pool, relevance)):
        items, probability = items[items >= 0], probability[items >= 0]
        order = mmr(torch.from_numpy(probability), vectors[torch.from_numpy(items)], LIST_LENGTH, lam,
                    center).numpy()
        lists[user, : len(order)] = items[order]
    return lists


def target_metrics(lists: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean NDCG@10 and Recall@10 of each user's one target in their list."""
    hit = lists == targets[:, None]
    found = hit.any(1)
    place = hit.argmax(1) + 1
    return {"ndcg@10": float(np.where(found, 1.0 / np.log2(place + 1.0), 0.0).mean()),
            "recall@10": float(found.mean())}


def sweep(network, data: TrainingData, lams: list[float], log=print) -> tuple[list[dict], dict]:
    """One row of :data:`COLUMNS` per lambda, and the check of ``lam = 0`` against ``evaluate``."""
    tick = time.perf_counter()
    pool, relevance = pools(network, data, POOL_FACTOR * LIST_LENGTH)
    with torch.no_grad():
        vectors = network.item_vectors()
    text = content_vectors(data.features)
    targets = data.split.target("test")
    log(f"pools of {pool.shape[1]} for {len(pool)} test users in {time.perf_counter() - tick:.1f} s")
    rows = []
    for lam in lams:
        tick = time.perf_counter()
        lists = rerank(pool, relevance, vectors, lam)
        model_ild = intra_list_diversities(lists, vectors)
        rows.append({"lam": lam, **target_metrics(lists, targets), "ild@10 model": float(np.nanmean(model_ild)),
                     **{("ild@10 text" if k == "ild@10" else k): v
                        for k, v in beyond_accuracy(lists, data.split, text).items()}})
        if lam == 0:
            zero = lists
        log(f"lam {lam:g}: {time.perf_counter() - tick:.1f} s")
    check = {}
    if 0.0 in lams:
        result = evaluate(network, data.behaviour, "test")
        check = {"evaluate_ndcg@10": result.metrics["ndcg@10"],
                 "same_lists": float((result.top_items == zero).all(1).mean())}
    return rows, check


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---:|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row['lam']:g}" if c == "lam" else f"{row[c]:.4f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, column in zip(axes, ("ild@10 model", "ild@10 text")):
        x, y = [r[column] for r in rows], [r["ndcg@10"] for r in rows]
        ax.plot(x, y, marker="o")
        for row, xi, yi in zip(rows, x, y):
            ax.annotate(f"λ={row['lam']:g}", (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(f"{column.replace(' model', ' (model item vectors)').replace(' text', ' (text features)')}")
        ax.set_ylabel("test NDCG@10")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--interactions", type=Path, required=True)
    parser.add_argument("--context-events", type=Path)
    parser.add_argument("--lams", default="0,0.1,0.2,0.3,0.5,0.7,1.0", help="comma-separated, each in [0, 1]")
    parser.add_argument("--plot", type=Path, default=Path("diversity_sweep.png"), help="PNG written here")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV (written instead of the plot "
                                                 "when matplotlib is missing: PLOT with .csv)")
    parser.add_argument("--unknown-items", choices=("error", "drop"), default="error")
    args = parser.parse_args(argv)
    lams = [float(x) for x in args.lams.split(",") if x.strip()]
    if not lams or any(not 0 <= lam <= 1 or math.isnan(lam) for lam in lams):
        parser.error(f"--lams: numbers in [0, 1], got {args.lams!r}")
    tick = time.perf_counter()
    network, data = load(args.store, args.interactions, args.context_events, args.unknown_items)
    print(f"{data.split.n_users} test users, {data.split.n_items} items; loaded in {time.perf_counter() - tick:.1f} s",
          file=sys.stderr)
    rows, check = sweep(network, data, lams, log=lambda m: print(m, file=sys.stderr))
    print(table(rows))
    if check:
        print(f"\nlam 0 = the model's own top 10: NDCG@10 {rows[lams.index(0.0)]['ndcg@10']:.4f}, evaluate()'s "
              f"{check['evaluate_ndcg@10']:.4f}; lists identical to evaluate's for {check['same_lists']:.1%} of users")
    title = (f"MMR re-ordering of each test user's pool of {POOL_FACTOR * LIST_LENGTH} ({data.split.n_users} users, "
             f"{args.interactions.parent.name or args.interactions.name})")
    written = plot(rows, args.plot, title)
    csv_path = args.csv or (None if written else args.plot.with_suffix(".csv"))
    if csv_path:
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    print(f"plot: {args.plot}" if written else "matplotlib is not installed: no plot", end="")
    print(f"; table: {csv_path}" if csv_path else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
