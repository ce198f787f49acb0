"""Which item signals help? Train our model with each combination of text, image and item ID on the same split.

    python scripts/compare_modalities.py --store STORE --interactions CSV [--context-events CSV]
        [--variants id,text,image,text+image,text+image+id] [--epochs 30] [--seed 0] [--json]

Prints test (and cold-item test) Recall@10/20, NDCG@10/20, MRR@10 per variant beside popularity, under
the README's evaluation protocol. Models are trained in memory; the store is only read. `id` alone is the same GRU on item IDs
(a GRU4Rec equivalent).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from mmrec import Store, TrainConfig
from mmrec.baselines import build_baseline, fit as fit_baseline, seed_everything
from mmrec.baselines import TrainConfig as BaselineConfig
from mmrec.evaluation import METRICS, evaluate
from mmrec.training import check_store_modalities, evaluate_model, fit, load_training_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--interactions", type=Path, required=True)
    parser.add_argument("--context-events", type=Path, default=None)
    parser.add_argument("--variants", default="id,text,image,text+image,text+image+id")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    store = Store(args.store, create=False)
    data = load_training_data(store, args.interactions, args.context_events)
    rows = {}
    seed_everything(args.seed)
    pop = build_baseline("pop", data.split)
    fit_baseline(pop, data.split, BaselineConfig(epochs=1, seed=args.seed))
    result = evaluate(pop.full_sort_scores, data.split, "test")
    rows["popularity"] = {**result.metrics, **result.cold_metrics, "best_epoch": 0, "s/epoch": 0.0}
    configs = {}
    for variant in args.variants.split(","):
        parts = set(variant.split("+"))
        config = TrainConfig(epochs=args.epochs, seed=args.seed, show_progress=False)
        config.model = copy.deepcopy(config.model)
        config.model.use_text, config.model.use_image, config.model.use_id = ("text" in parts, "image" in parts,
                                                                              "id" in parts)
        check_store_modalities(config.model, data.encoders)  # before any training, not after hours of it
        configs[variant] = config
    for variant, config in configs.items():
        print(f"== {variant}", flush=True)
        fitted = fit(data, config)
        test = evaluate_model(fitted.model, data, "test", config.max_len)
        rows[variant] = {**test.metrics, **test.cold_metrics, "valid_ndcg@10": fitted.best_valid["ndcg@10"],
                         "best_epoch": fitted.best_epoch, "s/epoch": round(fitted.seconds_per_epoch, 1)}
        print(f"{variant}: " + json.dumps({k: round(v, 4) for k, v in rows[variant].items()}), flush=True)
    header = ["model", *METRICS, "cold_recall@20", "best epoch", "s/epoch"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, m in rows.items():
        cells = [f"{m[k]:.4f}" for k in METRICS] + [f"{m['cold_recall@20']:.4f}", str(m["best_epoch"]),
                                                   str(m["s/epoch"])]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"test users {data.split.n_users}, cold test users {len(data.split.cold_test_users())}, seed {args.seed}")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
