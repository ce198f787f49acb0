"""Train the ID-only baselines on the leave-one-out split and print their validation and test metrics.

Usage::

    python scripts/baselines.py --interactions ../shared/data/ml-latest-small/interactions.csv \\
        --items ../shared/data/ml-latest-small/items.csv --models pop,bpr,gru4rec,sasrec --epochs 200 --json

Progress and per-epoch logs go to stderr; the table to stdout; with ``--json`` the last stdout line is one JSON
object ``{"config": {...}, "models": {name: {"valid": {...}, "test": {...}, "best_epoch": ..., ...}}}``.
Ranking is over every catalogue item (``--items``), the user's history excluded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from mmrec.baselines import BASELINES, TrainConfig, build_baseline, fit, seed_everything
from mmrec.data import ItemIndex, leave_one_out, load_interactions
from mmrec.evaluation import METRICS, evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--interactions", required=True, help="CSV/Parquet/JSONL: user_id,item_id,timestamp[,event]")
    p.add_argument("--items", required=True, help="catalogue file with an item_id column")
    p.add_argument("--models", default=",".join(BASELINES), help=f"comma-separated subset of {list(BASELINES)}")
    p.add_argument("--epochs", type=int, default=200, help="maximum epochs (early stopping on valid NDCG@10)")
    p.add_argument(
        "--patience", type=int, default=30,
        help="epochs without a better valid NDCG@10 before stopping (GRU4Rec plateaus ~15 epochs before it improves)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default: per model)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--min-interactions", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads while training (default: torch's)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch logs")
    args = p.parse_args(argv)
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in BASELINES]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {list(BASELINES)}")
    return args


def _table(results: dict[str, dict]) -> str:
    cols = [f"valid {m}" for m in ("recall@10", "ndcg@10")] + [f"test {m}" for m in METRICS]
    cols += ["cold test ndcg@10", "cold n"]
    cols += ["epochs (best)", "s/epoch", "train s"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in results.items():
        cold = r["test"]["cold_ndcg@10"]
        cells = [f"{r['valid'][m]:.4f}" for m in ("recall@10", "ndcg@10")]
        cells += [f"{r['test'][m]:.4f}" for m in METRICS]
        cells += ["–" if cold is None else f"{cold:.4f}", str(r["test"]["n_cold_users"])]
        cells += [f"{r['epochs']} ({r['best_epoch']})", f"{r['seconds_per_epoch']:.1f}", f"{r['train_seconds']:.1f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    items = ItemIndex.from_catalog(args.items)
    split = leave_one_out(load_interactions(args.interactions, items), args.min_interactions)
    print(
        f"{split.n_users} users, {split.n_items} catalogue items, {len(split.train.item)} training events, "
        f"{len(split.cold_test_users())} cold test users (loaded in {time.perf_counter() - t0:.1f} s)",
        file=sys.stderr,
    )
    config = TrainConfig(
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
        num_threads=args.threads,
    )
    results: dict[str, dict] = {}
    for name in args.models:
        seed_everything(args.seed)
        model = build_baseline(name, split)
        fitted = fit(model, split, config)
        test = evaluate(model.full_sort_scores, split, "test", max_len=model.max_len, device=args.device)
        results[name] = {
            "valid": fitted.best_valid.to_dict(),
            "test": test.to_dict(),
            "epochs": fitted.epochs_run,
            "best_epoch": fitted.best_epoch,
            "seconds_per_epoch": fitted.seconds_per_epoch,
            "train_seconds": fitted.train_seconds,
        }
        print(
            f"{name}: test ndcg@10 {test.metrics['ndcg@10']:.4f} after {fitted.epochs_run} epochs "
            f"(best {fitted.best_epoch}), {fitted.seconds_per_epoch:.1f} s/epoch",
            file=sys.stderr,
        )
    print(f"ranking over {split.n_items} catalogue items, {split.n_users} users, history excluded")
    print(_table(results))
    if args.json:
        payload = {"config": {**vars(args), "n_users": split.n_users, "n_items": split.n_items}, "models": results}
        print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
