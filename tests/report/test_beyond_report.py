"""The quality report's beyond-accuracy columns, through run_report on a hand-made store: popularity's lists and
their coverage, Gini, intra-list diversity and novelty are known by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mmrec import Store
from mmrec.beyond import BEYOND_METRICS
from mmrec.report import QualityConfig, run_report
from mmrec.report.render import format_table

# one user per sequence of item ids, oldest first: last = test, second last = valid (docs/evaluation.md)
SEQUENCES = [[0, 1, 2, 3, 4], [0, 1, 5, 6, 7], [0, 2, 5, 8, 9]]


@pytest.fixture()
def tiny(tmp_path):
    """12 items whose text features are [1, 0] for even ids and [0, 1] for odd ids, and three users' ratings."""
    store = Store(tmp_path / "store")
    store.put_items([{"item_id": str(i), "title": f"item {i}", "text": f"item {i}", "image_ref": None,
                      "text_hash": str(i), "image_hash": None,
                      "features": {"text": ("hand-made", np.array([1.0, 0.0] if i % 2 == 0 else [0.0, 1.0],
                                                                  dtype=np.float32))}} for i in range(12)])
    rows = [(u, item, t) for u, seq in enumerate(SEQUENCES) for t, item in enumerate(seq)]
    pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).to_csv(tmp_path / "interactions.csv", index=False)
    return store, tmp_path / "interactions.csv"


def test_the_report_shows_every_models_beyond_accuracy_metrics(tiny, tmp_path):
    store, interactions = tiny
    config = QualityConfig(models=("pop",), seeds=(0,), protocols=("standard",), ours="pop",
                           bootstrap_resamples=10, device="cpu")
    summary = run_report(store, interactions, tmp_path / "out", config)
    # popularity ranks all 8 items outside each user's train + valid history: item 0 is in every history, items
    # 1, 2, 5 are shown once, 3, 6, 8 twice and 4, 7, 9, 10, 11 three times
    expected = {
        "coverage@10": 11 / 12,
        "gini@10": 78 / 288,  # counts sorted [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], weights 2i - 13
        "ild@10": (32 + 32 + 30) / 56 / 3,  # the lists hold 4 + 4, 4 + 4, 3 + 5 even + odd ids: pairs across
        "novelty@10": (math.log2(3 / 2) + 7 * math.log2(3)) / 8,  # one item 2 of 3 users trained on, 7 none did
    }
    stored = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]["test"]["beyond"]
    assert stored == pytest.approx(expected)
    header = summary.table.splitlines()[0]
    assert all(f" {m} |" in header for m in BEYOND_METRICS)
    row = summary.table.splitlines()[2]
    assert "| 0.9167 ± 0.0000 | 0.2708 ± 0.0000 | 0.5595 ± 0.0000 | 1.4600 ± 0.0000 |" in row
    assert (tmp_path / "out" / "report.md").read_text().count("0.9167 ± 0.0000") == 1


def test_runs_recorded_before_the_beyond_metrics_show_dashes():
    run = {"protocol": "standard", "model": "pop", "seed": 0, "epochs": 1, "best_epoch": 1, "valid_ndcg@10": 0.1,
           "seconds_per_epoch": 0.0, "train_seconds": 0.0,
           "test": {g: {m: 0.1 for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr@10")}
                    for g in ("all", "warm", "cold")}}
    row = format_table([run], ("pop",), ("standard",)).splitlines()[2]
    assert "| 0.1000 ± 0.0000 | – | – | – | – | 0.1000 ± 0.0000 |" in row
