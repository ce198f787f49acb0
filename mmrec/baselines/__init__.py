"""ID-only baselines (popularity, BPR, GRU4Rec, SASRec) sharing one interface and one training loop.

Example::

    from mmrec.baselines import build_baseline, fit, TrainConfig
    model = build_baseline("sasrec", split)
    result = fit(model, split, TrainConfig(epochs=200))
"""

from __future__ import annotations

from mmrec.baselines.base import BaselineModel, SequentialBaseline, TrainingData
from mmrec.baselines.bpr import BPR, BPRConfig, PairBatch, PairData
from mmrec.baselines.gru4rec import GRU4Rec, GRU4RecConfig
from mmrec.baselines.popularity import Popularity
from mmrec.baselines.sasrec import SASRec, SASRecConfig
from mmrec.baselines.train import EpochLog, FitResult, TrainConfig, fit, seed_everything
from mmrec.data import Split

__all__ = [
    "BASELINES",
    "BPR",
    "BPRConfig",
    "BaselineModel",
    "EpochLog",
    "FitResult",
    "GRU4Rec",
    "GRU4RecConfig",
    "PairBatch",
    "PairData",
    "Popularity",
    "SASRec",
    "SASRecConfig",
    "SequentialBaseline",
    "TrainConfig",
    "TrainingData",
    "build_baseline",
    "fit",
    "seed_everything",
]

BASELINES: tuple[str, ...] = ("pop", "bpr", "gru4rec", "sasrec")
"""Names accepted by :func:`build_baseline`."""


def build_baseline(name: str, split: Split) -> BaselineModel:
    """A baseline with its default config, sized for ``split`` (call ``seed_everything`` first to fix init)."""
    key = name.strip().lower()
    if key == "pop":
        return Popularity(split.n_items)
    if key == "bpr":
        return BPR(split.n_users, split.n_items)
    if key == "gru4rec":
        return GRU4Rec(split.n_items)
    if key == "sasrec":
        return SASRec(split.n_items)
    raise ValueError(f"name: unknown baseline {name!r}; choose from {list(BASELINES)}")
